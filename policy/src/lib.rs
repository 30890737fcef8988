//! Overseer's policy core, free of any Kubernetes client: it compiles `AgentPolicy` rules into a
//! Cedar policy set, answers decision requests deterministically, keeps rate limits and budgets as
//! native atomic state, and writes the hash-chained audit trail.
//!
//! * [`request`]: the decision request and response types, and the request digest approvals are
//!   bound to.
//! * [`compile`]: policies → one immutable, indexed [`compile::CompiledPolicies`] revision.
//! * [`schema`]: the Cedar schema conditions are validated against.
//! * [`engine`]: the decision [`engine::Engine`]: swappable revision, limits and approvals.
//! * [`approvals`]: pending approvals bound to request digests.
//! * [`workload`]: the shared benchmark workload mapped into `AgentPolicy` form.

pub mod approvals;
pub mod audit;
pub mod compile;
pub mod engine;
pub mod limits;
mod matchers;
pub mod request;
pub mod schema;
pub mod workload;

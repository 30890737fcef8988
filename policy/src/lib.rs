//! Overseer's policy core, free of any Kubernetes client: it compiles `AgentPolicy` rules into a
//! Cedar policy set, answers decision requests deterministically, keeps rate limits and budgets as
//! native atomic state, and writes the hash-chained audit trail.

pub mod audit;
pub mod limits;

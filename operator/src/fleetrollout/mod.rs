//! The `FleetRollout` controller: carries a rendered source through ordered stages of member
//! clusters, with approval and health gates, overrides and automatic rollback.
//!
//! The decisions are the pure planner's ([`fleet::planner`]); this module is the shell around it:
//! - [`delivery`]: the [`delivery::Delivery`] seam to sources and member clusters (resolve,
//!   render, apply, read back, prune), so the reconcile can be tested with a fake;
//! - [`snapshot`]: the rendered objects of each revision kept in the hub, for rollbacks and
//!   restarts;
//! - [`kube`]: the real delivery, over `fleet::source`, `fleet::overrides`, `fleet::member` and
//!   `fleet::apply`;
//! - [`reconcile`]: one planning-and-delivery pass;
//! - [`controller`]: the watches (rollouts, their approvals, member clusters).

pub mod controller;
pub mod delivery;
pub mod kube;
pub mod reconcile;
pub mod snapshot;

#[cfg(test)]
mod tests;

//! `AgentPolicy` and `ClusterAgentPolicy` in a cluster, and the decision service of `overseer run`.
//!
//! - [`source`]: watched objects → the policy core's sources, mapped like `overseer serve`'s
//!   file loader (pure).
//! - [`index`]: the served policy set — compiled once per change, swapped into the engine
//!   atomically, last good version kept per policy (pure).
//! - [`status`]: a policy's status from its compile report (pure).
//! - [`controller`]: the watches, the sync loop on every replica and the leader's status writes.
//! - [`service`]: the decision API served by `overseer run` from that engine.

pub mod controller;
pub mod gate;
pub mod index;
pub mod service;
pub mod source;
pub mod status;

#[cfg(test)]
mod tests;

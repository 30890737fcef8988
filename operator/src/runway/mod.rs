//! The `InferenceRuntime` controller: one spec over several inference engines behind a stable
//! endpoint, switched between engines without dropping traffic.
//!
//! - [`plan`]: the switching state machine, pure (roles of revisions, the next step).
//! - [`smoke`]: the smoke test a candidate passes before it receives traffic.
//! - [`reconcile`]: the thin shell that reads the cluster, applies the plan and writes status.
//! - [`controller`]: the watches that wake it.
//!
//! Rendering lives in the `runway-api` crate; this module never builds a backend object itself.

pub mod controller;
pub mod plan;
pub mod reconcile;
pub mod smoke;

#[cfg(test)]
mod tests;

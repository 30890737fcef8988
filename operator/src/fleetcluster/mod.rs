//! The `FleetCluster` controller: a periodic heartbeat to every registered member cluster.
//!
//! Each reconcile reads the cluster's kubeconfig Secret from the hub (through a
//! [`fleet::member::MemberPool`], which keeps one client per cluster and rebuilds it when the
//! Secret changes), calls `GET /version` on the member under a deadline, and writes the status:
//! `Reachable` and `Ready` conditions, the Kubernetes version and the last heartbeat time. An
//! Event is published when `Reachable` changes. A paused cluster stays reachable but not `Ready`.
//!
//! One unreachable cluster never holds up the others: every heartbeat is bounded by
//! [`reconcile::HEARTBEAT_TIMEOUT`] and reconciles of different clusters run concurrently.
//! A missing or wrong kubeconfig Secret is retried every [`reconcile::CONFIG_RETRY`] (instead of
//! the heartbeat period), so a fixed Secret is picked up without watching every Secret in the hub.

pub mod controller;
pub mod reconcile;

#[cfg(test)]
mod tests;

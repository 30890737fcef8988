//! The `overseer` binary's library: the command line, the operator runtime (`overseer run`),
//! the health and metrics servers, leader election and the scaffolding shared by controllers.
//!
//! The binary (`src/main.rs`) only parses the command line and dispatches here.

pub mod agentpolicy;
pub mod approvals;
pub mod audit_verify;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod decision;
pub mod extauthz;
pub mod fleetcluster;
pub mod fleetrollout;
pub mod gateway;
pub mod health;
pub mod identity;
pub mod leader;
pub mod mcpserver;
pub mod metrics;
pub mod runtime;
pub mod runway;
pub mod telemetry;

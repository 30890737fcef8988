//! Subcommands of `overseer` run as processes, the way an operator or a CI pipeline runs them
//! (one test binary: each module is one subcommand).

mod audit_verify;
mod check;

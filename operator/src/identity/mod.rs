//! The `EphemeralIdentity` controller: time-boxed, scoped ServiceAccount tokens that revoke
//! themselves.
//!
//! - [`checks`]: is a request inside its class's ceiling (pure).
//! - [`names`] and [`build`]: the deterministic names and the objects an identity owns (pure).
//!
//! # Short TTLs and offline verifiers
//!
//! The API server will not issue a token for less than 10 minutes, so an identity with a shorter
//! TTL gets a 10-minute token bound to its Secret, and the controller deletes that Secret at the
//! TTL: from then on the API server (and every TokenReview consumer) rejects the token. A verifier
//! that checks tokens offline (JWKS/OIDC) sees only the token's `exp` and keeps accepting it until
//! then; keep such audiences on short TTLs, or verify through TokenReview.

pub mod approval;
pub mod build;
pub mod checks;
pub mod class;
pub mod cli;
pub mod controller;
pub mod names;
pub mod reconcile;
pub mod revoke;
pub mod sweep;

#[cfg(test)]
mod tests;

//! The `MCPServer` controller: reports, on each object's status, whether a gateway can serve it.
//!
//! The API server checks the schema (URL scheme, bounds, lengths); this controller checks what it
//! cannot, with exactly the rules `overseer gateway` applies
//! ([`crate::gateway::mcpservers::upstream_of`]): the agent globs compile, the URL parses, the
//! header may carry a credential, and the credential Secret exists in the object's namespace with
//! the key, holding a value that can be sent. `Ready=True` (`Accepted`) or `Ready=False` with
//! `CredentialMissing`, `CredentialInvalid` or `InvalidSpec` and a message naming what to fix;
//! an Event when `Ready` changes.
//!
//! The Secret is read by name (`get`, never listed or watched) and its value dropped at once: it
//! never reaches the status, logs or Events. A Secret created or deleted later is noticed by
//! reading it again: every [`reconcile::NOT_READY_RECHECK`] for an object that is not ready, every
//! [`reconcile::READY_RECHECK`] for one that is.

pub mod controller;
pub mod reconcile;

#[cfg(test)]
mod tests;

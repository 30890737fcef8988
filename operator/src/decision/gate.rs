//! Seams between the decision service and the identities it serves:
//!
//! - [`PrincipalGate`]: consulted for every decision before any policy is evaluated; a principal
//!   whose `EphemeralIdentity` is revoked or expired (or that authenticated as the ServiceAccount
//!   of one) is denied at once, with a reason of its own, and audited.
//! - [`IdentityRevoker`]: the kill switch behind `POST /v1/admin/identities/revoke`.
//!   [`KubeRevoker`] marks every identity of an agent revoked through the API server (the
//!   identity controller then revokes each one); the standalone server has none and answers 501.

use std::fmt::Debug;

use futures::future::BoxFuture;
use kube::Client;
use overseer_policy::request::Principal;

use super::auth::Caller;

/// Why the gate closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateReason {
    /// The identity was revoked (`spec.revoked`, the kill switch, or deletion).
    Revoked,
    /// The identity's TTL has run out.
    Expired,
    /// The identity was never issued (denied by its class or by a reviewer).
    Denied,
}

impl GateReason {
    /// The rule name used in the deny answer's reason (`identity-revoked`, ...).
    pub fn rule(self) -> &'static str {
        match self {
            Self::Revoked => "identity-revoked",
            Self::Expired => "identity-expired",
            Self::Denied => "identity-denied",
        }
    }
}

/// What the gate says about a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// Nothing known against it: evaluate the policies.
    Open,
    /// Deny at once.
    Closed {
        /// Why.
        reason: GateReason,
        /// A message naming the identity, for the answer and the audit record.
        message: String,
    },
}

/// Decides, before any policy, whether a principal's identity may still act. Must be cheap
/// (an in-memory lookup): it runs on every decision.
pub trait PrincipalGate: Send + Sync + Debug {
    /// The verdict for `principal` (as completed by [`Caller::check_principal`]) asked about by
    /// `caller` (whose `service_account` is set when it authenticated with a token).
    fn check(&self, caller: &Caller, principal: &Principal) -> GateVerdict;

    /// Complete `principal` (after [`Caller::check_principal`]) with what the gate knows of the
    /// caller: an agent that authenticated with the token of an `EphemeralIdentity`'s
    /// ServiceAccount acts as that identity (`ephemeralIdentity`, `kind: EphemeralIdentity`), so
    /// policies naming the identity govern it. The default knows nothing.
    fn complete(&self, _caller: &Caller, _principal: &mut Principal) {}
}

/// Why a revocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// There is no cluster to revoke in (the standalone server).
    #[error("revoking identities needs a cluster: this decision service runs without one")]
    NoCluster,
    /// The API server refused or could not be reached.
    #[error("revocation failed: {0}")]
    Failed(String),
}

/// Revokes every identity of one agent.
pub trait IdentityRevoker: Send + Sync + Debug {
    /// Mark every live identity of `agent` revoked, in `namespace` or in all namespaces; returns
    /// how many were marked.
    fn revoke_agent<'a>(
        &'a self,
        namespace: Option<&'a str>,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<usize, RevokeError>>;
}

/// The kill switch through the API server: [`crate::identity::revoke::revoke_agent`].
#[derive(Clone)]
pub struct KubeRevoker {
    client: Client,
}

impl Debug for KubeRevoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRevoker").finish_non_exhaustive()
    }
}

impl KubeRevoker {
    /// Revoke through `client` (needs `list` and `patch` on `ephemeralidentities`).
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl IdentityRevoker for KubeRevoker {
    fn revoke_agent<'a>(
        &'a self,
        namespace: Option<&'a str>,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<usize, RevokeError>> {
        Box::pin(async move {
            crate::identity::revoke::revoke_agent(&self.client, namespace, agent)
                .await
                .map_err(|e| RevokeError::Failed(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s};
    use serde_json::json;

    #[tokio::test]
    async fn kube_revoker_marks_the_agents_live_identities() {
        let (client, verifier) = ApiServerVerifier::new();
        let identity = |name: &str, agent: &str| {
            json!({"apiVersion": "agents.overseer.dev/v1alpha1", "kind": "EphemeralIdentity",
                   "metadata": {"name": name, "namespace": "agents"},
                   "spec": {"className": "c", "agent": agent, "ttl": "1h", "grants": {}}})
        };
        let scenario = verifier.run(vec![
            ExpectedRequest::get("/apis/agents.overseer.dev/v1alpha1/namespaces/agents/ephemeralidentities?")
                .respond(200, json!({"apiVersion": "agents.overseer.dev/v1alpha1", "kind": "EphemeralIdentityList",
                                     "metadata": {}, "items": [identity("a", "finance-bot"), identity("b", "other")]})),
            ExpectedRequest {
                content_type: Some("application/merge-patch+json"),
                body: crate::controller::test_support::BodyMatch::Exact(json!({"spec": {"revoked": true}})),
                ..ExpectedRequest::new(
                    "PATCH",
                    "/apis/agents.overseer.dev/v1alpha1/namespaces/agents/ephemeralidentities/a?&fieldManager=overseer-identity-kill-switch",
                )
            }
            .respond(200, identity("a", "finance-bot")),
        ]);
        let revoker = KubeRevoker::new(client);
        assert_eq!(
            revoker.revoke_agent(Some("agents"), "finance-bot").await,
            Ok(1)
        );
        drop(revoker);
        timeout_after_1s(scenario).await;
    }
}

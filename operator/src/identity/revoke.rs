//! The kill switch: revoke every identity of one agent at once.

use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use overseer_crds::agents::{EphemeralIdentity, IdentityPhase};
use serde_json::json;

use crate::controller::Result;

/// Field manager of the kill switch's writes.
pub const KILL_SWITCH_MANAGER: &str = "overseer-identity-kill-switch";

/// Whether `identity` belongs to `agent` and still needs revoking (not revoked already and not
/// finished).
pub fn needs_revoking(identity: &EphemeralIdentity, agent: &str) -> bool {
    identity.spec.agent == agent
        && !identity.spec.revoked
        && !matches!(
            identity.status.as_ref().and_then(|s| s.phase),
            Some(IdentityPhase::Expired | IdentityPhase::Revoked | IdentityPhase::Denied)
        )
}

/// Set `spec.revoked: true` on every identity of `agent`, in `namespace` or in all namespaces.
/// The controller then revokes each one (Secret first). Returns how many identities were marked.
pub async fn revoke_agent(client: &Client, namespace: Option<&str>, agent: &str) -> Result<usize> {
    let api: Api<EphemeralIdentity> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let patch = json!({ "spec": { "revoked": true } });
    let params = PatchParams {
        field_manager: Some(KILL_SWITCH_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let mut count = 0;
    for identity in api.list(&ListParams::default()).await? {
        if !needs_revoking(&identity, agent) {
            continue;
        }
        let (Some(ns), name) = (identity.namespace(), identity.name_any()) else {
            continue;
        };
        let namespaced: Api<EphemeralIdentity> = Api::namespaced(client.clone(), &ns);
        match namespaced
            .patch(&name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => count += 1,
            // Deleted since the list: nothing left to revoke.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_crds::agents::{EphemeralIdentitySpec, EphemeralIdentityStatus};

    fn identity(agent: &str, revoked: bool, phase: Option<IdentityPhase>) -> EphemeralIdentity {
        let mut id = EphemeralIdentity::new(
            "x",
            EphemeralIdentitySpec {
                agent: agent.into(),
                revoked,
                ..Default::default()
            },
        );
        id.status = phase.map(|p| EphemeralIdentityStatus {
            phase: Some(p),
            ..Default::default()
        });
        id
    }

    #[test]
    fn only_live_identities_of_the_agent_are_revoked() {
        assert!(needs_revoking(&identity("a", false, None), "a"));
        assert!(needs_revoking(
            &identity("a", false, Some(IdentityPhase::Active)),
            "a"
        ));
        assert!(needs_revoking(
            &identity("a", false, Some(IdentityPhase::Pending)),
            "a"
        ));
        assert!(!needs_revoking(
            &identity("b", false, Some(IdentityPhase::Active)),
            "a"
        ));
        assert!(!needs_revoking(
            &identity("a", true, Some(IdentityPhase::Active)),
            "a"
        ));
        assert!(!needs_revoking(
            &identity("a", false, Some(IdentityPhase::Expired)),
            "a"
        ));
        assert!(!needs_revoking(
            &identity("a", false, Some(IdentityPhase::Denied)),
            "a"
        ));
    }
}

//! The identity gate of `overseer run`'s decision API: a [`PrincipalGate`] over a reflector
//! store of `EphemeralIdentity` objects, so a decision for a revoked, expired or denied identity
//! is denied at once — before any policy is evaluated and before the identity controller has
//! finished tearing down its token.
//!
//! A principal is tied to an identity when it names one (`principal.ephemeralIdentity`, in
//! `principal.namespace`), or when the caller authenticated with the token of an identity's
//! ServiceAccount (`status.serviceAccountName`). The gate closes when the identity:
//! - has `spec.revoked: true`, is being deleted, or is in phase `Revoked` → `Revoked`;
//! - is in phase `Expired`, or its `status.expiresAt` has passed → `Expired`;
//! - is in phase `Denied` → `Denied`;
//! - is named by the principal but does not exist (deleted, which revokes it) → `Revoked`.
//!
//! The store is read in memory; its readiness is a readiness check of its own, so a replica does
//! not take decisions before it knows the identities.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, PoisonError, RwLock},
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, reflector},
        watcher,
    },
};
use overseer_crds::agents::{EphemeralIdentity, IdentityPhase};
use overseer_policy::request::Principal;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::decision::{
    auth::Caller,
    gate::{GateReason, GateVerdict, PrincipalGate},
};

/// The gate, reading a store of every `EphemeralIdentity` and an index of them by ServiceAccount.
#[derive(Clone)]
pub struct IdentityGate {
    store: Store<EphemeralIdentity>,
    by_service_account: Arc<RwLock<ServiceAccountIndex>>,
}

/// `(namespace, status.serviceAccountName)` → identity name, kept from the same watch events as
/// the store, so a decision for a ServiceAccount principal is one hash lookup, not a scan of every
/// identity.
#[derive(Debug, Default)]
struct ServiceAccountIndex {
    /// (namespace, ServiceAccount) → identity name.
    owners: HashMap<(String, String), String>,
    /// (namespace, identity name) → its ServiceAccount, to move or drop its entry.
    accounts: HashMap<(String, String), String>,
    /// A relist in progress (between `Init` and `InitDone`): it replaces the index when done.
    relist: Option<Vec<EphemeralIdentity>>,
}

impl ServiceAccountIndex {
    fn apply(&mut self, event: &watcher::Event<EphemeralIdentity>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(identity) => {
                if let Some(relist) = &mut self.relist {
                    relist.push(identity.clone());
                }
            }
            watcher::Event::InitDone => {
                self.owners.clear();
                self.accounts.clear();
                for identity in self.relist.take().unwrap_or_default() {
                    self.upsert(&identity);
                }
            }
            watcher::Event::Apply(identity) => self.upsert(identity),
            watcher::Event::Delete(identity) => self.remove(identity),
        }
    }

    fn key(identity: &EphemeralIdentity) -> (String, String) {
        (
            identity.namespace().unwrap_or_default(),
            identity.name_any(),
        )
    }

    fn remove(&mut self, identity: &EphemeralIdentity) {
        let (namespace, name) = Self::key(identity);
        if let Some(account) = self.accounts.remove(&(namespace.clone(), name.clone())) {
            let owner = (namespace, account);
            if self.owners.get(&owner) == Some(&name) {
                self.owners.remove(&owner);
            }
        }
    }

    fn upsert(&mut self, identity: &EphemeralIdentity) {
        self.remove(identity);
        let (namespace, name) = Self::key(identity);
        if let Some(account) = identity
            .status
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
        {
            self.owners
                .insert((namespace.clone(), account.clone()), name.clone());
            self.accounts.insert((namespace, name), account);
        }
    }

    fn owner(&self, namespace: &str, service_account: &str) -> Option<String> {
        self.owners
            .get(&(namespace.to_owned(), service_account.to_owned()))
            .cloned()
    }
}

impl Debug for IdentityGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityGate")
            .field("identities", &self.store.len())
            .finish()
    }
}

impl IdentityGate {
    /// A gate reading `store`; feed it the same watch events as the store's writer with
    /// [`Self::observe`] (its ServiceAccount index is built from them).
    pub fn new(store: Store<EphemeralIdentity>) -> Self {
        Self {
            store,
            by_service_account: Arc::default(),
        }
    }

    /// Update the ServiceAccount index with one watch event (after the store's writer took it).
    pub fn observe(&self, event: &watcher::Event<EphemeralIdentity>) {
        self.by_service_account
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(event);
    }

    /// Watch every `EphemeralIdentity` into a store until `shutdown`; returns the gate and the
    /// store (for a readiness check).
    pub fn watch(
        client: Client,
        shutdown: CancellationToken,
    ) -> (Self, Store<EphemeralIdentity>, tokio::task::JoinHandle<()>) {
        let (store, writer) = reflector::store::<EphemeralIdentity>();
        let stream = reflector(
            writer,
            watcher(
                Api::<EphemeralIdentity>::all(client),
                watcher::Config::default(),
            )
            .default_backoff(),
        );
        let gate = Self::new(store.clone());
        let index = gate.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = stream.next() => match next {
                        Some(Ok(event)) => index.observe(&event),
                        Some(Err(e)) => warn!(error = %e, "EphemeralIdentity watch failed; retrying"),
                        None => return,
                    },
                }
            }
        });
        (gate, store, task)
    }

    /// The verdict at `now` (see the module docs).
    pub fn check_at(
        &self,
        caller: &Caller,
        principal: &Principal,
        now: DateTime<Utc>,
    ) -> GateVerdict {
        if let Some(name) = &principal.ephemeral_identity {
            let Some(namespace) = principal.namespace.as_deref() else {
                return GateVerdict::Closed {
                    reason: GateReason::Denied,
                    message: format!(
                        "principal names EphemeralIdentity {name:?} without a namespace; it cannot be checked"
                    ),
                };
            };
            return match self.store.get(&ObjectRef::new(name).within(namespace)) {
                Some(identity) => verdict(&identity, now),
                None => GateVerdict::Closed {
                    reason: GateReason::Revoked,
                    message: format!(
                        "EphemeralIdentity {namespace}/{name} does not exist (deleting an identity revokes it)"
                    ),
                },
            };
        }
        // The ServiceAccount the caller authenticated as or, for an enforcement point asking
        // on an agent's behalf, the one the principal names.
        let service_account = match &caller.service_account {
            Some(sa) => Some((sa.namespace.as_str(), sa.name.as_str())),
            None => principal
                .namespace
                .as_deref()
                .zip(principal.service_account.as_deref()),
        };
        if let Some((namespace, name)) = service_account {
            let owner = self
                .by_service_account
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .owner(namespace, name);
            let identity = owner
                .and_then(|owner| self.store.get(&ObjectRef::new(&owner).within(namespace)))
                // The index and the store take the same events; check the object itself anyway.
                .filter(|identity| {
                    identity
                        .status
                        .as_ref()
                        .and_then(|s| s.service_account_name.as_deref())
                        == Some(name)
                });
            if let Some(identity) = identity {
                return verdict(&identity, now);
            }
        }
        GateVerdict::Open
    }
}

impl PrincipalGate for IdentityGate {
    fn check(&self, caller: &Caller, principal: &Principal) -> GateVerdict {
        self.check_at(caller, principal, Utc::now())
    }

    fn complete(&self, caller: &Caller, principal: &mut Principal) {
        let Some(sa) = caller
            .service_account
            .as_ref()
            .filter(|_| caller.role == crate::decision::auth::Role::Agent)
        else {
            return;
        };
        let owner = self
            .by_service_account
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .owner(&sa.namespace, &sa.name);
        if let Some(owner) = owner {
            principal.ephemeral_identity = Some(owner);
            principal.kind = Some(overseer_policy::request::PrincipalKind::EphemeralIdentity);
        }
    }
}

/// The verdict for one identity at `now`.
fn verdict(identity: &EphemeralIdentity, now: DateTime<Utc>) -> GateVerdict {
    let name = format!(
        "{}/{}",
        identity.namespace().unwrap_or_default(),
        identity.name_any()
    );
    let closed = |reason: GateReason, why: &str| GateVerdict::Closed {
        reason,
        message: format!("EphemeralIdentity {name} {why}"),
    };
    let status = identity.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    if identity.spec.revoked || phase == Some(IdentityPhase::Revoked) {
        return closed(GateReason::Revoked, "is revoked");
    }
    if identity.metadata.deletion_timestamp.is_some() {
        return closed(GateReason::Revoked, "is being deleted, which revokes it");
    }
    if phase == Some(IdentityPhase::Denied) {
        return closed(GateReason::Denied, "was denied and never issued");
    }
    if phase == Some(IdentityPhase::Expired) {
        return closed(GateReason::Expired, "has expired");
    }
    let expires_at = status
        .and_then(|s| s.expires_at.as_deref())
        .map(DateTime::parse_from_rfc3339);
    match expires_at {
        Some(Ok(at)) if at <= now => closed(GateReason::Expired, &format!("expired at {at}")),
        Some(Err(_)) => closed(
            GateReason::Expired,
            "has an unreadable status.expiresAt; treated as expired",
        ),
        _ => GateVerdict::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::auth::{Role, ServiceAccountRef};
    use chrono::TimeZone;
    use overseer_crds::agents::{EphemeralIdentitySpec, EphemeralIdentityStatus};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0)
            .single()
            .expect("time")
    }

    fn identity(
        name: &str,
        revoked: bool,
        phase: IdentityPhase,
        expires: &str,
    ) -> EphemeralIdentity {
        let mut id = EphemeralIdentity::new(
            name,
            EphemeralIdentitySpec {
                class_name: "standard".into(),
                agent: "coder".into(),
                revoked,
                ..EphemeralIdentitySpec::default()
            },
        );
        id.metadata.namespace = Some("agents".into());
        id.status = Some(EphemeralIdentityStatus {
            phase: Some(phase),
            expires_at: Some(expires.into()),
            service_account_name: Some(format!("eid-{name}-0123456789")),
            ..EphemeralIdentityStatus::default()
        });
        id
    }

    /// A gate and the writer of its store; `feed` hands an event to both, as the watch does.
    fn gate_and_writer(
        identities: Vec<EphemeralIdentity>,
    ) -> (IdentityGate, reflector::store::Writer<EphemeralIdentity>) {
        let (store, writer) = reflector::store::<EphemeralIdentity>();
        let mut pair = (IdentityGate::new(store), writer);
        feed(&mut pair, &watcher::Event::Init);
        for id in identities {
            feed(&mut pair, &watcher::Event::InitApply(id));
        }
        feed(&mut pair, &watcher::Event::InitDone);
        pair
    }

    fn feed(
        (gate, writer): &mut (IdentityGate, reflector::store::Writer<EphemeralIdentity>),
        event: &watcher::Event<EphemeralIdentity>,
    ) {
        writer.apply_watcher_event(event);
        gate.observe(event);
    }

    fn gate(identities: Vec<EphemeralIdentity>) -> IdentityGate {
        gate_and_writer(identities).0
    }

    fn gateway() -> Caller {
        Caller {
            name: "gateway".into(),
            role: Role::Gateway,
            agent: None,
            groups: vec![],
            service_account: None,
            namespace: None,
        }
    }

    /// A caller that authenticated with the token of ServiceAccount agents/`sa`.
    fn token_of(sa: &str) -> Caller {
        Caller {
            role: Role::Agent,
            service_account: Some(ServiceAccountRef {
                namespace: "agents".into(),
                name: sa.into(),
            }),
            ..gateway()
        }
    }

    fn naming(name: &str) -> Principal {
        Principal {
            id: "coder".into(),
            namespace: Some("agents".into()),
            ephemeral_identity: Some(name.into()),
            ..Principal::default()
        }
    }

    const LATER: &str = "2030-01-01T13:00:00Z";
    const EARLIER: &str = "2030-01-01T11:00:00Z";

    fn reason(v: GateVerdict) -> Option<GateReason> {
        match v {
            GateVerdict::Open => None,
            GateVerdict::Closed { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn revoked_expired_denied_and_missing_identities_close_the_gate() {
        let g = gate(vec![
            identity("live", false, IdentityPhase::Active, LATER),
            identity("killed", true, IdentityPhase::Active, LATER),
            identity("revoked", false, IdentityPhase::Revoked, LATER),
            identity("old", false, IdentityPhase::Expired, EARLIER),
            identity("lapsed", false, IdentityPhase::Active, EARLIER),
            identity("refused", false, IdentityPhase::Denied, LATER),
            identity("garbled", false, IdentityPhase::Active, "soon"),
        ]);
        let c = gateway();
        for (name, want) in [
            ("live", None),
            ("killed", Some(GateReason::Revoked)),
            ("revoked", Some(GateReason::Revoked)),
            ("old", Some(GateReason::Expired)),
            ("lapsed", Some(GateReason::Expired)),
            ("refused", Some(GateReason::Denied)),
            ("garbled", Some(GateReason::Expired)),
            ("gone", Some(GateReason::Revoked)),
        ] {
            assert_eq!(reason(g.check_at(&c, &naming(name), now())), want, "{name}");
        }
        let GateVerdict::Closed { message, .. } = g.check_at(&c, &naming("killed"), now()) else {
            panic!("closed")
        };
        assert_eq!(message, "EphemeralIdentity agents/killed is revoked");
        let nowhere = Principal {
            namespace: None,
            ..naming("live")
        };
        assert_eq!(
            reason(g.check_at(&c, &nowhere, now())),
            Some(GateReason::Denied)
        );
    }

    #[test]
    fn a_token_agent_acts_as_its_own_identity_and_cannot_name_another() {
        let g = gate(vec![
            identity("live", false, IdentityPhase::Active, LATER),
            identity("task-42", false, IdentityPhase::Active, LATER),
        ]);
        // A plain ServiceAccount may not borrow a live identity by naming it.
        let plain = token_of("plain-bot");
        let mut borrowed = Principal {
            ephemeral_identity: Some("task-42".into()),
            ..Principal::default()
        };
        let err = plain.check_principal(&mut borrowed).expect_err("refused");
        assert!(err.contains("principal.ephemeralIdentity"), "{err}");
        // Nor claim another kind.
        let mut claimed = Principal {
            kind: Some(overseer_policy::request::PrincipalKind::Agent),
            ..Principal::default()
        };
        assert!(plain.check_principal(&mut claimed).is_err());

        // Its principal is completed from the token: no identity for a plain ServiceAccount...
        let mut own = Principal::default();
        plain.check_principal(&mut own).expect("itself");
        g.complete(&plain, &mut own);
        assert_eq!(own.ephemeral_identity, None);
        assert_eq!(
            own.kind,
            Some(overseer_policy::request::PrincipalKind::ServiceAccount)
        );
        // ... and the identity whose ServiceAccount it is, so the gate and the policies naming
        // that identity apply to it.
        let holder = token_of("eid-task-42-0123456789");
        let mut own = Principal::default();
        holder.check_principal(&mut own).expect("itself");
        g.complete(&holder, &mut own);
        assert_eq!(own.ephemeral_identity.as_deref(), Some("task-42"));
        assert_eq!(
            own.kind,
            Some(overseer_policy::request::PrincipalKind::EphemeralIdentity)
        );
        assert_eq!(own.namespace.as_deref(), Some("agents"));
        // A gateway asserting on an agent's behalf is not completed from its own token.
        let mut asserted = naming("live");
        g.complete(&gateway(), &mut asserted);
        assert_eq!(asserted.ephemeral_identity.as_deref(), Some("live"));
    }

    #[test]
    fn a_caller_with_an_identitys_service_account_token_is_checked_too() {
        let g = gate(vec![
            identity("live", false, IdentityPhase::Active, LATER),
            identity("killed", true, IdentityPhase::Active, LATER),
        ]);
        let principal = Principal {
            id: "system:serviceaccount:agents:x".into(),
            ..Principal::default()
        };
        assert_eq!(
            reason(g.check_at(&token_of("eid-killed-0123456789"), &principal, now())),
            Some(GateReason::Revoked)
        );
        assert_eq!(
            reason(g.check_at(&token_of("eid-live-0123456789"), &principal, now())),
            None
        );
        // Not an identity's ServiceAccount: the policies decide.
        assert_eq!(
            reason(g.check_at(&token_of("support-bot"), &principal, now())),
            None
        );
        assert_eq!(reason(g.check_at(&gateway(), &principal, now())), None);
    }

    #[test]
    fn a_gateway_asking_for_an_identitys_service_account_is_checked_too() {
        let g = gate(vec![
            identity("live", false, IdentityPhase::Active, LATER),
            identity("killed", true, IdentityPhase::Active, LATER),
        ]);
        // The MCP gateway authenticated the agent by its token and names its ServiceAccount.
        let on_behalf_of = |sa: &str| Principal {
            id: format!("system:serviceaccount:agents:{sa}"),
            namespace: Some("agents".into()),
            service_account: Some(sa.into()),
            ..Principal::default()
        };
        let GateVerdict::Closed {
            reason: why,
            message,
        } = g.check_at(&gateway(), &on_behalf_of("eid-killed-0123456789"), now())
        else {
            panic!("a revoked identity's ServiceAccount is denied")
        };
        assert_eq!(why, GateReason::Revoked);
        assert_eq!(message, "EphemeralIdentity agents/killed is revoked");
        assert_eq!(
            reason(g.check_at(&gateway(), &on_behalf_of("eid-live-0123456789"), now())),
            None
        );
        // The same ServiceAccount name in another namespace is somebody else.
        let elsewhere = Principal {
            namespace: Some("other".into()),
            ..on_behalf_of("eid-killed-0123456789")
        };
        assert_eq!(reason(g.check_at(&gateway(), &elsewhere, now())), None);
    }

    #[test]
    fn the_service_account_index_follows_the_watch() {
        let principal = Principal::default();
        let check = |pair: &(IdentityGate, _), sa: &str| {
            reason(pair.0.check_at(&token_of(sa), &principal, now()))
        };
        let mut pair = gate_and_writer(vec![identity("a", false, IdentityPhase::Active, LATER)]);
        assert_eq!(check(&pair, "eid-a-0123456789"), None);
        // Revoked after the start: the same ServiceAccount is now denied.
        feed(
            &mut pair,
            &watcher::Event::Apply(identity("a", true, IdentityPhase::Active, LATER)),
        );
        assert_eq!(check(&pair, "eid-a-0123456789"), Some(GateReason::Revoked));
        // Its ServiceAccount changes (a re-issue): the old one is nobody's any more.
        let mut moved = identity("a", true, IdentityPhase::Active, LATER);
        if let Some(status) = &mut moved.status {
            status.service_account_name = Some("eid-a-new".into());
        }
        feed(&mut pair, &watcher::Event::Apply(moved.clone()));
        assert_eq!(check(&pair, "eid-a-0123456789"), None);
        assert_eq!(check(&pair, "eid-a-new"), Some(GateReason::Revoked));
        // Deleted: the ServiceAccount is no identity's (the controller revokes its tokens).
        feed(&mut pair, &watcher::Event::Delete(moved));
        assert_eq!(check(&pair, "eid-a-new"), None);
        // A relist replaces the index with what the API server has now.
        feed(
            &mut pair,
            &watcher::Event::Apply(identity("b", true, IdentityPhase::Active, LATER)),
        );
        assert_eq!(check(&pair, "eid-b-0123456789"), Some(GateReason::Revoked));
        feed(&mut pair, &watcher::Event::Init);
        feed(
            &mut pair,
            &watcher::Event::InitApply(identity("c", true, IdentityPhase::Active, LATER)),
        );
        feed(&mut pair, &watcher::Event::InitDone);
        assert_eq!(
            check(&pair, "eid-b-0123456789"),
            None,
            "b is gone after the relist"
        );
        assert_eq!(check(&pair, "eid-c-0123456789"), Some(GateReason::Revoked));
    }
}

//! The reconciler: issue, watch over and revoke one `EphemeralIdentity`.
//!
//! Level-triggered: every reconcile recomputes from the identity, its class and its children, and
//! each step is idempotent, so a crash at any point is repaired by the next reconcile without a
//! second live token:
//!
//! 1. validate against the class ([`super::checks`]); a refusal writes only the status;
//! 2. check that no object already holds one of the identity's generated names unless it is the
//!    identity's own (a foreign ServiceAccount would lend the token its bindings);
//! 3. record the names in the status (so a later refusal knows something may need removing);
//! 4. apply the ServiceAccount, the Role and the RoleBindings;
//! 5. create the token Secret empty; a Secret left empty by a crash is deleted and re-created,
//!    which also invalidates any token minted for it and lost;
//! 6. request a token bound to that Secret and write it into the Secret;
//! 7. mark the identity `Active` and requeue exactly at `expiresAt`.
//!
//! Revocation (at expiry, on `spec.revoked`, on delete, when the class disappears or no longer
//! allows the identity, when the token Secret disappears) deletes the token Secret first, then the
//! RoleBindings and the Role, then the ServiceAccount, and only then records the phase.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Secret, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use overseer_crds::{
    agents::{
        AgentApproval, EphemeralIdentity, EphemeralIdentityClass, EphemeralIdentityStatus,
        IdentityPhase,
    },
    common::CONDITION_READY,
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{info, warn};

use super::{
    approval::{self, ApprovalState},
    build::{Owner, Token, expires_at, secret_times, token_of},
    checks::{self, Allowed, Denial, reason},
};
use crate::controller::{
    Context, Error, Result,
    apply::{FieldManager, Ownership, apply, apply_status},
    conditions::{ConditionStatus, DesiredCondition, set_condition, status_unchanged},
    instrumented,
};

/// The controller's name (metric label, readiness check).
pub const CONTROLLER: &str = "ephemeralidentity";
/// The finalizer that makes deletion revoke in order.
pub const FINALIZER: &str = "agents.overseer.dev/ephemeral-identity";
/// Field manager of every child object (the token write included).
pub const FIELD_MANAGER: FieldManager = FieldManager::new("overseer-identity");
/// Field manager of the identity's status.
pub const STATUS_MANAGER: FieldManager = FieldManager::new("overseer-identity-status");
/// Condition: the token has been issued (and not yet revoked).
pub const CONDITION_ISSUED: &str = "Issued";
/// Condition: the token has been revoked (expiry included).
pub const CONDITION_REVOKED: &str = "Revoked";
/// How long a finished identity is kept when its class does not say.
pub const DEFAULT_RECORD_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Reconcile one identity: the entry point given to `kube::runtime::Controller::run`.
pub async fn reconcile(identity: Arc<EphemeralIdentity>, ctx: Arc<Context>) -> Result<Action> {
    let regarding = identity.object_ref(&());
    instrumented(&ctx, CONTROLLER, &regarding, async {
        let namespace = identity
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let api: Api<EphemeralIdentity> = Api::namespaced(ctx.client.clone(), &namespace);
        finalizer(&api, FINALIZER, identity.clone(), |event| async {
            let now = Timestamp::now();
            match event {
                FinalizerEvent::Apply(identity) => apply_at(&identity, &ctx, now).await,
                FinalizerEvent::Cleanup(identity) => cleanup_at(&identity, &ctx, now).await,
            }
        })
        .await
        .map_err(Error::from)
    })
    .await
}

/// Reconcile an identity that is not being deleted, as of `now`.
pub async fn apply_at(
    identity: &EphemeralIdentity,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action> {
    let run = Run::new(identity, ctx, now)?;
    match run.phase() {
        Some(IdentityPhase::Expired | IdentityPhase::Revoked | IdentityPhase::Denied) => {
            run.retain().await
        }
        _ if identity.spec.revoked => {
            run.revoke(reason::REVOKED, "spec.revoked is true".to_owned(), None)
                .await
        }
        Some(IdentityPhase::Active) => run.watch_active().await,
        _ => run.issue().await,
    }
}

/// Revoke an identity that is being deleted, as of `now`.
pub async fn cleanup_at(
    identity: &EphemeralIdentity,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action> {
    let run = Run::new(identity, ctx, now)?;
    match run.phase() {
        // Revoked before: its children are gone (the sweep catches any straggler).
        Some(IdentityPhase::Expired | IdentityPhase::Revoked | IdentityPhase::Denied) => {
            Ok(Action::await_change())
        }
        _ => {
            run.revoke(
                reason::DELETED,
                "the identity is being deleted".to_owned(),
                None,
            )
            .await?;
            Ok(Action::await_change())
        }
    }
}

/// One reconcile of one identity.
struct Run<'a> {
    identity: &'a EphemeralIdentity,
    ctx: &'a Context,
    owner: Owner,
    now: Timestamp,
}

impl<'a> Run<'a> {
    fn new(identity: &'a EphemeralIdentity, ctx: &'a Context, now: Timestamp) -> Result<Self> {
        let owner = Owner::from_identity(identity).map_err(Error::MissingObjectKey)?;
        Ok(Self {
            identity,
            ctx,
            owner,
            now,
        })
    }

    fn phase(&self) -> Option<IdentityPhase> {
        self.identity.status.as_ref().and_then(|s| s.phase)
    }

    /// Whether an earlier reconcile may have created children (it records their names first).
    fn may_have_children(&self) -> bool {
        self.identity
            .status
            .as_ref()
            .is_some_and(|s| s.service_account_name.is_some() || s.secret_name.is_some())
    }

    /// Why the identity may no longer be issued, as the API server has it now (not the cache):
    /// deleted, replaced by another of the same name, ended, or revoked.
    async fn ended_meanwhile(&self) -> Result<Option<&'static str>> {
        let live = self
            .api::<EphemeralIdentity>()
            .get_opt(&self.owner.name)
            .await?;
        Ok(match live {
            None => Some("it was deleted"),
            Some(live) if live.uid() != self.identity.uid() => Some("it was replaced"),
            Some(live) if live.spec.revoked => Some("spec.revoked is true"),
            Some(live) => match live.status.as_ref().and_then(|s| s.phase) {
                Some(IdentityPhase::Expired | IdentityPhase::Revoked | IdentityPhase::Denied) => {
                    Some("it has ended")
                }
                _ => None,
            },
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.owner.namespace)
    }

    async fn class(&self) -> Result<Option<EphemeralIdentityClass>> {
        let api: Api<EphemeralIdentityClass> = Api::all(self.ctx.client.clone());
        Ok(api.get_opt(&self.identity.spec.class_name).await?)
    }

    /// Validate against `class`, reading the namespace's labels only when the class needs them.
    async fn validate(&self, class: &EphemeralIdentityClass) -> Result<Result<Allowed, Denial>> {
        let labels = if checks::needs_namespace_labels(&class.spec, &self.owner.namespace) {
            let api: Api<Namespace> = Api::all(self.ctx.client.clone());
            api.get_opt(&self.owner.namespace)
                .await?
                .map(|ns| ns.labels().clone())
        } else {
            None
        };
        Ok(checks::validate(
            &class.name_any(),
            &class.spec,
            &self.owner.namespace,
            labels.as_ref(),
            &self.identity.spec,
        ))
    }

    // --- issuing -------------------------------------------------------------------------

    async fn issue(&self) -> Result<Action> {
        let Some(class) = self.class().await? else {
            if self.may_have_children() {
                self.delete_children().await?;
            }
            let message = format!(
                "EphemeralIdentityClass {:?} does not exist; create it or use another class",
                self.identity.spec.class_name
            );
            self.write_status(
                IdentityPhase::Pending,
                reason::CLASS_NOT_FOUND,
                message,
                |_| {},
            )
            .await?;
            return Ok(Action::await_change());
        };
        let allowed = match self.validate(&class).await? {
            Ok(allowed) => allowed,
            Err(denial) => return self.deny(denial, &class).await,
        };
        let approved = if class.spec.require_approval {
            match self.approval_gate(&class).await? {
                Ok(approval) => Some(approval),
                Err(action) => return Ok(action),
            }
        } else {
            None
        };
        let (action, issued) = self.mint(&class, &allowed).await?;
        if issued && let Some((approval, reviewer)) = approved {
            self.record_approval(&approval, &ApprovalState::Approved { reviewer }, true)
                .await?;
        }
        Ok(action)
    }

    /// Create the children and the token. The flag says whether the identity was issued (as
    /// opposed to refused for a name held by someone else).
    async fn mint(
        &self,
        class: &EphemeralIdentityClass,
        allowed: &Allowed,
    ) -> Result<(Action, bool)> {
        // Nothing foreign may hold one of our names.
        let names = &self.owner.names;
        let existing_secret = self
            .owned_or_conflict::<Secret>("Secret", &names.secret)
            .await;
        let existing_secret = match existing_secret? {
            Ok(secret) => secret,
            Err(denial) => return Ok((self.deny(denial, class).await?, false)),
        };
        if let Err(denial) = self
            .owned_or_conflict::<ServiceAccount>("ServiceAccount", &names.service_account)
            .await?
        {
            return Ok((self.deny(denial, class).await?, false));
        }
        if !allowed.rules.is_empty()
            && let Err(denial) = self.owned_or_conflict::<Role>("Role", &names.role).await?
        {
            return Ok((self.deny(denial, class).await?, false));
        }
        for binding in self
            .owner
            .role_binding_names(&allowed.roles, !allowed.rules.is_empty())
        {
            if let Err(denial) = self
                .owned_or_conflict::<RoleBinding>("RoleBinding", &binding)
                .await?
            {
                return Ok((self.deny(denial, class).await?, false));
            }
        }

        // A token already written (a crash before the status said so): never mint a second.
        if let Some(secret) = &existing_secret
            && token_of(secret).is_some()
            && let Some((issued_at, expires_at)) = secret_times(secret)
        {
            return Ok((self.activate(issued_at, expires_at, class).await?, true));
        }

        // Everything above read the cached identity; before anything is created or minted, read
        // it from the API server: a watch lagging by more than the TTL can hand us a `Pending`
        // copy of an identity that has since expired or been revoked.
        if let Some(why) = self.ended_meanwhile().await? {
            info!(identity = %self.owner.name, namespace = %self.owner.namespace, why, "not issued: the cached identity is stale");
            if self.may_have_children() {
                self.delete_children().await?;
            }
            return Ok((Action::await_change(), false));
        }
        if !self.may_have_children() {
            self.write_status(
                IdentityPhase::Pending,
                reason::ISSUING,
                "creating the ServiceAccount, its bindings and the token Secret".to_owned(),
                |_| {},
            )
            .await?;
        }
        self.put(&self.owner.service_account()).await?;
        if let Some(role) = self.owner.role(&allowed.rules) {
            self.put(&role).await?;
        }
        for binding in self
            .owner
            .role_bindings(&allowed.roles, !allowed.rules.is_empty())
        {
            self.put(&binding).await?;
        }
        if let Some(stale) = &existing_secret {
            // Empty (or unreadable): a token may have been minted for it and lost. Deleting it
            // invalidates that token; the new Secret gets a new UID.
            self.delete_exact::<Secret>(&names.secret, stale.uid())
                .await?;
        }
        let secret = self.put(&self.owner.empty_secret()).await?;
        let secret_uid = secret.uid().ok_or(Error::MissingObjectKey("secret uid"))?;

        let request = self
            .owner
            .token_request(&secret_uid, &allowed.audiences, allowed.ttl);
        if !self.ctx.leader.is_leader() {
            return Err(Error::NotLeader);
        }
        let response = self
            .api::<ServiceAccount>()
            .create_token_request(&names.service_account, &PostParams::default(), &request)
            .await?;
        let status = response
            .status
            .ok_or(Error::MissingObjectKey("TokenRequest status"))?;
        let token = Token::new(status.token);
        let token_expiry = status.expiration_timestamp.0;
        let issued_at = whole_seconds(self.now);
        let ends = expires_at(issued_at, allowed.ttl, token_expiry);
        self.put(&self.owner.token_secret(&token, issued_at, ends))
            .await?;
        drop(token);
        info!(identity = %self.owner.name, namespace = %self.owner.namespace, expires_at = %ends, "token issued");
        Ok((self.activate(issued_at, ends, class).await?, true))
    }

    /// For classes that require approval: `Ok(Ok((approval, reviewer)))` once a listed approver
    /// approved this exact request; otherwise open or wait for the request, or end the identity
    /// `Denied` when it was denied or timed out, and return the action to take.
    async fn approval_gate(
        &self,
        class: &EphemeralIdentityClass,
    ) -> Result<std::result::Result<(AgentApproval, String), Action>> {
        let digest = approval::request_digest(self.identity, &self.owner.uid);
        let name = approval::approval_name(&self.owner, &digest);
        let api = self.api::<AgentApproval>();
        let existing = api.get_opt(&name).await?;
        if let Some(existing) = &existing
            && !self.owner.controls(existing.meta())
        {
            let denial = Denial {
                reason: reason::NAME_CONFLICT,
                message: format!(
                    "AgentApproval {name:?} already exists in namespace {:?} and does not belong to this identity",
                    self.owner.namespace
                ),
            };
            return Ok(Err(self.deny(denial, class).await?));
        }
        let state = approval::state(existing.as_ref(), &digest, self.now);
        let waiting = |name: &str, expires_at: Timestamp| {
            format!(
                "waiting until {expires_at} for a listed approver to approve AgentApproval {name:?}: \
                 kubectl patch agentapproval {name} -n {} --type merge -p \
                 '{{\"spec\":{{\"review\":{{\"decision\":\"Approved\",\"reviewer\":\"<your username>\"}}}}}}'",
                self.owner.namespace
            )
        };
        match state {
            ApprovalState::Missing => {
                if self.may_have_children() {
                    self.delete_children().await?;
                }
                let request =
                    approval::request(&self.owner, self.identity, class, &digest, self.now);
                let expires_at = request
                    .spec
                    .expires_at
                    .parse::<Timestamp>()
                    .unwrap_or(self.now);
                self.put(&request).await?;
                self.write_status(
                    IdentityPhase::Pending,
                    reason::APPROVAL_REQUIRED,
                    waiting(&name, expires_at),
                    |_| {},
                )
                .await?;
                Ok(Err(requeue_until(self.now, expires_at)))
            }
            ApprovalState::Waiting {
                ref name,
                expires_at,
            } => {
                if let Some(existing) = &existing {
                    self.record_approval(existing, &state, false).await?;
                }
                self.write_status(
                    IdentityPhase::Pending,
                    reason::APPROVAL_REQUIRED,
                    waiting(name, expires_at),
                    |_| {},
                )
                .await?;
                Ok(Err(requeue_until(self.now, expires_at)))
            }
            ApprovalState::Approved { ref reviewer } => {
                let Some(existing) = existing else {
                    return Err(Error::MissingObjectKey("approval"));
                };
                self.record_approval(&existing, &state, false).await?;
                Ok(Ok((existing, reviewer.clone())))
            }
            ApprovalState::Denied {
                ref reviewer,
                ref comment,
            } => {
                if let Some(existing) = &existing {
                    self.record_approval(existing, &state, false).await?;
                }
                let comment = comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                let denial = Denial {
                    reason: reason::APPROVAL_DENIED,
                    message: format!("{reviewer} denied AgentApproval {name:?}{comment}"),
                };
                Ok(Err(self.deny(denial, class).await?))
            }
            ApprovalState::Expired { expires_at } => {
                if let Some(existing) = &existing {
                    self.record_approval(existing, &state, false).await?;
                }
                let denial = Denial {
                    reason: reason::APPROVAL_EXPIRED,
                    message: format!(
                        "nobody reviewed AgentApproval {name:?} before it expired at {expires_at}"
                    ),
                };
                Ok(Err(self.deny(denial, class).await?))
            }
        }
    }

    /// Record `state` in the approval's status (leader-gated; skipped when unchanged).
    async fn record_approval(
        &self,
        existing: &AgentApproval,
        state: &ApprovalState,
        consumed: bool,
    ) -> Result<()> {
        let Some(status) =
            approval::status_for(existing.status.as_ref(), state, consumed, self.now)
        else {
            return Ok(());
        };
        apply_status(
            &self.api::<AgentApproval>(),
            &self.ctx.leader,
            STATUS_MANAGER,
            &existing.name_any(),
            &status,
        )
        .await?;
        Ok(())
    }

    /// Write the `Active` status and requeue at the end.
    async fn activate(
        &self,
        issued_at: Timestamp,
        ends: Timestamp,
        class: &EphemeralIdentityClass,
    ) -> Result<Action> {
        if ends <= self.now {
            return self
                .revoke(
                    reason::EXPIRED,
                    format!("the identity ended at {ends}"),
                    Some(class),
                )
                .await;
        }
        let message = format!("token issued; valid until {ends}");
        self.write_status(IdentityPhase::Active, reason::ISSUED, message, |s| {
            s.issued_at = Some(issued_at.to_string());
            s.expires_at = Some(ends.to_string());
        })
        .await?;
        Ok(requeue_until(self.now, ends))
    }

    /// Refuse: remove whatever an earlier attempt made, then record `Denied`.
    async fn deny(&self, denial: Denial, class: &EphemeralIdentityClass) -> Result<Action> {
        if self.may_have_children() {
            self.delete_children().await?;
        }
        let now = self.now.to_string();
        self.write_status(IdentityPhase::Denied, denial.reason, denial.message, |s| {
            s.ended_at = Some(now);
        })
        .await?;
        Ok(Action::requeue(retention(Some(class))))
    }

    /// `Ok(Ok(existing))` when `name` is free (`None`) or ours; `Ok(Err(denial))` when another
    /// object holds it.
    async fn owned_or_conflict<K>(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Result<Option<K>, Denial>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        match self.api::<K>().get_opt(name).await? {
            Some(object) if !self.owner.controls(object.meta()) => Ok(Err(Denial {
                reason: reason::NAME_CONFLICT,
                message: format!(
                    "{kind} {name:?} already exists in namespace {:?} and does not belong to this identity; \
                     delete it or recreate the identity under another name",
                    self.owner.namespace
                ),
            })),
            existing => Ok(Ok(existing)),
        }
    }

    async fn put<K>(&self, object: &K) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        apply(
            &self.api::<K>(),
            &self.ctx.leader,
            FIELD_MANAGER,
            Ownership::Owned,
            object,
        )
        .await
    }

    // --- while active --------------------------------------------------------------------

    async fn watch_active(&self) -> Result<Action> {
        let status = self.identity.status.as_ref();
        let ends = status
            .and_then(|s| s.expires_at.as_deref())
            .and_then(|t| t.parse::<Timestamp>().ok());
        let Some(ends) = ends else {
            return self
                .revoke(
                    reason::EXPIRED,
                    "the identity has no readable expiresAt".to_owned(),
                    None,
                )
                .await;
        };
        if ends <= self.now {
            return self
                .revoke(
                    reason::EXPIRED,
                    format!("the identity ended at {ends}"),
                    None,
                )
                .await;
        }
        let Some(class) = self.class().await? else {
            let message = format!(
                "EphemeralIdentityClass {:?} was deleted while the identity was active",
                self.identity.spec.class_name
            );
            return self.revoke(reason::CLASS_DELETED, message, None).await;
        };
        if let Err(denial) = self.validate(&class).await? {
            let message = format!(
                "the class no longer allows this identity: {}",
                denial.message
            );
            return self
                .revoke(reason::CLASS_CHANGED, message, Some(&class))
                .await;
        }
        // The TTL the identity asked for is checked above; the lifetime it was issued with is
        // checked here, so lowering `maxTtl` also ends identities that took the class's default.
        if let Some(message) = lifetime_over_max_ttl(status, ends, &class) {
            return self
                .revoke(reason::CLASS_CHANGED, message, Some(&class))
                .await;
        }
        let secret = self
            .api::<Secret>()
            .get_opt(&self.owner.names.secret)
            .await?;
        let alive = secret
            .as_ref()
            .is_some_and(|s| self.owner.controls(&s.metadata) && token_of(s).is_some());
        if !alive {
            let message = format!(
                "the token Secret {:?} was deleted or emptied, so the token no longer authenticates",
                self.owner.names.secret
            );
            return self
                .revoke(reason::TOKEN_SECRET_DELETED, message, Some(&class))
                .await;
        }
        Ok(requeue_until(self.now, ends))
    }

    // --- revoking ------------------------------------------------------------------------

    /// Delete the children (Secret first) and record the end: `Expired` for [`reason::EXPIRED`],
    /// `Revoked` otherwise.
    async fn revoke(
        &self,
        why: &'static str,
        message: String,
        class: Option<&EphemeralIdentityClass>,
    ) -> Result<Action> {
        if self.may_have_children() || self.phase() == Some(IdentityPhase::Active) {
            self.delete_children().await?;
        }
        let phase = if why == reason::EXPIRED {
            IdentityPhase::Expired
        } else {
            IdentityPhase::Revoked
        };
        let now = self.now.to_string();
        self.write_status(phase, why, message, |s| s.ended_at = Some(now))
            .await?;
        info!(identity = %self.owner.name, namespace = %self.owner.namespace, reason = why, "identity revoked");
        // The next reconcile (woken by this status write) reads the class's retention exactly.
        Ok(Action::requeue(retention(class)))
    }

    /// Delete, in order, the token Secret, the RoleBindings, the Role and the ServiceAccount;
    /// each only when it is this identity's.
    async fn delete_children(&self) -> Result<()> {
        let names = &self.owner.names;
        let grants = &self.identity.spec.grants;
        self.delete_owned::<Secret>(&names.secret).await?;
        for binding in self
            .owner
            .role_binding_names(&grants.roles, !grants.rules.is_empty())
        {
            self.delete_owned::<RoleBinding>(&binding).await?;
        }
        if !grants.rules.is_empty() {
            self.delete_owned::<Role>(&names.role).await?;
        }
        self.delete_owned::<ServiceAccount>(&names.service_account)
            .await
    }

    async fn delete_owned<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        match self.api::<K>().get_opt(name).await? {
            None => Ok(()),
            Some(object) if !self.owner.controls(object.meta()) => {
                warn!(kind = %K::kind(&()), name, namespace = %self.owner.namespace, "not deleting an object this identity does not own");
                Ok(())
            }
            Some(object) => self.delete_exact::<K>(name, object.uid()).await,
        }
    }

    /// Delete `name` if it still has `uid`; already gone is fine.
    async fn delete_exact<K>(&self, name: &str, uid: Option<String>) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        if !self.ctx.leader.is_leader() {
            return Err(Error::NotLeader);
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match self.api::<K>().delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    // --- finished records ----------------------------------------------------------------

    /// Keep a finished identity for the class's `recordRetention`, then delete it.
    async fn retain(&self) -> Result<Action> {
        let ended = self
            .identity
            .status
            .as_ref()
            .and_then(|s| s.ended_at.as_deref())
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(self.now);
        let retention = retention(self.class().await?.as_ref());
        let until = SignedDuration::try_from(retention)
            .ok()
            .and_then(|d| ended.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX);
        if until > self.now {
            return Ok(requeue_until(self.now, until));
        }
        if !self.ctx.leader.is_leader() {
            return Err(Error::NotLeader);
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(self.owner.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .api::<EphemeralIdentity>()
            .delete(&self.owner.name, &params)
            .await
        {
            Ok(_) => Ok(Action::await_change()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(Action::await_change()),
            Err(e) => Err(e.into()),
        }
    }

    // --- status --------------------------------------------------------------------------

    /// Apply the status for `phase` with `Ready` (and `Issued`/`Revoked`) from `why` and
    /// `message`; `fill` sets the phase's timestamps. Publishes an Event when the phase or the
    /// reason changes. Skips the write when nothing but timestamps would change.
    async fn write_status(
        &self,
        phase: IdentityPhase,
        why: &'static str,
        message: String,
        fill: impl FnOnce(&mut EphemeralIdentityStatus),
    ) -> Result<()> {
        let current = self.identity.status.clone().unwrap_or_default();
        let generation = self.identity.metadata.generation;
        let mut desired = EphemeralIdentityStatus {
            phase: Some(phase),
            issued_at: current.issued_at.clone(),
            expires_at: current.expires_at.clone(),
            ended_at: current.ended_at.clone(),
            service_account_name: current.service_account_name.clone(),
            secret_name: current.secret_name.clone(),
            observed_generation: generation,
            conditions: current.conditions.clone(),
        };
        match phase {
            IdentityPhase::Active | IdentityPhase::Pending
                if why == reason::ISSUING || phase == IdentityPhase::Active =>
            {
                desired.service_account_name = Some(self.owner.names.service_account.clone());
                desired.secret_name = Some(self.owner.names.secret.clone());
            }
            // Kept as a record of what was revoked.
            IdentityPhase::Expired | IdentityPhase::Revoked => {}
            // Nothing exists (any half-made object was deleted first).
            _ => {
                desired.service_account_name = None;
                desired.secret_name = None;
            }
        }
        fill(&mut desired);
        let (ready, issued, revoked) = match phase {
            IdentityPhase::Active => (ConditionStatus::True, ConditionStatus::True, None),
            IdentityPhase::Pending | IdentityPhase::Denied => {
                (ConditionStatus::False, ConditionStatus::False, None)
            }
            IdentityPhase::Expired | IdentityPhase::Revoked => (
                ConditionStatus::False,
                ConditionStatus::False,
                Some(ConditionStatus::True),
            ),
        };
        let mut set = |type_: &str, status: ConditionStatus| {
            set_condition(
                &mut desired.conditions,
                DesiredCondition::new(type_, status, why, message.clone()),
                generation,
                self.now,
            )
        };
        let transition = set(CONDITION_READY, ready);
        set(CONDITION_ISSUED, issued);
        if let Some(revoked) = revoked {
            set(CONDITION_REVOKED, revoked);
        }
        if status_unchanged(self.identity.status.as_ref(), &desired) {
            return Ok(());
        }
        apply_status(
            &self.api::<EphemeralIdentity>(),
            &self.ctx.leader,
            STATUS_MANAGER,
            &self.owner.name,
            &desired,
        )
        .await?;
        let changed = current.phase != Some(phase)
            || current
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION_READY)
                .is_none_or(|c| c.reason != why);
        if why != reason::ISSUING && (changed || transition.is_transition()) {
            let type_ = match phase {
                IdentityPhase::Denied => EventType::Warning,
                IdentityPhase::Pending if why != reason::ISSUING => EventType::Warning,
                _ => EventType::Normal,
            };
            self.ctx
                .recorder
                .publish(
                    &self.identity.object_ref(&()),
                    type_,
                    why,
                    phase_action(phase),
                    Some(message),
                )
                .await;
        }
        Ok(())
    }
}

/// How long a finished identity of `class` is kept: its `recordRetention`, else 24 hours.
pub fn retention(class: Option<&EphemeralIdentityClass>) -> Duration {
    class
        .and_then(|c| c.spec.record_retention)
        .filter(|d| !d.is_negative())
        .map_or(DEFAULT_RECORD_RETENTION, Duration::from)
}

fn phase_action(phase: IdentityPhase) -> &'static str {
    match phase {
        IdentityPhase::Pending => "Issue",
        IdentityPhase::Active => "Issue",
        IdentityPhase::Denied => "Validate",
        IdentityPhase::Expired | IdentityPhase::Revoked => "Revoke",
    }
}

/// `Action::requeue` for the time from `now` until `at` (at least one millisecond).
pub fn requeue_until(now: Timestamp, at: Timestamp) -> Action {
    let wait = at.duration_since(now);
    let wait = Duration::try_from(wait)
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(1));
    Action::requeue(wait)
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Why an active identity outlives its class: its issued lifetime (`expiresAt - issuedAt`) is
/// longer than the class's current `maxTtl`. `None` when it fits, or when `issuedAt` is unreadable
/// (then only `expiresAt` bounds it).
fn lifetime_over_max_ttl(
    status: Option<&overseer_crds::agents::EphemeralIdentityStatus>,
    ends: Timestamp,
    class: &EphemeralIdentityClass,
) -> Option<String> {
    let issued = status
        .and_then(|s| s.issued_at.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())?;
    let max = Duration::from(class.spec.max_ttl);
    let lifetime = ends.duration_since(issued);
    let over = SignedDuration::try_from(max).is_ok_and(|max| lifetime > max);
    over.then(|| {
        format!(
            "the class no longer allows this identity: it was issued for {}, longer than the class's maxTtl {}",
            super::checks::go_duration(lifetime.unsigned_abs()),
            super::checks::go_duration(max)
        )
    })
}

#[cfg(test)]
mod lifetime_tests {
    use overseer_crds::agents::EphemeralIdentityStatus;

    use super::*;
    use crate::identity::tests::bare_class as class;

    #[test]
    fn an_identity_issued_for_longer_than_a_lowered_max_ttl_is_over() {
        let status = EphemeralIdentityStatus {
            issued_at: Some("2030-01-01T08:00:00Z".into()),
            ..EphemeralIdentityStatus::default()
        };
        let ends: Timestamp = "2030-01-01T16:00:00Z".parse().expect("time");
        // Issued for 8h (the class's default) under maxTtl 8h: fits.
        assert_eq!(
            lifetime_over_max_ttl(Some(&status), ends, &class("8h")),
            None
        );
        // The admin lowers maxTtl to 1h: the identity is over, whatever TTL it asked for.
        let message = lifetime_over_max_ttl(Some(&status), ends, &class("1h")).expect("over");
        assert!(
            message.contains("issued for 8h0m0s, longer than the class's maxTtl 1h0m0s"),
            "{message}"
        );
        // Without a readable issuedAt only expiresAt bounds it.
        let unknown = EphemeralIdentityStatus {
            issued_at: Some("not a time".into()),
            ..EphemeralIdentityStatus::default()
        };
        assert_eq!(
            lifetime_over_max_ttl(Some(&unknown), ends, &class("1h")),
            None
        );
    }
}

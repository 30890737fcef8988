//! Pure builders for every object an identity owns, and for the TokenRequest.
//!
//! Each object is complete (with `apiVersion` and `kind`) so it can be server-side applied as is,
//! carries a controller owner reference to the identity and the labels
//! `app.kubernetes.io/managed-by: overseer`, `agents.overseer.dev/ephemeral-identity: <name>` and
//! `agents.overseer.dev/agent: <agent>`.

use std::{collections::BTreeMap, fmt, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{Secret, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef as K8sRoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt};
use overseer_crds::{
    agents::{EphemeralIdentity, GrantRule, RoleKind, RoleRef},
    common::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
};

use super::names::{ChildNames, label_value};

/// Label naming the identity an object belongs to.
pub const IDENTITY_LABEL: &str = "agents.overseer.dev/ephemeral-identity";
/// Label naming the agent an object was made for.
pub const AGENT_LABEL: &str = "agents.overseer.dev/agent";
/// Key of the token in the Secret's `data`.
pub const TOKEN_KEY: &str = "token";
/// Annotation on the Secret: when the token was issued (RFC 3339).
pub const ISSUED_AT_ANNOTATION: &str = "agents.overseer.dev/issued-at";
/// Annotation on the Secret: when the identity ends (RFC 3339).
pub const EXPIRES_AT_ANNOTATION: &str = "agents.overseer.dev/expires-at";
/// The API server's minimum `expirationSeconds` of a TokenRequest (10 minutes).
pub const MIN_TOKEN_SECONDS: i64 = 600;

/// A token from the TokenRequest API. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wrap a token.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token itself: only ever written into the bound Secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Everything the builders need to know about one identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    /// The identity's name.
    pub name: String,
    /// Its namespace (where every child lives).
    pub namespace: String,
    /// Its UID.
    pub uid: String,
    /// The agent it is for.
    pub agent: String,
    /// The names of its children.
    pub names: ChildNames,
    owner_reference: OwnerReference,
}

impl Owner {
    /// Read the identity; fails (naming the field) when the API server did not set its name,
    /// namespace or UID.
    pub fn from_identity(identity: &EphemeralIdentity) -> Result<Self, &'static str> {
        let name = identity.metadata.name.clone().ok_or("name")?;
        let namespace = identity.metadata.namespace.clone().ok_or("namespace")?;
        let uid = identity.metadata.uid.clone().ok_or("uid")?;
        let owner_reference = identity.controller_owner_ref(&()).ok_or("uid")?;
        Ok(Self {
            names: ChildNames::new(&name, &uid),
            name,
            namespace,
            uid,
            agent: identity.spec.agent.clone(),
            owner_reference,
        })
    }

    /// The labels every child carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (IDENTITY_LABEL.to_owned(), label_value(&self.name)),
            (AGENT_LABEL.to_owned(), label_value(&self.agent)),
        ])
    }

    /// Whether `meta` is controlled by this identity (its controller owner reference has our UID).
    pub fn controls(&self, meta: &ObjectMeta) -> bool {
        meta.owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == self.uid)
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner_reference.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The identity's dedicated ServiceAccount; it mounts no token into pods.
    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(&self.names.service_account),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }
    }

    /// The Role holding the explicit rules, or `None` when there are none.
    pub fn role(&self, rules: &[GrantRule]) -> Option<Role> {
        (!rules.is_empty()).then(|| Role {
            metadata: self.meta(&self.names.role),
            rules: Some(rules.iter().map(policy_rule).collect()),
        })
    }

    /// The RoleBindings: one to the identity's own Role (when it has rules) and one per vetted
    /// role, all binding only the identity's ServiceAccount.
    pub fn role_bindings(&self, roles: &[RoleRef], has_rules: bool) -> Vec<RoleBinding> {
        let own =
            has_rules.then(|| self.binding(&self.names.rules_binding, "Role", &self.names.role));
        own.into_iter()
            .chain(roles.iter().map(|r| {
                let kind = match r.kind {
                    RoleKind::ClusterRole => "ClusterRole",
                    RoleKind::Role => "Role",
                };
                self.binding(&self.names.role_binding(r), kind, &r.name)
            }))
            .collect()
    }

    /// The names of every RoleBinding [`Owner::role_bindings`] builds.
    pub fn role_binding_names(&self, roles: &[RoleRef], has_rules: bool) -> Vec<String> {
        has_rules
            .then(|| self.names.rules_binding.clone())
            .into_iter()
            .chain(roles.iter().map(|r| self.names.role_binding(r)))
            .collect()
    }

    fn binding(&self, name: &str, kind: &str, role: &str) -> RoleBinding {
        RoleBinding {
            metadata: self.meta(name),
            role_ref: K8sRoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: kind.to_owned(),
                name: role.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: self.names.service_account.clone(),
                namespace: Some(self.namespace.clone()),
                api_group: None,
            }]),
        }
    }

    /// The token Secret before the token exists (`type: Opaque`, no data): the token is bound to
    /// its UID, so it must exist first.
    pub fn empty_secret(&self) -> Secret {
        Secret {
            metadata: self.meta(&self.names.secret),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        }
    }

    /// The token Secret with its token (key `token`) and when it was issued and ends.
    pub fn token_secret(
        &self,
        token: &Token,
        issued_at: Timestamp,
        expires_at: Timestamp,
    ) -> Secret {
        let mut secret = self.empty_secret();
        secret.metadata.annotations = Some(BTreeMap::from([
            (ISSUED_AT_ANNOTATION.to_owned(), issued_at.to_string()),
            (EXPIRES_AT_ANNOTATION.to_owned(), expires_at.to_string()),
        ]));
        secret.data = Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(token.expose().as_bytes().to_vec()),
        )]));
        secret
    }

    /// The TokenRequest for the ServiceAccount: bound to the Secret (`uid` is the Secret's), for
    /// `audiences` (empty: the API server's), valid for `ttl` but at least the API server's
    /// 10-minute minimum; a shorter TTL is enforced by deleting the Secret.
    pub fn token_request(
        &self,
        secret_uid: &str,
        audiences: &[String],
        ttl: Duration,
    ) -> TokenRequest {
        TokenRequest {
            metadata: ObjectMeta::default(),
            spec: TokenRequestSpec {
                audiences: audiences.to_vec(),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Secret".to_owned()),
                    name: Some(self.names.secret.clone()),
                    uid: Some(secret_uid.to_owned()),
                }),
                expiration_seconds: Some(token_seconds(ttl)),
            },
            status: None,
        }
    }
}

/// `expirationSeconds` for a TTL: the TTL rounded up to whole seconds, at least
/// [`MIN_TOKEN_SECONDS`].
pub fn token_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .max(MIN_TOKEN_SECONDS)
}

/// When an identity issued at `issued_at` with `ttl` ends: at the TTL or at the token's real
/// expiry, whichever is earlier.
pub fn expires_at(issued_at: Timestamp, ttl: Duration, token_expiry: Timestamp) -> Timestamp {
    let by_ttl = k8s_openapi::jiff::SignedDuration::try_from(ttl)
        .ok()
        .and_then(|d| issued_at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX);
    by_ttl.min(token_expiry)
}

/// Read the token from a Secret built by [`Owner::token_secret`], if it holds one.
pub fn token_of(secret: &Secret) -> Option<Token> {
    let bytes = secret.data.as_ref()?.get(TOKEN_KEY)?;
    let token = String::from_utf8(bytes.0.clone()).ok()?;
    (!token.is_empty()).then(|| Token::new(token))
}

/// The `issued-at` and `expires-at` annotations of a token Secret.
pub fn secret_times(secret: &Secret) -> Option<(Timestamp, Timestamp)> {
    let annotations = secret.annotations();
    let issued = annotations.get(ISSUED_AT_ANNOTATION)?.parse().ok()?;
    let expires = annotations.get(EXPIRES_AT_ANNOTATION)?.parse().ok()?;
    Some((issued, expires))
}

fn policy_rule(rule: &GrantRule) -> PolicyRule {
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    PolicyRule {
        api_groups: list(&rule.api_groups),
        resources: list(&rule.resources),
        verbs: rule.verbs.clone(),
        resource_names: list(&rule.resource_names),
        non_resource_urls: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_crds::agents::{EphemeralIdentitySpec, Grants};
    use serde_json::json;

    fn identity() -> EphemeralIdentity {
        let mut id = EphemeralIdentity::new(
            "fix-bug",
            EphemeralIdentitySpec {
                class_name: "standard".into(),
                agent: "spiffe://td/ns/agents/sa/coder".into(),
                grants: Grants::default(),
                ..Default::default()
            },
        );
        id.metadata.namespace = Some("agents".into());
        id.metadata.uid = Some("0f0e-uid".into());
        id
    }

    fn owner() -> Owner {
        Owner::from_identity(&identity()).expect("complete identity")
    }

    fn expected_meta(o: &Owner, name: &str) -> serde_json::Value {
        json!({
            "name": name,
            "namespace": "agents",
            "labels": {
                "app.kubernetes.io/managed-by": "overseer",
                "agents.overseer.dev/ephemeral-identity": "fix-bug",
                "agents.overseer.dev/agent": label_value("spiffe://td/ns/agents/sa/coder"),
            },
            "ownerReferences": [{
                "apiVersion": "agents.overseer.dev/v1alpha1",
                "kind": "EphemeralIdentity",
                "name": "fix-bug",
                "uid": o.uid,
                "controller": true,
            }],
        })
    }

    #[test]
    fn owner_needs_name_namespace_and_uid() {
        let mut id = identity();
        id.metadata.uid = None;
        assert_eq!(Owner::from_identity(&id), Err("uid"));
        let mut id = identity();
        id.metadata.namespace = None;
        assert_eq!(Owner::from_identity(&id), Err("namespace"));
    }

    #[test]
    fn service_account_is_owned_labelled_and_mounts_nothing() {
        let o = owner();
        let sa = serde_json::to_value(o.service_account()).expect("json");
        assert_eq!(
            sa,
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": expected_meta(&o, &o.names.service_account),
                "automountServiceAccountToken": false,
            })
        );
        assert!(o.controls(&o.service_account().metadata));
        let mut foreign = o.service_account().metadata;
        foreign.owner_references = None;
        assert!(!o.controls(&foreign));
    }

    #[test]
    fn role_and_bindings() {
        let o = owner();
        assert!(o.role(&[]).is_none());
        let rules = vec![GrantRule {
            api_groups: vec!["".into()],
            resources: vec!["pods".into()],
            verbs: vec!["get".into()],
            resource_names: vec![],
        }];
        let role = serde_json::to_value(o.role(&rules).expect("role")).expect("json");
        assert_eq!(
            role,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": expected_meta(&o, &o.names.role),
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            })
        );
        let roles = vec![
            RoleRef {
                kind: RoleKind::ClusterRole,
                name: "view".into(),
            },
            RoleRef {
                kind: RoleKind::Role,
                name: "ci-reader".into(),
            },
        ];
        let bindings = o.role_bindings(&roles, true);
        assert_eq!(bindings.len(), 3);
        let names: Vec<String> = bindings.iter().map(|b| b.name_any()).collect();
        assert_eq!(names, o.role_binding_names(&roles, true));
        let refs: Vec<(&str, &str)> = bindings
            .iter()
            .map(|b| (b.role_ref.kind.as_str(), b.role_ref.name.as_str()))
            .collect();
        assert_eq!(
            refs,
            vec![
                ("Role", o.names.role.as_str()),
                ("ClusterRole", "view"),
                ("Role", "ci-reader")
            ]
        );
        let first = serde_json::to_value(&bindings[0]).expect("json");
        assert_eq!(
            first["subjects"],
            json!([{"kind": "ServiceAccount", "name": o.names.service_account, "namespace": "agents"}])
        );
        assert_eq!(first["metadata"], expected_meta(&o, &o.names.rules_binding));
        assert_eq!(o.role_bindings(&roles, false).len(), 2);
    }

    #[test]
    fn secrets_empty_then_with_token() {
        let o = owner();
        let empty = serde_json::to_value(o.empty_secret()).expect("json");
        assert_eq!(
            empty,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": expected_meta(&o, &o.names.secret),
                "type": "Opaque",
            })
        );
        let issued: Timestamp = "2030-01-01T00:00:00Z".parse().expect("ts");
        let expires: Timestamp = "2030-01-01T00:05:00Z".parse().expect("ts");
        let secret = o.token_secret(&Token::new("abc".into()), issued, expires);
        let v = serde_json::to_value(&secret).expect("json");
        assert_eq!(v["data"], json!({"token": "YWJj"}));
        assert_eq!(v["type"], "Opaque");
        assert_eq!(
            v["metadata"]["annotations"],
            json!({
                "agents.overseer.dev/issued-at": "2030-01-01T00:00:00Z",
                "agents.overseer.dev/expires-at": "2030-01-01T00:05:00Z",
            })
        );
        assert_eq!(
            token_of(&secret).map(|t| t.expose().to_owned()),
            Some("abc".to_owned())
        );
        assert_eq!(secret_times(&secret), Some((issued, expires)));
        assert!(token_of(&o.empty_secret()).is_none());
        assert!(secret_times(&o.empty_secret()).is_none());
    }

    #[test]
    fn token_request_is_bound_to_the_secret() {
        let o = owner();
        let tr = o.token_request("secret-uid", &["vault".into()], Duration::from_secs(1800));
        assert_eq!(
            serde_json::to_value(tr).expect("json"),
            json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "metadata": {},
                "spec": {
                    "audiences": ["vault"],
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "name": o.names.secret,
                        "uid": "secret-uid",
                    },
                    "expirationSeconds": 1800,
                },
            })
        );
    }

    #[test]
    fn token_lifetime_respects_the_api_server_minimum() {
        assert_eq!(token_seconds(Duration::from_secs(30)), 600);
        assert_eq!(token_seconds(Duration::from_secs(600)), 600);
        assert_eq!(token_seconds(Duration::from_millis(900_500)), 901);
        assert_eq!(token_seconds(Duration::from_secs(7 * 24 * 3600)), 604_800);
        let issued: Timestamp = "2030-01-01T00:00:00Z".parse().expect("ts");
        let token: Timestamp = "2030-01-01T00:10:00Z".parse().expect("ts");
        assert_eq!(
            expires_at(issued, Duration::from_secs(30), token).to_string(),
            "2030-01-01T00:00:30Z"
        );
        assert_eq!(expires_at(issued, Duration::from_secs(3600), token), token);
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("eyJhbGciOi.secret".into());
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}

//! Caller authentication: explicit API keys (standalone and in a cluster) and, in a cluster,
//! Kubernetes tokens checked with the TokenReview API ([`super::tokenreview`]).
//!
//! Keys are given in a YAML file of entries `{name, role, sha256 | key, agent?, namespace?,
//! groups?}`; only their SHA-256 digests are kept in memory and keys are compared digest to
//! digest in constant time. A caller presents its key as `Authorization: Bearer <key>`.
//!
//! Roles:
//! * `agent` — may ask for decisions only for the principal id named by `agent` (in the key's
//!   `namespace`, if any), and commit its own usage;
//! * `gateway` — a trusted enforcement point (the MCP gateway, Envoy): may ask for any principal;
//! * `approver` — may review approvals, as the reviewer `name` with `groups`;
//! * `admin` — all of the above.
//!
//! Without keys the service only starts with `--insecure-no-auth` on a loopback address; every
//! caller is then an anonymous `gateway` that cannot review approvals.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an authenticated caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Decisions for one principal only.
    Agent,
    /// Decisions for any principal.
    Gateway,
    /// Reviews approvals.
    Approver,
    /// Everything.
    Admin,
}

/// A Kubernetes ServiceAccount, as a TokenReview names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccountRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ServiceAccountRef {
    /// Parse a Kubernetes username `system:serviceaccount:NAMESPACE:NAME`.
    pub fn from_username(username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The Kubernetes username, `system:serviceaccount:NAMESPACE:NAME`.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Who: the key's name, or the Kubernetes username of a token (the reviewer identity for
    /// approvals).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// For `agent` keys: the only principal id it may ask for.
    pub agent: Option<String>,
    /// Groups, matched against a policy's `approval.groups`.
    pub groups: Vec<String>,
    /// The ServiceAccount, when the caller authenticated with a ServiceAccount token (for an
    /// `agent`, the principal it may ask for is bound to it; see [`Caller::check_principal`]).
    pub service_account: Option<ServiceAccountRef>,
    /// For `agent` keys: the principal namespace it is bound to (the key's `namespace`).
    pub namespace: Option<String>,
}

impl Caller {
    /// The anonymous caller of `--insecure-no-auth` mode.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Gateway,
            agent: None,
            groups: Vec::new(),
            service_account: None,
            namespace: None,
        }
    }

    /// Whether it may ask for a decision on behalf of `principal_id`.
    pub fn may_decide_for(&self, principal_id: &str) -> bool {
        match self.role {
            Role::Gateway | Role::Admin => true,
            Role::Agent => self.agent.as_deref() == Some(principal_id),
            Role::Approver => false,
        }
    }

    /// Check (and complete) the principal of a decision request this caller asks about.
    ///
    /// Gateways and admins may ask for any principal. An agent may ask only for itself, and may
    /// not assert what nothing here can verify (`spiffeId`, `labels`; ask through a gateway for
    /// those):
    /// - authenticated by a ServiceAccount token: the principal's `namespace` and
    ///   `serviceAccount` must be its own (filled in when absent), its `id` its username
    ///   (`system:serviceaccount:NS:NAME`, filled in when empty), its `kind` `ServiceAccount`
    ///   (filled in); it may not name an `ephemeralIdentity` — the identity gate ties it to the
    ///   identity whose ServiceAccount it is;
    /// - by an `agent` API key: the `id` must be the key's `agent`, the `kind` `Agent` (filled
    ///   in), the `namespace` the key's `namespace` (filled in when absent; without one in the
    ///   key, none may be named — only ClusterAgentPolicies govern it), and it may not name a
    ///   `serviceAccount` or an `ephemeralIdentity`.
    ///
    /// `Err` says why the caller may not ask.
    pub fn check_principal(
        &self,
        principal: &mut overseer_policy::request::Principal,
    ) -> Result<(), String> {
        if self.role != Role::Agent {
            return if self.may_decide_for(&principal.id) {
                Ok(())
            } else {
                Err(format!(
                    "{} may not ask for decisions on behalf of {:?}",
                    self.name, principal.id
                ))
            };
        }
        match &self.service_account {
            Some(sa) => self.check_own_service_account(sa, principal),
            None => self.check_own_agent_id(principal),
        }
    }

    fn check_own_service_account(
        &self,
        sa: &ServiceAccountRef,
        principal: &mut overseer_policy::request::Principal,
    ) -> Result<(), String> {
        use overseer_policy::request::PrincipalKind;
        let username = sa.username();
        let refuse = |what: String| {
            Err(format!(
                "{username} authenticated with its ServiceAccount token and may only ask for itself: {what}"
            ))
        };
        if principal.id.is_empty() {
            principal.id.clone_from(&username);
        }
        if principal.id != username {
            return refuse(format!(
                "principal.id must be {username:?}, not {:?}",
                principal.id
            ));
        }
        match principal.namespace.as_deref() {
            None => principal.namespace = Some(sa.namespace.clone()),
            Some(ns) if ns == sa.namespace => {}
            Some(ns) => return refuse(format!("principal.namespace {ns:?} is not its own")),
        }
        match principal.service_account.as_deref() {
            None => principal.service_account = Some(sa.name.clone()),
            Some(name) if name == sa.name => {}
            Some(name) => {
                return refuse(format!("principal.serviceAccount {name:?} is not its own"));
            }
        }
        match principal.kind {
            None | Some(PrincipalKind::ServiceAccount) => {
                principal.kind = Some(PrincipalKind::ServiceAccount);
            }
            Some(kind) => {
                return refuse(format!(
                    "principal.kind {:?} is not ServiceAccount",
                    kind.as_str()
                ));
            }
        }
        if principal.ephemeral_identity.is_some() {
            return refuse(
                "it may not name principal.ephemeralIdentity: it acts as the identity whose \
                 ServiceAccount it is, which the identity gate finds itself"
                    .into(),
            );
        }
        if principal.spiffe_id.is_some() {
            return refuse("it may not assert principal.spiffeId".into());
        }
        if !principal.labels.is_empty() {
            return refuse("it may not assert principal.labels".into());
        }
        Ok(())
    }

    fn check_own_agent_id(
        &self,
        principal: &mut overseer_policy::request::Principal,
    ) -> Result<(), String> {
        use overseer_policy::request::PrincipalKind;
        let agent = self.agent.as_deref().unwrap_or_default();
        let refuse = |what: String| {
            Err(format!(
                "{} is the API key of agent {agent:?} and may only ask for it: {what}",
                self.name
            ))
        };
        if agent.is_empty() || principal.id != agent {
            return refuse(format!("principal.id {:?} is not {agent:?}", principal.id));
        }
        match (principal.namespace.as_deref(), self.namespace.as_deref()) {
            (None, own) => principal.namespace = own.map(str::to_owned),
            (Some(ns), Some(own)) if ns == own => {}
            (Some(ns), Some(own)) => {
                return refuse(format!(
                    "principal.namespace {ns:?} is not its own ({own:?})"
                ));
            }
            (Some(ns), None) => {
                return refuse(format!(
                    "principal.namespace {ns:?}: the key names no namespace; add `namespace: {ns}` \
                     to its entry in the API key file to let namespaced policies govern it"
                ));
            }
        }
        match principal.kind {
            None | Some(PrincipalKind::Agent) => principal.kind = Some(PrincipalKind::Agent),
            Some(kind) => {
                return refuse(format!("principal.kind {:?} is not Agent", kind.as_str()));
            }
        }
        let asserted = [
            ("serviceAccount", principal.service_account.is_some()),
            ("ephemeralIdentity", principal.ephemeral_identity.is_some()),
            ("spiffeId", principal.spiffe_id.is_some()),
            ("labels", !principal.labels.is_empty()),
        ];
        if let Some((field, _)) = asserted.iter().find(|(_, set)| *set) {
            return refuse(format!(
                "it may not assert principal.{field}, which nothing here can verify (authenticate \
                 with the ServiceAccount token, or ask through a gateway)"
            ));
        }
        Ok(())
    }

    /// For an agent, the only principal id it may act as (its API key's `agent`, or its
    /// ServiceAccount's username); `None` for the other roles, which may act for anyone.
    pub fn own_principal_id(&self) -> Option<String> {
        if self.role != Role::Agent {
            return None;
        }
        // An agent with neither is refused everything: an id no principal has.
        Some(match (&self.service_account, &self.agent) {
            (Some(sa), _) => sa.username(),
            (None, Some(agent)) => agent.clone(),
            (None, None) => String::new(),
        })
    }

    /// Whether it may review approvals.
    pub fn may_review(&self) -> bool {
        matches!(self.role, Role::Approver | Role::Admin)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    role: Role,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

/// One known key: its digest and the caller it authenticates.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    digest: [u8; 32],
    caller: Caller,
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read API key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("API key file {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What to fix.
        message: String,
    },
}

/// How callers are authenticated.
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// API keys.
    ApiKeys(Vec<KeyRecord>),
    /// No authentication (loopback only; see the module docs).
    Insecure,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing `Authorization: Bearer <api key or token>` header")]
    Missing,
    /// The key is not known (and no token review is configured).
    #[error("unknown API key")]
    Unknown,
    /// The API server's TokenReview did not accept the token (invalid, expired, revoked, or not
    /// meant for this audience).
    #[error("the token was not accepted: {0}")]
    Rejected(String),
    /// The token is valid but its user has no role here (not a ServiceAccount, and not named in
    /// the role mapping).
    #[error("{0} is authenticated but has no role in the decision service")]
    NoRole(String),
    /// The token could not be reviewed (the API server is unreachable or refused the review):
    /// fail closed.
    #[error("the token could not be reviewed, try again later: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A short, stable label for HTTP error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing | Self::Unknown | Self::Rejected(_) => "unauthenticated",
            Self::NoRole(_) => "forbidden",
            Self::Unavailable(_) => "authentication_unavailable",
        }
    }
}

impl Authenticator {
    /// Load API keys from a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| KeyFileError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// No API keys at all: in a cluster, where every caller presents a Kubernetes token checked
    /// by TokenReview ([`super::tokenreview::TokenReviewer`]). Without a token reviewer every
    /// caller is refused.
    pub fn no_keys() -> Self {
        Self::ApiKeys(Vec::new())
    }

    /// Parse API keys from YAML (`keys: [{name, role, key | sha256, agent?, groups?}]`).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let file: KeyFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if file.keys.is_empty() {
            return Err("`keys` is empty: list at least one key".into());
        }
        let mut records = Vec::with_capacity(file.keys.len());
        for (i, entry) in file.keys.into_iter().enumerate() {
            let at = format!("keys[{i}] ({})", entry.name);
            if entry.name.is_empty() {
                return Err(format!("keys[{i}]: name must not be empty"));
            }
            let digest = match (&entry.key, &entry.sha256) {
                (Some(key), None) if key.len() >= 16 => Sha256::digest(key.as_bytes()).into(),
                (Some(_), None) => return Err(format!("{at}: key must be at least 16 characters")),
                (None, Some(hex_digest)) => {
                    let bytes = hex::decode(hex_digest)
                        .map_err(|e| format!("{at}: sha256 is not hex: {e}"))?;
                    <[u8; 32]>::try_from(bytes.as_slice())
                        .map_err(|_| format!("{at}: sha256 must be 64 hex digits"))?
                }
                _ => return Err(format!("{at}: set exactly one of key or sha256")),
            };
            if entry.role == Role::Agent && entry.agent.as_deref().is_none_or(str::is_empty) {
                return Err(format!("{at}: an agent key must name its agent"));
            }
            if let Some(ns) = &entry.namespace {
                if entry.role != Role::Agent {
                    return Err(format!(
                        "{at}: namespace is only for agent keys (other roles act for any principal)"
                    ));
                }
                if !super::is_dns_label(ns) {
                    return Err(format!(
                        "{at}: namespace {ns:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
                    ));
                }
            }
            records.push(KeyRecord {
                digest,
                caller: Caller {
                    name: entry.name,
                    role: entry.role,
                    agent: entry.agent,
                    groups: entry.groups,
                    service_account: None,
                    namespace: entry.namespace,
                },
            });
        }
        Ok(Self::ApiKeys(records))
    }

    /// Authenticate the value of an `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let records = match self {
            Self::Insecure => return Ok(Caller::anonymous()),
            Self::ApiKeys(records) => records,
        };
        let key = bearer(authorization).ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare against every record so the time taken does not reveal which one matched.
        let mut found = None;
        for record in records {
            if bool::from(record.digest.ct_eq(&digest)) {
                found = Some(record);
            }
        }
        found.map(|r| r.caller.clone()).ok_or(AuthError::Unknown)
    }

    /// Whether callers are authenticated at all.
    pub fn is_insecure(&self) -> bool {
        matches!(self, Self::Insecure)
    }
}

/// The credential of an `Authorization: Bearer <credential>` header value.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = r#"
keys:
  - name: support-bot
    role: agent
    agent: support-bot
    key: "agent-key-0123456789"
  - name: alice
    role: approver
    groups: [finance-approvers]
    sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
"#;

    #[test]
    fn keys_authenticate_their_callers() {
        let auth = Authenticator::from_yaml(KEYS).expect("valid");
        let agent = auth
            .authenticate(Some("Bearer agent-key-0123456789"))
            .expect("agent");
        assert_eq!(agent.role, Role::Agent);
        assert!(agent.may_decide_for("support-bot"));
        assert!(!agent.may_decide_for("finance-bot"));
        assert!(!agent.may_review());
        // sha256("hello")
        let alice = auth.authenticate(Some("Bearer hello")).expect("approver");
        assert_eq!(alice.name, "alice");
        assert!(alice.may_review());
        assert!(!alice.may_decide_for("support-bot"));
    }

    #[test]
    fn missing_and_unknown_keys_are_refused() {
        let auth = Authenticator::from_yaml(KEYS).expect("valid");
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            auth.authenticate(Some("Basic abc")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(Some("Bearer nope")),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn bad_key_files_say_what_to_fix() {
        for (yaml, expect) in [
            ("keys: []", "at least one key"),
            ("keys: [{name: a, role: agent, key: short}]", "at least 16"),
            (
                "keys: [{name: a, role: agent, key: '0123456789abcdefg'}]",
                "must name its agent",
            ),
            (
                "keys: [{name: a, role: gateway}]",
                "exactly one of key or sha256",
            ),
            ("keys: [{name: a, role: gateway, sha256: zz}]", "not hex"),
            (
                "keys: [{name: a, role: root, key: '0123456789abcdefg'}]",
                "unknown variant",
            ),
        ] {
            let err = Authenticator::from_yaml(yaml).expect_err(yaml);
            assert!(err.contains(expect), "{yaml}: {err}");
        }
    }
}

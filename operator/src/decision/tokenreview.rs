//! Caller authentication in a cluster: a caller presents its Kubernetes token (a ServiceAccount's,
//! or an `EphemeralIdentity`'s, which is a ServiceAccount token too) as
//! `Authorization: Bearer <token>`, and the API server's TokenReview API says who it is.
//!
//! - The review asks for the configured audiences; a token minted for another audience is
//!   refused.
//! - Results are cached by the token's SHA-256 (never the token itself) in a bounded cache:
//!   an accepted token for [`TokenReviewConfig::ttl`] (10 s by default), a refused one for
//!   [`TokenReviewConfig::negative_ttl`] (1 s). Concurrent requests with the same token share one
//!   review. A revoked token can therefore keep authenticating for at most `ttl`; decisions for a
//!   revoked `EphemeralIdentity` are still denied at once by the identity gate
//!   ([`super::gate`]).
//! - An error reaching the API server (or an API server that refuses the review, e.g. for lack
//!   of RBAC) is never cached and fails closed: the caller gets a 503.
//! - Roles: a ServiceAccount is an `agent` (it may ask only for itself) unless the role mapping
//!   names its username or one of its groups; any other user needs the mapping to get a role.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::{Api, Client, api::PostParams};
use moka::{Expiry, future::Cache};
use sha2::{Digest, Sha256};

use super::auth::{AuthError, Authenticator, Caller, Role, ServiceAccountRef, bearer};

/// Users and groups that get a role other than the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMapping {
    /// Usernames (e.g. `system:serviceaccount:mcp:gateway`) or groups with the `admin` role.
    pub admins: Vec<String>,
    /// Usernames or groups with the `gateway` role (trusted enforcement points that may ask on
    /// behalf of any agent).
    pub gateways: Vec<String>,
    /// Usernames or groups with the `approver` role.
    pub approvers: Vec<String>,
}

impl RoleMapping {
    /// The role of `username` in `groups`: the first of admin, gateway, approver whose list names
    /// the user or one of its groups; otherwise `agent` for a ServiceAccount and none for anyone
    /// else.
    pub fn role_of(
        &self,
        username: &str,
        groups: &[String],
        is_service_account: bool,
    ) -> Option<Role> {
        let named = |list: &[String]| list.iter().any(|e| e == username || groups.contains(e));
        if named(&self.admins) {
            Some(Role::Admin)
        } else if named(&self.gateways) {
            Some(Role::Gateway)
        } else if named(&self.approvers) {
            Some(Role::Approver)
        } else if is_service_account {
            Some(Role::Agent)
        } else {
            None
        }
    }
}

/// Authenticate an `Authorization` header as every endpoint does: an API key of `keys` first,
/// then — when `tokens` is given and the credential is no known key — a Kubernetes token
/// through TokenReview.
pub async fn authenticate(
    keys: &Authenticator,
    tokens: Option<&TokenReviewer>,
    authorization: Option<&str>,
) -> Result<Caller, AuthError> {
    match keys.authenticate(authorization) {
        Err(AuthError::Unknown) => match (tokens, bearer(authorization)) {
            (Some(reviewer), Some(token)) => reviewer.authenticate(token).await,
            _ => Err(AuthError::Unknown),
        },
        other => other,
    }
}

/// The `--token-review` flags of an enforcement point (`overseer gateway`, `overseer ext-authz`):
/// agents authenticate with their own Kubernetes token.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct AgentTokenFlags {
    /// Also authenticate agents by their Kubernetes ServiceAccount or EphemeralIdentity token
    /// (`Authorization: Bearer <token>`), reviewed with the TokenReview API of the cluster
    /// (in-cluster configuration, else KUBECONFIG). Needs RBAC `create` on
    /// `tokenreviews.authentication.k8s.io`.
    #[arg(long)]
    pub token_review: bool,
    /// With --token-review: an audience the token must be meant for (repeatable); none: the API
    /// server's own audiences.
    #[arg(
        long = "token-audience",
        value_name = "AUDIENCE",
        requires = "token_review"
    )]
    pub token_audiences: Vec<String>,
    /// With --token-review: seconds an accepted token is trusted before it is reviewed again (a
    /// revoked token keeps authenticating for at most this long).
    #[arg(
        long,
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300),
        requires = "token_review"
    )]
    pub token_cache_ttl_seconds: u64,
}

impl AgentTokenFlags {
    /// The TokenReview settings, when --token-review is given (every ServiceAccount is an agent).
    pub fn config(&self) -> Option<TokenReviewConfig> {
        self.token_review.then(|| TokenReviewConfig {
            audiences: self.token_audiences.clone(),
            ttl: Duration::from_secs(self.token_cache_ttl_seconds),
            ..TokenReviewConfig::default()
        })
    }

    /// The reviewer of --token-review, over `client`; `None` without the flag.
    pub fn reviewer(&self, client: &Client) -> Option<TokenReviewer> {
        let config = self.config()?;
        tracing::info!(
            audiences = ?config.audiences,
            ttl_seconds = config.ttl.as_secs(),
            "agents may authenticate with Kubernetes tokens (TokenReview)"
        );
        Some(TokenReviewer::new(client.clone(), config))
    }
}

/// How tokens are reviewed and cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenReviewConfig {
    /// Audiences the token must be meant for; empty means the API server's own audiences.
    pub audiences: Vec<String>,
    /// Who gets which role.
    pub roles: RoleMapping,
    /// How long an accepted token is trusted without a new review.
    pub ttl: Duration,
    /// How long a refused token is remembered as refused.
    pub negative_ttl: Duration,
    /// Most reviews kept.
    pub capacity: u64,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            roles: RoleMapping::default(),
            ttl: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(1),
            capacity: 10_000,
        }
    }
}

/// The outcome of one review, as cached.
#[derive(Clone, Debug)]
enum Reviewed {
    Accepted(Caller),
    Refused(AuthError),
}

#[derive(Debug)]
struct ReviewExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<[u8; 32], Reviewed> for ReviewExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Reviewed,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Reviewed::Accepted(_) => self.ttl,
            Reviewed::Refused(_) => self.negative_ttl,
        })
    }
}

/// Authenticates bearer tokens with the TokenReview API, caching the answers briefly.
#[derive(Clone)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    config: Arc<TokenReviewConfig>,
    cache: Cache<[u8; 32], Reviewed>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("config", &self.config)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer that sends TokenReviews through `client`.
    pub fn new(client: Client, config: TokenReviewConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.capacity.max(1))
            .expire_after(ReviewExpiry {
                ttl: config.ttl,
                negative_ttl: config.negative_ttl,
            })
            .build();
        Self {
            api: Api::all(client),
            config: Arc::new(config),
            cache,
        }
    }

    /// Authenticate `token`: the cached answer when there is one, otherwise a TokenReview.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let reviewed = self
            .cache
            .try_get_with(key, self.review(token))
            .await
            .map_err(|e| (*e).clone())?;
        match reviewed {
            Reviewed::Accepted(caller) => Ok(caller),
            Reviewed::Refused(e) => Err(e),
        }
    }

    /// Reviews currently cached (approximate).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    /// One TokenReview. `Ok` answers are cached; `Err` (the review itself failed) is not.
    async fn review(&self, token: &str) -> Result<Reviewed, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.config.audiences.is_empty())
                    .then(|| self.config.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                // The error never contains the token (it is only in the request body).
                tracing::warn!(error = %e, "TokenReview failed; refusing the caller (fail closed)");
                AuthError::Unavailable(match &e {
                    kube::Error::Api(s) => {
                        format!("the API server answered {}: {}", s.code, s.message)
                    }
                    _ => "the API server cannot be reached".into(),
                })
            })?;
        Ok(self.judge(answer.status.unwrap_or_default()))
    }

    /// What a TokenReview's status means for the caller.
    fn judge(&self, status: TokenReviewStatus) -> Reviewed {
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate it".into());
            tracing::debug!(reason = %why, "token refused by TokenReview");
            return Reviewed::Refused(AuthError::Rejected(
                "invalid, expired or revoked token".into(),
            ));
        }
        if !self.config.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.config.audiences.contains(a)) {
                return Reviewed::Refused(AuthError::Rejected(format!(
                    "the token is not meant for this service (audiences {:?})",
                    self.config.audiences
                )));
            }
        }
        let user = status.user.unwrap_or_default();
        let Some(username) = user.username.filter(|u| !u.is_empty()) else {
            return Reviewed::Refused(AuthError::Rejected("the review named no user".into()));
        };
        let groups = user.groups.unwrap_or_default();
        let service_account = ServiceAccountRef::from_username(&username);
        match self
            .config
            .roles
            .role_of(&username, &groups, service_account.is_some())
        {
            Some(role) => Reviewed::Accepted(Caller {
                name: username,
                role,
                agent: None,
                groups,
                service_account,
                namespace: None,
            }),
            None => Reviewed::Refused(AuthError::NoRole(username)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s};
    use serde_json::json;

    const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews?";

    fn config() -> TokenReviewConfig {
        TokenReviewConfig {
            audiences: vec!["overseer-decisions".into()],
            roles: RoleMapping {
                admins: vec!["system:serviceaccount:ops:admin".into()],
                gateways: vec!["overseer:gateways".into()],
                approvers: vec!["finance-approvers".into()],
            },
            ..TokenReviewConfig::default()
        }
    }

    fn accepted(username: &str, groups: &[&str]) -> serde_json::Value {
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {},
            "status": {"authenticated": true, "audiences": ["overseer-decisions"],
                       "user": {"username": username, "groups": groups}}
        })
    }

    fn review_of(token: &str) -> ExpectedRequest {
        ExpectedRequest::post_containing(
            PATH,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "spec": {"token": token, "audiences": ["overseer-decisions"]}}),
        )
    }

    #[tokio::test]
    async fn service_account_tokens_become_agents_and_are_cached() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![review_of("tok-a").respond(
            201,
            accepted(
                "system:serviceaccount:agents:finance-bot",
                &["system:serviceaccounts"],
            ),
        )]);
        let reviewer = TokenReviewer::new(client, config());
        let caller = reviewer.authenticate("tok-a").await.expect("accepted");
        assert_eq!(caller.name, "system:serviceaccount:agents:finance-bot");
        assert_eq!(caller.role, Role::Agent);
        assert_eq!(
            caller.service_account,
            Some(ServiceAccountRef {
                namespace: "agents".into(),
                name: "finance-bot".into()
            })
        );
        // The second call is answered from the cache: the verifier would fail on a second review.
        assert_eq!(reviewer.authenticate("tok-a").await, Ok(caller));
        drop(reviewer);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn roles_come_from_the_mapping() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            review_of("admin").respond(201, accepted("system:serviceaccount:ops:admin", &[])),
            review_of("gw").respond(
                201,
                accepted("system:serviceaccount:mcp:gateway", &["overseer:gateways"]),
            ),
            review_of("alice").respond(201, accepted("alice@example.com", &["finance-approvers"])),
            review_of("bob").respond(201, accepted("bob@example.com", &["devs"])),
        ]);
        let reviewer = TokenReviewer::new(client, config());
        assert_eq!(
            reviewer.authenticate("admin").await.map(|c| c.role),
            Ok(Role::Admin)
        );
        assert_eq!(
            reviewer.authenticate("gw").await.map(|c| c.role),
            Ok(Role::Gateway)
        );
        let alice = reviewer.authenticate("alice").await.expect("approver");
        assert_eq!((alice.role, alice.service_account), (Role::Approver, None));
        assert_eq!(
            reviewer.authenticate("bob").await,
            Err(AuthError::NoRole("bob@example.com".into()))
        );
        drop(reviewer);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn refused_tokens_are_remembered_briefly_and_errors_not_at_all() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            review_of("bad").respond(
                201,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                       "status": {"authenticated": false, "error": "token has been invalidated"}}),
            ),
            review_of("other-audience").respond(
                201,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                       "status": {"authenticated": true, "audiences": ["vault"],
                                  "user": {"username": "system:serviceaccount:a:b"}}}),
            ),
            review_of("flaky").respond(
                500,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "etcd timeout", "reason": "InternalError", "code": 500}),
            ),
            review_of("flaky").respond(201, accepted("system:serviceaccount:a:b", &[])),
            review_of("bad").respond(
                201,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                       "status": {"authenticated": false}}),
            ),
        ]);
        let reviewer = TokenReviewer::new(
            client,
            TokenReviewConfig {
                negative_ttl: Duration::from_millis(50),
                ..config()
            },
        );
        assert!(matches!(
            reviewer.authenticate("bad").await,
            Err(AuthError::Rejected(_))
        ));
        // Cached: no second review.
        assert!(matches!(
            reviewer.authenticate("bad").await,
            Err(AuthError::Rejected(_))
        ));
        let err = reviewer
            .authenticate("other-audience")
            .await
            .expect_err("audience");
        assert!(
            err.to_string().contains("not meant for this service"),
            "{err}"
        );
        // A failed review is a 503 and is not cached: the next call reviews again.
        let err = reviewer
            .authenticate("flaky")
            .await
            .expect_err("unavailable");
        assert!(
            matches!(&err, AuthError::Unavailable(m) if m.contains("500")),
            "{err}"
        );
        assert!(reviewer.authenticate("flaky").await.is_ok());
        // The refusal expires after the negative TTL and the token is reviewed again.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(matches!(
            reviewer.authenticate("bad").await,
            Err(AuthError::Rejected(_))
        ));
        drop(reviewer);
        timeout_after_1s(scenario).await;
    }

    #[test]
    fn service_account_usernames_parse() {
        assert_eq!(
            ServiceAccountRef::from_username("system:serviceaccount:ns:sa").map(|s| s.username()),
            Some("system:serviceaccount:ns:sa".into())
        );
        for bad in [
            "alice",
            "system:serviceaccount:ns",
            "system:serviceaccount::sa",
            "system:serviceaccount:ns:a:b",
        ] {
            assert_eq!(ServiceAccountRef::from_username(bad), None, "{bad}");
        }
    }
}

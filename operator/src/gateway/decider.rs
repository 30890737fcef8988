//! Who decides a tool call for an enforcement point (the MCP gateway, the Envoy ext_authz
//! service): the [`Decider`] trait and its two implementations.
//!
//! * [`RemoteDecider`] asks a decision service (`POST /v1/decisions`) over HTTP, under a deadline.
//!   Unreachable, slow past the deadline, a 5xx, credentials the service refuses or an answer that
//!   does not parse all become [`Verdict::Unavailable`]: a deny with the distinct reason
//!   [`UNAVAILABLE`] (fail closed).
//! * [`LocalDecider`] decides in-process with an [`Engine`] and writes every decision to the same
//!   hash-chained [`AuditLog`] the decision service uses (and refuses the call when the log cannot
//!   take the record).
//!
//! Both also record the enforcement point's own refusals (malformed messages, hijacked sessions)
//! in the audit trail ([`Decider::record`]), commit actual usage after an allowed call
//! ([`Decider::commit_usage`]) and say which tools a principal may ever call
//! ([`Decider::permitted_tools`]), for filtering `tools/list`.

use std::{fmt, sync::Arc, time::Duration};

use axum::body::Bytes;
use chrono::Utc;
use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use overseer_policy::{
    audit::{AuditEvent, AuditInput, AuditLog, AuditMode, AuditResult},
    engine::Engine,
    limits,
    request::{ApprovalRef, Decision, DecisionRequest, Outcome, Principal, Reason},
};
use uuid::Uuid;

/// Reason code of a deny given because no decision could be obtained in time.
pub const UNAVAILABLE: &str = "decision_service_unavailable";
/// Reason code of a deny given because the audit log could not record the decision.
pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";
/// Audit path of the records an enforcement point writes for its own refusals.
pub const GATEWAY_AUDIT_PATH: &str = "overseer/gateway";
/// Largest decision-service answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The answer for one tool call.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The policy engine decided (allow, deny or require approval).
    Decided(Decision),
    /// The request was refused before any policy was consulted (it is invalid: arguments too
    /// large, a field too long...). The call must not proceed.
    Refused {
        /// Stable machine-readable code (e.g. `arguments_too_large`).
        code: String,
        /// What is wrong.
        message: String,
        /// The id the refusal was audited under, when it was.
        decision_id: Option<Uuid>,
    },
    /// No decision could be obtained (decision service unreachable, slow past the deadline,
    /// failing, or the audit log refused the record). The call must not proceed.
    Unavailable {
        /// [`UNAVAILABLE`] or [`AUDIT_UNAVAILABLE`].
        code: &'static str,
        /// What happened.
        message: String,
    },
}

impl Verdict {
    /// The effective outcome: anything but a decision is a deny.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Decided(d) => d.decision,
            Self::Refused { .. } | Self::Unavailable { .. } => Outcome::Deny,
        }
    }

    /// Whether the call may proceed.
    pub fn is_allowed(&self) -> bool {
        self.outcome() == Outcome::Allow
    }

    /// The decision id, when there is one.
    pub fn decision_id(&self) -> Option<Uuid> {
        match self {
            Self::Decided(d) => Some(d.decision_id),
            Self::Refused { decision_id, .. } => *decision_id,
            Self::Unavailable { .. } => None,
        }
    }

    /// The pending approval of a `require_approval` answer.
    pub fn approval(&self) -> Option<&ApprovalRef> {
        match self {
            Self::Decided(d) => d.approval.as_ref(),
            _ => None,
        }
    }

    /// The reasons as `(code, text)` pairs, enforced ones first; the text names the deciding
    /// policy and rule (`namespace/name#rule: message`).
    pub fn reasons(&self) -> Vec<(String, String)> {
        match self {
            Self::Decided(d) => d.reasons.iter().map(|r| (r.code_str(), r.text())).collect(),
            Self::Refused { code, message, .. } => vec![(code.clone(), message.clone())],
            Self::Unavailable { code, message } => vec![((*code).to_owned(), message.clone())],
        }
    }
}

/// Decides tool calls for an enforcement point. Object safe: share it as `Arc<dyn Decider>`.
pub trait Decider: Send + Sync + fmt::Debug {
    /// Decide `request` (its principal is the caller the enforcement point authenticated).
    /// Never fails: what cannot be decided is a [`Verdict::Refused`] or [`Verdict::Unavailable`].
    fn decide<'a>(&'a self, request: &'a DecisionRequest) -> BoxFuture<'a, Verdict>;

    /// Commit the actual usage of an allowed call (reserve → commit).
    fn commit_usage(
        &self,
        decision_id: Uuid,
        usage: limits::Usage,
    ) -> BoxFuture<'_, Result<(), String>>;

    /// Which of `tools` (listed by MCP server `server`) `principal` may ever be allowed to call
    /// (see [`overseer_policy::compile::CompiledPolicies::may_allow`]), in the order given.
    /// `Err` says why that cannot be told now; the list must then be withheld (fail closed).
    fn permitted_tools<'a>(
        &'a self,
        principal: &'a Principal,
        server: Option<&'a str>,
        tools: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, String>>;

    /// Record an enforcement point's own refusal (or failure) in the audit trail. An error means
    /// the record could not be queued; the caller must not proceed.
    fn record(&self, event: AuditEvent) -> BoxFuture<'_, Result<(), String>>;
}

/// The audit summary of a decision request.
pub fn audit_input(request: &DecisionRequest) -> AuditInput {
    AuditInput {
        principal: Some(request.principal.id.clone()),
        tool: Some(request.tool.clone()),
        server: request.server.clone(),
        target: request.target.clone(),
        arguments_digest: Some(request.arguments_digest()),
        user: request.user.clone(),
        tenant: request.tenant.clone(),
        session: request.session_id.clone(),
        trace_id: request.trace_id.clone(),
    }
}

/// An audit event for an enforcement point's own refusal, under [`GATEWAY_AUDIT_PATH`].
pub fn refusal_event(input: AuditInput, result: AuditResult, reason: String) -> AuditEvent {
    let mut event = AuditEvent::decision(
        Uuid::now_v7().to_string(),
        Utc::now(),
        input,
        result,
        AuditMode::Enforce,
    );
    event.path = GATEWAY_AUDIT_PATH;
    event.reasons = vec![reason];
    event
}

async fn append(audit: &AuditLog, event: AuditEvent) -> Result<(), String> {
    audit.append_async(event).await.map_err(|e| e.to_string())
}

/// Decides in-process with an [`Engine`]; every decision is written to `audit` first.
#[derive(Debug, Clone)]
pub struct LocalDecider {
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
}

impl LocalDecider {
    /// A decider over `engine`, auditing to `audit` (share both with a decision service to have
    /// one trail and one set of counters).
    pub fn new(engine: Arc<Engine>, audit: Arc<AuditLog>) -> Self {
        Self { engine, audit }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    async fn decide_inner(&self, request: &DecisionRequest) -> Verdict {
        let now = Utc::now();
        let revision = self.engine.current().revision().to_owned();
        match self.engine.decide(request, now) {
            Ok(decision) => {
                let mode = if decision.mode.would_have.is_some() {
                    AuditMode::Audit
                } else {
                    AuditMode::Enforce
                };
                let result = match decision.decision {
                    Outcome::Allow => AuditResult::Allow,
                    Outcome::Deny => AuditResult::Deny,
                    Outcome::RequireApproval => AuditResult::RequireApproval,
                };
                let mut event = AuditEvent::decision(
                    decision.decision_id.to_string(),
                    now,
                    audit_input(request),
                    result,
                    mode,
                );
                event.reasons = decision.reasons.iter().map(Reason::text).collect();
                event.policy_revision = Some(revision);
                let verdict = Verdict::Decided(decision);
                match append(&self.audit, event).await {
                    Ok(()) => verdict,
                    Err(e) => audit_unavailable(&e),
                }
            }
            Err(e) => {
                let mut event = refusal_event(
                    audit_input(request),
                    AuditResult::Malformed,
                    format!("{}: {e}", e.code()),
                );
                event.path = overseer_policy::audit::DECISION_PATH;
                event.policy_revision = Some(revision);
                let id = Uuid::parse_str(&event.decision_id).ok();
                match append(&self.audit, event).await {
                    Ok(()) => Verdict::Refused {
                        code: e.code().to_owned(),
                        message: e.to_string(),
                        decision_id: id,
                    },
                    Err(m) => audit_unavailable(&m),
                }
            }
        }
    }
}

fn audit_unavailable(message: &str) -> Verdict {
    tracing::error!(error = %message, "audit log refused a record; failing closed");
    Verdict::Unavailable {
        code: AUDIT_UNAVAILABLE,
        message: format!("the audit log cannot record this call ({message}); it must not proceed"),
    }
}

impl Decider for LocalDecider {
    fn decide<'a>(&'a self, request: &'a DecisionRequest) -> BoxFuture<'a, Verdict> {
        Box::pin(self.decide_inner(request))
    }

    fn commit_usage(
        &self,
        decision_id: Uuid,
        usage: limits::Usage,
    ) -> BoxFuture<'_, Result<(), String>> {
        let result = self
            .engine
            .commit_usage(decision_id, usage, Utc::now())
            .map(|_| ())
            .map_err(|e| e.to_string());
        Box::pin(async move { result })
    }

    fn permitted_tools<'a>(
        &'a self,
        principal: &'a Principal,
        server: Option<&'a str>,
        tools: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, String>> {
        let permitted = self.engine.current().permitted(principal, server, tools);
        Box::pin(async move { Ok(permitted) })
    }

    fn record(&self, event: AuditEvent) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(append(&self.audit, event))
    }
}

/// Asks a decision service over HTTP (`POST {url}/v1/decisions`), failing closed.
#[derive(Clone)]
pub struct RemoteDecider {
    base: String,
    authorization: Option<header::HeaderValue>,
    deadline: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
    policies: Option<Arc<Engine>>,
    audit: Option<Arc<AuditLog>>,
}

impl fmt::Debug for RemoteDecider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteDecider")
            .field("base", &self.base)
            .field("deadline", &self.deadline)
            .field("has_key", &self.authorization.is_some())
            .field("has_policies", &self.policies.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a [`RemoteDecider`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    /// The URL is not an `http://` URL.
    #[error(
        "decision service URL {0:?} must be an absolute http:// URL (e.g. http://127.0.0.1:8181)"
    )]
    Url(String),
    /// The API key cannot be sent in a header.
    #[error("the decision service API key contains characters not allowed in a header")]
    Key,
}

impl RemoteDecider {
    /// A decider asking the decision service at `url` (e.g. `http://127.0.0.1:8181`), presenting
    /// `api_key` (a `gateway` role key) as a bearer token, giving up after `deadline`.
    pub fn new(
        url: &str,
        api_key: Option<&str>,
        deadline: Duration,
    ) -> Result<Self, RemoteConfigError> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|_| RemoteConfigError::Url(url.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(RemoteConfigError::Url(url.to_owned()));
        }
        let authorization = api_key
            .map(|k| header::HeaderValue::from_str(&format!("Bearer {}", k.trim())))
            .transpose()
            .map_err(|_| RemoteConfigError::Key)?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(deadline));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            base,
            authorization,
            deadline,
            client,
            policies: None,
            audit: None,
        })
    }

    /// Answer [`Decider::permitted_tools`] from a local compile of the same policies the decision
    /// service serves, instead of asking it (`POST /v1/tools/permitted`) for every `tools/list`.
    pub fn with_policies(mut self, engine: Arc<Engine>) -> Self {
        self.policies = Some(engine);
        self
    }

    /// Write the enforcement point's own refusals to `audit` (decisions themselves are audited
    /// by the decision service).
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes), String> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| {
                    format!("cannot reach the decision service at {}: {e}", self.base)
                })?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("cannot read the decision service's answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the decision service at {} did not answer within {:?}",
                self.base, self.deadline
            )),
        }
    }

    async fn decide_inner(&self, request: &DecisionRequest) -> Verdict {
        let body = match serde_json::to_vec(request) {
            Ok(b) => b,
            Err(e) => {
                return Verdict::Refused {
                    code: "invalid_request".into(),
                    message: e.to_string(),
                    decision_id: None,
                };
            }
        };
        let unavailable = |message: String| {
            tracing::warn!(error = %message, "no decision; failing closed");
            Verdict::Unavailable {
                code: UNAVAILABLE,
                message,
            }
        };
        let (status, answer) = match self.post("/v1/decisions", body).await {
            Ok(a) => a,
            Err(e) => return unavailable(e),
        };
        if status == StatusCode::OK {
            return match serde_json::from_slice::<Decision>(&answer) {
                Ok(d) => Verdict::Decided(d),
                Err(e) => unavailable(format!("the decision service's answer does not parse: {e}")),
            };
        }
        let error: Option<crate::decision::ErrorBody> = serde_json::from_slice(&answer).ok();
        let text = error.as_ref().map_or_else(
            || String::from_utf8_lossy(&answer).chars().take(512).collect(),
            |e| format!("{}: {}", e.code, e.message),
        );
        match status {
            StatusCode::BAD_REQUEST
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::PAYLOAD_TOO_LARGE => {
                let (code, message) = error.map_or_else(
                    || ("invalid_request".to_owned(), text.clone()),
                    |e| (e.code, e.message),
                );
                Verdict::Refused {
                    code,
                    message,
                    decision_id: None,
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => unavailable(format!(
                "the decision service refused the gateway's credentials ({status}: {text})"
            )),
            _ => unavailable(format!("the decision service answered {status}: {text}")),
        }
    }
}

impl Decider for RemoteDecider {
    fn decide<'a>(&'a self, request: &'a DecisionRequest) -> BoxFuture<'a, Verdict> {
        Box::pin(self.decide_inner(request))
    }

    fn commit_usage(
        &self,
        decision_id: Uuid,
        usage: limits::Usage,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&crate::decision::UsageRequest {
                decision_id,
                tokens: usage.tokens,
                cost_micro_usd: usage.cost_micro_usd,
            })
            .map_err(|e| e.to_string())?;
            let (status, answer) = self.post("/v1/usage", body).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "the decision service refused the usage report ({status}): {}",
                    String::from_utf8_lossy(&answer)
                        .chars()
                        .take(512)
                        .collect::<String>()
                ))
            }
        })
    }

    fn permitted_tools<'a>(
        &'a self,
        principal: &'a Principal,
        server: Option<&'a str>,
        tools: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, String>> {
        if let Some(engine) = &self.policies {
            let permitted = engine.current().permitted(principal, server, tools);
            return Box::pin(async move { Ok(permitted) });
        }
        Box::pin(async move {
            let body = serde_json::to_vec(&crate::decision::PermittedToolsRequest {
                principal: principal.clone(),
                server: server.map(str::to_owned),
                tools,
            })
            .map_err(|e| e.to_string())?;
            let (status, answer) = self.post("/v1/tools/permitted", body).await?;
            if status != StatusCode::OK {
                return Err(format!(
                    "the decision service answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                        .chars()
                        .take(512)
                        .collect::<String>()
                ));
            }
            serde_json::from_slice::<crate::decision::PermittedToolsResponse>(&answer)
                .map(|r| r.tools)
                .map_err(|e| format!("the decision service's answer does not parse: {e}"))
        })
    }

    fn record(&self, event: AuditEvent) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match &self.audit {
                Some(audit) => append(audit, event).await,
                None => {
                    // Without a local audit log the refusal is at least logged.
                    tracing::warn!(
                        decision_id = %event.decision_id,
                        reasons = ?event.reasons,
                        principal = ?event.input.principal,
                        "gateway refusal (no local audit log configured)"
                    );
                    Ok(())
                }
            }
        })
    }
}

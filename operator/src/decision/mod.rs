//! The decision service: `POST /v1/decisions` answers allow / deny / require_approval for a tool
//! call, `POST /v1/usage` commits actual consumption, `/v1/approvals/{id}` shows and reviews
//! approvals. Every attempt — allowed, denied, sent for approval, malformed or unauthenticated — is
//! queued to the hash-chained audit log before the answer is returned, and written by its writer
//! thread within `linger` (1 ms) — a crash loses at most what is queued. Fail closed: when the
//! audit log cannot take the record (within [`AUDIT_QUEUE_WAIT`] when its queue is full), the
//! answer is a 503 and the call must not run.

pub mod approvals;
pub mod auth;
pub mod catalog;
pub mod files;
pub mod gate;
pub mod openapi;
pub mod standalone;
pub mod tokenreview;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::Utc;
use overseer_policy::{
    approvals::{ApprovalError, Verdict},
    audit::{AuditEvent, AuditInput, AuditLog, AuditMode, AuditResult},
    engine::{Engine, UsageError},
    limits,
    request::{Decision, DecisionRequest, ModeInfo, Outcome, Principal, Reason, ReasonCode},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::{
    approvals::{ApprovalLedger, LedgerError},
    auth::{AuthError, Authenticator, Caller},
    gate::{GateVerdict, IdentityRevoker, PrincipalGate, RevokeError},
    tokenreview::TokenReviewer,
};

/// Largest request body accepted, in bytes. Arguments themselves are capped lower by the policy
/// core; this bounds what is read at all.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Labels of the decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow`, `deny`, `require_approval`, `malformed`, `unauthenticated`, `forbidden` or
    /// `unavailable` (the caller's token could not be reviewed).
    pub result: &'static str,
    /// `enforce`, or `audit` when an Audit-mode policy would have answered differently.
    pub mode: &'static str,
}

/// Metrics of the decision service (prefix `overseer_decision`).
#[derive(Clone, Debug)]
pub struct DecisionMetrics {
    /// Decisions by result and mode.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Time from request received to answer, audit included.
    pub latency: Histogram,
    /// Records waiting in the audit queue.
    pub audit_queue_depth: Gauge,
}

impl DecisionMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            decisions: Family::default(),
            // 5 µs … ~80 ms.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                5e-6, 2.0, 15,
            )),
            audit_queue_depth: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("decision");
        sub.register(
            "decisions",
            "Decisions by result and mode",
            metrics.decisions.clone(),
        );
        sub.register(
            "duration_seconds",
            "Time to answer a decision request, audit included",
            metrics.latency.clone(),
        );
        sub.register(
            "audit_queue_depth",
            "Audit records waiting to be written",
            metrics.audit_queue_depth.clone(),
        );
        metrics
    }
}

/// Everything a request handler needs. Build it with [`DecisionService::new`] and the `with_*`
/// methods for the in-cluster pieces.
#[derive(Debug)]
pub struct DecisionService {
    /// The policy engine.
    pub engine: Arc<Engine>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Caller authentication by API key (checked first).
    pub auth: Authenticator,
    /// Metrics.
    pub metrics: DecisionMetrics,
    /// In a cluster: Kubernetes tokens, reviewed when no API key matched.
    tokens: Option<TokenReviewer>,
    /// In a cluster: denies revoked or expired identities before any policy is evaluated.
    gate: Option<Arc<dyn PrincipalGate>>,
    /// In a cluster: the kill switch behind `POST /v1/admin/identities/revoke`.
    revoker: Option<Arc<dyn IdentityRevoker>>,
    /// In a cluster: records at the API server that an approval was used, before the call it
    /// approved is allowed (see [`approvals`]).
    ledger: Option<Arc<dyn ApprovalLedger>>,
}

impl DecisionService {
    /// A service deciding with `engine`, auditing to `audit` and authenticating API keys with
    /// `auth` (the standalone server's set-up; add the cluster's pieces with the `with_*`
    /// methods).
    pub fn new(
        engine: Arc<Engine>,
        audit: Arc<AuditLog>,
        auth: Authenticator,
        metrics: DecisionMetrics,
    ) -> Self {
        Self {
            engine,
            audit,
            auth,
            metrics,
            tokens: None,
            gate: None,
            revoker: None,
            ledger: None,
        }
    }

    /// Also accept Kubernetes tokens (reviewed with TokenReview) from callers whose bearer
    /// credential is no known API key.
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.tokens = Some(reviewer);
        self
    }

    /// Consult `gate` before every decision.
    pub fn with_gate(mut self, gate: Arc<dyn PrincipalGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Serve `POST /v1/admin/identities/revoke` with `revoker`.
    pub fn with_revoker(mut self, revoker: Arc<dyn IdentityRevoker>) -> Self {
        self.revoker = Some(revoker);
        self
    }

    /// Confirm every use of an approval with `ledger` before answering allow. Required with
    /// [`approvals::KubeApprovals`] (pass the same object): without it, a use is only recorded
    /// in this replica.
    pub fn with_approval_ledger(mut self, ledger: Arc<dyn ApprovalLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Authenticate the `Authorization` header: an API key first, then (when configured) a
    /// Kubernetes token through TokenReview.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        tokenreview::authenticate(&self.auth, self.tokens.as_ref(), authorization(headers)).await
    }
}

/// A JSON error body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong and what to fix.
    pub message: String,
    /// The decision id the attempt was audited under, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
}

fn error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    decision_id: Option<Uuid>,
) -> Response {
    let body = ErrorBody {
        code: code.into(),
        message: message.into(),
        decision_id: decision_id.map(|d| d.to_string()),
    };
    (status, Json(body)).into_response()
}

/// The decision service's routes.
pub fn router(service: Arc<DecisionService>) -> Router {
    Router::new()
        .route("/v1/decisions", post(decide))
        .route("/v1/usage", post(commit_usage))
        .route("/v1/tools/permitted", post(permitted_tools))
        .route("/v1/approvals/{id}", get(get_approval))
        .route("/v1/approvals/{id}/review", post(review_approval))
        .route("/v1/admin/identities/revoke", post(revoke_identities))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /openapi.json",
                None,
            )
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here; see /openapi.json"),
                None,
            )
        })
        .with_state(service)
}

/// A path's approval id that cannot be read (not UTF-8 once percent-decoded).
fn bad_approval_id(rejection: &axum::extract::rejection::PathRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!(
            "the approval id in the path cannot be read: {}",
            rejection.body_text()
        ),
        None,
    )
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn read_body(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                None,
            )
        })
}

/// Read a bounded body and parse it as `T`; a body that is not one is a JSON 400 saying what it
/// should have been (`what`, e.g. "a valid review").
async fn read_json<T: serde::de::DeserializeOwned>(body: Body, what: &str) -> Result<T, Response> {
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body is not {what}: {e}"),
            None,
        )
    })
}

/// Longest a decision waits for room in a full audit queue before it is refused.
pub const AUDIT_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl DecisionService {
    /// Queue one record, waiting (without blocking the runtime) when the queue is full — at most
    /// [`AUDIT_QUEUE_WAIT`]: a writer stuck on a full or failing disk must not hold every caller
    /// forever. Never drops a record it answered for: an error means the record was not queued,
    /// and the attempt is refused (503).
    async fn audit(&self, event: AuditEvent) -> Result<(), String> {
        let result = match tokio::time::timeout(AUDIT_QUEUE_WAIT, self.audit.append_async(event))
            .await
        {
            Ok(queued) => queued.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the audit queue stayed full for {}s (is the audit file's disk full or failing?)",
                AUDIT_QUEUE_WAIT.as_secs()
            )),
        };
        self.metrics
            .audit_queue_depth
            .set(i64::try_from(self.audit.queue_depth()).unwrap_or(i64::MAX));
        result
    }

    /// Audit an attempt that was refused before any policy was consulted.
    async fn refuse(
        &self,
        id: Uuid,
        input: AuditInput,
        label: &'static str,
        reason: String,
    ) -> Result<(), String> {
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                result: label,
                mode: "enforce",
            })
            .inc();
        let result = if label == "malformed" {
            AuditResult::Malformed
        } else {
            AuditResult::Deny
        };
        let mut event = AuditEvent::decision(
            id.to_string(),
            Utc::now(),
            input,
            result,
            AuditMode::Enforce,
        );
        event.reasons = vec![reason];
        event.policy_revision = Some(self.engine.current().revision().to_owned());
        self.audit(event).await
    }
}

fn audit_input(request: &DecisionRequest) -> AuditInput {
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

/// What can be salvaged from a body that is not a valid request, for the audit record.
fn salvage_input(body: &[u8]) -> AuditInput {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str())
            .map(|s| s.chars().take(256).collect::<String>())
    };
    AuditInput {
        principal: text(value.pointer("/principal/id")),
        tool: text(value.get("tool")),
        ..AuditInput::default()
    }
}

fn audit_failed(message: String, id: Uuid) -> Response {
    tracing::error!(error = %message, "audit log refused a record; failing closed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        format!("the audit log cannot record this attempt ({message}); the call must not proceed"),
        Some(id),
    )
}

async fn decide(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = decide_inner(&service, &headers, body).await;
    service
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn decide_inner(service: &DecisionService, headers: &HeaderMap, body: Body) -> Response {
    let attempt = Uuid::now_v7();
    let caller = match service.authenticate(headers).await {
        Ok(caller) => caller,
        Err(e) => {
            let label = match e {
                AuthError::NoRole(_) => "forbidden",
                AuthError::Unavailable(_) => "unavailable",
                _ => "unauthenticated",
            };
            if let Err(m) = service
                .refuse(attempt, AuditInput::default(), label, e.to_string())
                .await
            {
                return audit_failed(m, attempt);
            }
            return unauthorized(e, Some(attempt));
        }
    };
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(response) => {
            if let Err(m) = service
                .refuse(
                    attempt,
                    AuditInput::default(),
                    "malformed",
                    "body too large".into(),
                )
                .await
            {
                return audit_failed(m, attempt);
            }
            return response;
        }
    };
    let mut request: DecisionRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("the body is not a valid decision request: {e}");
            if let Err(m) = service
                .refuse(attempt, salvage_input(&bytes), "malformed", message.clone())
                .await
            {
                return audit_failed(m, attempt);
            }
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                message,
                Some(attempt),
            );
        }
    };
    if let Err(message) = caller.check_principal(&mut request.principal) {
        if let Err(m) = service
            .refuse(attempt, audit_input(&request), "forbidden", message.clone())
            .await
        {
            return audit_failed(m, attempt);
        }
        return error(StatusCode::FORBIDDEN, "forbidden", message, Some(attempt));
    }
    if let Some(gate) = &service.gate {
        gate.complete(&caller, &mut request.principal);
        if let GateVerdict::Closed { reason, message } = gate.check(&caller, &request.principal) {
            return answer_gate_closed(service, &request, reason.rule(), message).await;
        }
    }
    let now = Utc::now();
    let decision = match service.engine.decide(&request, now) {
        Ok(d) => d,
        Err(e) => {
            let message = e.to_string();
            if let Err(m) = service
                .refuse(
                    attempt,
                    audit_input(&request),
                    "malformed",
                    format!("{}: {message}", e.code()),
                )
                .await
            {
                return audit_failed(m, attempt);
            }
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.code(),
                message,
                Some(attempt),
            );
        }
    };
    let decision = match &service.ledger {
        Some(ledger) => confirm_approval_use(service, ledger.as_ref(), decision, now).await,
        None => decision,
    };
    let mode = if decision.mode.would_have.is_some() {
        AuditMode::Audit
    } else {
        AuditMode::Enforce
    };
    service
        .metrics
        .decisions
        .get_or_create(&DecisionLabels {
            result: decision.decision.as_str(),
            mode: if mode == AuditMode::Audit {
                "audit"
            } else {
                "enforce"
            },
        })
        .inc();
    let mut event = AuditEvent::decision(
        decision.decision_id.to_string(),
        now,
        audit_input(&request),
        result_of(&decision),
        mode,
    );
    event.reasons = decision.reasons.iter().map(Reason::text).collect();
    event.policy_revision = Some(decision.policy_revision.clone());
    if let Err(m) = service.audit(event).await {
        return audit_failed(m, decision.decision_id);
    }
    (StatusCode::OK, Json(decision)).into_response()
}

/// A decision that used an approval is confirmed at the API server (single use across
/// replicas) before it is answered allow; when the confirmation fails the answer is deny, and the
/// estimate the allow reserved is given back.
async fn confirm_approval_use(
    service: &DecisionService,
    ledger: &dyn ApprovalLedger,
    mut decision: Decision,
    now: chrono::DateTime<Utc>,
) -> Decision {
    if decision.decision != Outcome::Allow {
        return decision;
    }
    let Some(id) = decision
        .reasons
        .iter()
        .find(|r| r.code == ReasonCode::ApprovalGranted)
        .and_then(|r| r.rule.clone())
    else {
        return decision;
    };
    let message = match ledger.confirm_consumed(&id).await {
        Ok(()) => return decision,
        Err(e @ LedgerError::AlreadyUsed(_)) => e.to_string(),
        Err(e @ LedgerError::Unavailable(_)) => {
            tracing::warn!(approval = %id, error = %e, "approval use could not be recorded; denying (fail closed)");
            e.to_string()
        }
    };
    // The allow reserved budget estimates; release them (rate-limit slots stay charged).
    let _ = service.engine.commit_usage(
        decision.decision_id,
        limits::Usage {
            tokens: Some(0),
            cost_micro_usd: Some(0),
        },
        now,
    );
    decision.decision = Outcome::Deny;
    decision.reasons = vec![Reason {
        policy: None,
        rule: Some(id),
        code: ReasonCode::Deny,
        message,
    }];
    decision.approval = None;
    decision.mode = ModeInfo::default();
    decision
}

/// Answer deny because the identity gate closed, and audit it.
async fn answer_gate_closed(
    service: &DecisionService,
    request: &DecisionRequest,
    rule: &'static str,
    message: String,
) -> Response {
    let now = Utc::now();
    let decision = Decision {
        decision: Outcome::Deny,
        reasons: vec![Reason {
            policy: None,
            rule: Some(rule.to_owned()),
            code: ReasonCode::Deny,
            message,
        }],
        decision_id: Uuid::now_v7(),
        policy_revision: service.engine.current().revision().to_owned(),
        mode: ModeInfo::default(),
        approval: None,
    };
    service
        .metrics
        .decisions
        .get_or_create(&DecisionLabels {
            result: "deny",
            mode: "enforce",
        })
        .inc();
    let mut event = AuditEvent::decision(
        decision.decision_id.to_string(),
        now,
        audit_input(request),
        AuditResult::Deny,
        AuditMode::Enforce,
    );
    event.reasons = decision
        .reasons
        .iter()
        .map(|r| format!("{}: {}", rule, r.message))
        .collect();
    event.policy_revision = Some(decision.policy_revision.clone());
    if let Err(m) = service.audit(event).await {
        return audit_failed(m, decision.decision_id);
    }
    (StatusCode::OK, Json(decision)).into_response()
}

fn result_of(decision: &Decision) -> AuditResult {
    match decision.decision {
        Outcome::Allow => AuditResult::Allow,
        Outcome::Deny => AuditResult::Deny,
        Outcome::RequireApproval => AuditResult::RequireApproval,
    }
}

/// The answer to a failed authentication: 401 (with `WWW-Authenticate: Bearer`) for missing or
/// refused credentials, 403 for a valid token without a role, 503 when the token could not be
/// reviewed.
fn unauthorized(e: AuthError, id: Option<Uuid>) -> Response {
    let status = match e {
        AuthError::NoRole(_) => StatusCode::FORBIDDEN,
        AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut response = error(status, e.code(), e.to_string(), id);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Body of `POST /v1/usage`: the actual consumption of an allowed call.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageRequest {
    /// The `decisionId` of the allow answer.
    pub decision_id: Uuid,
    /// Actual tokens; omitted keeps the estimate.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Actual cost in micro-USD; omitted keeps the estimate.
    #[serde(default)]
    pub cost_micro_usd: Option<u64>,
}

/// Answer of `POST /v1/usage`.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageResponse {
    /// Budget counters whose estimate was replaced by the actual.
    pub adjusted: usize,
    /// Counters left alone (their window rolled over, or the metric was not reported).
    pub unchanged: usize,
}

/// 403 for an approver on an endpoint of the enforcement points: "`<caller> <refusal>`".
fn refuse_approver(caller: &Caller, refusal: &str) -> Option<Response> {
    (caller.role == auth::Role::Approver).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} {refusal}", caller.name),
            None,
        )
    })
}

/// Most tool names one `POST /v1/tools/permitted` may ask about.
pub const MAX_PERMITTED_TOOLS: usize = 10_000;

/// Body of `POST /v1/tools/permitted`: which of these tools (listed by MCP server `server`) may
/// this principal ever call? An MCP gateway asks it to filter a `tools/list` answer.
#[derive(Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PermittedToolsRequest {
    /// Who would call them (an agent may only ask for itself).
    pub principal: Principal,
    /// The MCP server that listed them.
    #[serde(default)]
    pub server: Option<String>,
    /// The tool names to check (at most 10,000).
    pub tools: Vec<String>,
}

/// Answer of `POST /v1/tools/permitted`.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PermittedToolsResponse {
    /// The asked tools some call of which the principal may ever be allowed (or allowed after an
    /// approval), in the order asked. Every call is still decided on its own.
    pub tools: Vec<String>,
    /// The policy revision that answered.
    pub policy_revision: String,
}

async fn permitted_tools(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match service.authenticate(&headers).await {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    if let Some(refused) = refuse_approver(&caller, "is an approver; approvers do not call tools") {
        return refused;
    }
    let mut request: PermittedToolsRequest =
        match read_json(body, "a valid permitted-tools request").await {
            Ok(r) => r,
            Err(r) => return r,
        };
    if request.tools.len() > MAX_PERMITTED_TOOLS {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_tools",
            format!(
                "{} tools asked about; at most {MAX_PERMITTED_TOOLS} per request",
                request.tools.len()
            ),
            None,
        );
    }
    if let Err(message) = caller.check_principal(&mut request.principal) {
        return error(StatusCode::FORBIDDEN, "forbidden", message, None);
    }
    if let Some(gate) = &service.gate {
        gate.complete(&caller, &mut request.principal);
    }
    let compiled = service.engine.current();
    // A principal the identity gate shuts out may call nothing.
    let shut_out = service.gate.as_ref().is_some_and(|gate| {
        matches!(
            gate.check(&caller, &request.principal),
            GateVerdict::Closed { .. }
        )
    });
    let tools = if shut_out {
        Vec::new()
    } else {
        compiled.permitted(&request.principal, request.server.as_deref(), request.tools)
    };
    Json(PermittedToolsResponse {
        tools,
        policy_revision: compiled.revision().to_owned(),
    })
    .into_response()
}

async fn commit_usage(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match service.authenticate(&headers).await {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    if let Some(refused) = refuse_approver(&caller, "may not commit usage") {
        return refused;
    }
    let request: UsageRequest = match read_json(body, "a valid usage report").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let usage = limits::Usage {
        tokens: request.tokens,
        cost_micro_usd: request.cost_micro_usd,
    };
    // An agent commits only its own decisions' usage; an enforcement point commits anyone's.
    let own = caller.own_principal_id();
    match service
        .engine
        .commit_usage_as(request.decision_id, usage, Utc::now(), own.as_deref())
    {
        Ok(report) => Json(UsageResponse {
            adjusted: report.adjusted,
            unchanged: report.unchanged,
        })
        .into_response(),
        Err(e @ UsageError::UnknownDecision(_)) => error(
            StatusCode::NOT_FOUND,
            "unknown_decision",
            e.to_string(),
            None,
        ),
        Err(e @ UsageError::Commit(_)) => {
            error(StatusCode::CONFLICT, "commit_refused", e.to_string(), None)
        }
        Err(e @ UsageError::NotYours(_)) => {
            error(StatusCode::FORBIDDEN, "forbidden", e.to_string(), None)
        }
    }
}

async fn get_approval(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let caller = match service.authenticate(&headers).await {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return bad_approval_id(&e),
    };
    // An agent sees only its own approvals (and learns nothing about others': the same 404).
    let own = caller.own_principal_id();
    match service
        .engine
        .approval(&id, Utc::now())
        .filter(|a| own.as_deref().is_none_or(|p| p == a.principal_id))
    {
        Some(approval) => Json(approval).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("approval {id} not found"),
            None,
        ),
    }
}

/// Body of `POST /v1/approvals/{id}/review`.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewRequest {
    /// `Approve` or `Deny`.
    pub verdict: Verdict,
}

async fn review_approval(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Body,
) -> Response {
    let caller = match service.authenticate(&headers).await {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return bad_approval_id(&e),
    };
    if !caller.may_review() {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not review approvals (an approver or admin key is needed)",
                caller.name
            ),
            None,
        );
    }
    let request: ReviewRequest = match read_json(body, "a valid review").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match service.engine.review(
        &id,
        &caller.name,
        &caller.groups,
        request.verdict,
        Utc::now(),
    ) {
        Ok(approval) => {
            tracing::info!(approval = %id, reviewer = %caller.name, verdict = ?request.verdict, "approval reviewed");
            Json(approval).into_response()
        }
        Err(e) => {
            let status = match e {
                ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
                ApprovalError::SelfApproval { .. } | ApprovalError::NotAllowed { .. } => {
                    StatusCode::FORBIDDEN
                }
                ApprovalError::NotPending { .. } => StatusCode::CONFLICT,
                ApprovalError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, e.code(), e.to_string(), None)
        }
    }
}

/// Body of `POST /v1/admin/identities/revoke`: the kill switch for one agent.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeRequest {
    /// The agent (`EphemeralIdentity.spec.agent`) whose identities are all revoked.
    pub agent: String,
    /// Only in this namespace; all namespaces when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Answer of `POST /v1/admin/identities/revoke`.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokeResponse {
    /// The agent.
    pub agent: String,
    /// The namespace, when the revocation was limited to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Identities newly marked revoked (already revoked or finished ones are not counted). The
    /// identity controller deletes each one's token Secret first.
    pub revoked: usize,
}

/// Audit path of admin revocations.
pub const REVOKE_AUDIT_PATH: &str = "overseer/admin/identities/revoke";

/// Whether `s` is a DNS-1123 label (a namespace name).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

async fn revoke_identities(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match service.authenticate(&headers).await {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    if caller.role != auth::Role::Admin {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not revoke identities (the admin role is needed)",
                caller.name
            ),
            None,
        );
    }
    let request: RevokeRequest = match read_json(body, "a valid revocation request").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if request.agent.is_empty() || request.agent.len() > 253 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "agent must be 1 to 253 characters",
            None,
        );
    }
    if let Some(ns) = &request.namespace
        && !is_dns_label(ns)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("namespace {ns:?} is not a valid namespace name"),
            None,
        );
    }
    let Some(revoker) = &service.revoker else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "needs_cluster",
            RevokeError::NoCluster.to_string(),
            None,
        );
    };
    let id = Uuid::now_v7();
    let outcome = revoker
        .revoke_agent(request.namespace.as_deref(), &request.agent)
        .await;
    let mut event = AuditEvent::decision(
        id.to_string(),
        Utc::now(),
        AuditInput {
            principal: Some(request.agent.clone()),
            tool: Some("overseer:revoke-identities".into()),
            target: request.namespace.clone(),
            user: Some(caller.name.clone()),
            ..AuditInput::default()
        },
        if outcome.is_ok() {
            AuditResult::Allow
        } else {
            AuditResult::Deny
        },
        AuditMode::Enforce,
    );
    event.path = REVOKE_AUDIT_PATH;
    event.reasons = vec![match &outcome {
        Ok(n) => format!(
            "{} revoked {n} identities of agent {:?}",
            caller.name, request.agent
        ),
        Err(e) => format!(
            "{} asked to revoke agent {:?}: {e}",
            caller.name, request.agent
        ),
    }];
    if let Err(m) = service.audit(event).await {
        return audit_failed(m, id);
    }
    match outcome {
        Ok(revoked) => {
            tracing::warn!(agent = %request.agent, namespace = ?request.namespace, revoked, by = %caller.name, "identities revoked through the admin API");
            Json(RevokeResponse {
                agent: request.agent,
                namespace: request.namespace,
                revoked,
            })
            .into_response()
        }
        Err(e @ RevokeError::NoCluster) => error(
            StatusCode::NOT_IMPLEMENTED,
            "needs_cluster",
            e.to_string(),
            Some(id),
        ),
        Err(e @ RevokeError::Failed(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "revocation_failed",
            e.to_string(),
            Some(id),
        ),
    }
}

#[cfg(test)]
mod tests;

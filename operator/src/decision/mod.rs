//! The decision service: `POST /v1/decisions` answers allow / deny / require_approval for a tool
//! call, `POST /v1/usage` commits actual consumption, `/v1/approvals/{id}` shows and reviews
//! approvals. Every attempt — allowed, denied, sent for approval, malformed or unauthenticated — is
//! written to the hash-chained audit log before the answer is returned (fail closed: when the
//! audit log cannot take the record, the answer is a 503 and the call must not run).

pub mod auth;
pub mod catalog;
pub mod files;
pub mod openapi;
pub mod standalone;

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
    request::{Decision, DecisionRequest, Outcome},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::auth::{AuthError, Authenticator};

/// Largest request body accepted, in bytes. Arguments themselves are capped lower by the policy
/// core; this bounds what is read at all.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Labels of the decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow`, `deny`, `require_approval`, `malformed`, `unauthenticated` or `forbidden`.
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

/// Everything a request handler needs.
#[derive(Debug)]
pub struct DecisionService {
    /// The policy engine.
    pub engine: Arc<Engine>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Caller authentication.
    pub auth: Authenticator,
    /// Metrics.
    pub metrics: DecisionMetrics,
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
        .route("/v1/approvals/{id}", get(get_approval))
        .route("/v1/approvals/{id}/review", post(review_approval))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /openapi.json",
                None,
            )
        })
        .with_state(service)
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

impl DecisionService {
    /// Write one record, waiting (without blocking the runtime) when the queue is full. Never
    /// drops: an error means the record could not be queued at all.
    async fn audit(&self, event: AuditEvent) -> Result<(), String> {
        let result = self
            .audit
            .append_async(event)
            .await
            .map_err(|e| e.to_string());
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
    let caller = match service.auth.authenticate(authorization(headers)) {
        Ok(caller) => caller,
        Err(e) => {
            if let Err(m) = service
                .refuse(
                    attempt,
                    AuditInput::default(),
                    "unauthenticated",
                    e.to_string(),
                )
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
    let request: DecisionRequest = match serde_json::from_slice(&bytes) {
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
    if !caller.may_decide_for(&request.principal.id) {
        let message = format!(
            "{} may not ask for decisions on behalf of {:?}",
            caller.name, request.principal.id
        );
        if let Err(m) = service
            .refuse(attempt, audit_input(&request), "forbidden", message.clone())
            .await
        {
            return audit_failed(m, attempt);
        }
        return error(StatusCode::FORBIDDEN, "forbidden", message, Some(attempt));
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
    event.reasons = decision
        .reasons
        .iter()
        .map(|r| {
            let at = match (&r.policy, &r.rule) {
                (Some(p), Some(rule)) => format!("{p}#{rule}: "),
                (Some(p), None) => format!("{p}: "),
                _ => String::new(),
            };
            format!("{at}{}", r.message)
        })
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

fn unauthorized(e: AuthError, id: Option<Uuid>) -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        e.to_string(),
        id,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
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

async fn commit_usage(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match service.auth.authenticate(authorization(&headers)) {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    if caller.role == auth::Role::Approver {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} may not commit usage", caller.name),
            None,
        );
    }
    let request: UsageRequest = match read_json(body, "a valid usage report").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let usage = limits::Usage {
        tokens: request.tokens,
        cost_micro_usd: request.cost_micro_usd,
    };
    match service
        .engine
        .commit_usage(request.decision_id, usage, Utc::now())
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
    }
}

async fn get_approval(
    State(service): State<Arc<DecisionService>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = service.auth.authenticate(authorization(&headers)) {
        return unauthorized(e, None);
    }
    match service.engine.approval(&id, Utc::now()) {
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
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let caller = match service.auth.authenticate(authorization(&headers)) {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
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

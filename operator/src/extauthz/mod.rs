//! `overseer ext-authz`: an Envoy `envoy.service.auth.v3.Authorization` gRPC service, so Envoy,
//! Istio and MCP-aware gateways delegate the decision about every request to Overseer.
//!
//! For each `Check`:
//! 1. the agent is authenticated by the `Authorization: Bearer` header of the request Envoy asks
//!    about: an API key ([`crate::decision::auth`]), or (with `--token-review`) its Kubernetes
//!    ServiceAccount / `EphemeralIdentity` token, reviewed with TokenReview (503 when it cannot
//!    be: fail closed). An `agent` key names its principal, an agent's token makes its
//!    ServiceAccount the principal; a `gateway` or `admin` caller (a trusted proxy in front of
//!    Envoy) names it in `x-overseer-agent`;
//! 2. the request is classified ([`attributes`]): an MCP `tools/call` is decided as its tool with
//!    its arguments; other MCP requests that act are decided with the method as the tool; MCP
//!    messages that run nothing pass; other HTTP requests are decided as the tool
//!    `"<METHOD> <path>"`. Paths are normalized before they are matched against the MCP paths;
//!    on an MCP path only POST (decided from its body, which must be UTF-8 `application/json`
//!    with no colliding member names), GET and DELETE are accepted;
//! 3. the decider ([`crate::gateway::decider::Decider`], in-process or a remote decision
//!    service) answers and audits the decision; requests refused before
//!    any decision (unauthenticated, malformed, body missing) and the MCP messages that pass are
//!    audited here, into the same log when the decider runs in-process;
//! 4. the answer ([`answer`]): OK with `x-overseer-decision`, `x-overseer-decision-id` and
//!    `x-overseer-reasons` headers sent upstream (the agent's `Authorization` header is removed);
//!    or a denied response — 403 with a JSON-RPC error body carrying the reasons (and the approval
//!    id for `require_approval`), 401 for an unauthenticated agent, 400/405/413/415 for a
//!    request that cannot be decided, 503 when no decision could be had (fail closed).

pub mod answer;
pub mod attributes;
pub mod run;

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpStatusCode,
};
use overseer_policy::{
    audit::{AuditInput, AuditResult},
    request::{DecisionRequest, Outcome, Principal, PrincipalKind, Reason},
};
use serde_json::Value;

use self::{
    answer::{
        Denial, JSONRPC_APPROVAL_REQUIRED, JSONRPC_DENIED, JSONRPC_UNAUTHENTICATED,
        JSONRPC_UNAVAILABLE,
    },
    attributes::{Call, HttpAttributes, Refusal},
};
use crate::{
    decision::{
        auth::{AuthError, Authenticator, Caller, Role},
        tokenreview::{self, TokenReviewer},
    },
    gateway::decider::{Decider, Verdict, refusal_event},
};

/// Header a `gateway` or `admin` caller names the agent in.
pub const AGENT_ID_HEADER: &str = "x-overseer-agent";
/// `context_extensions` key naming the MCP server of a route.
pub const SERVER_EXTENSION: &str = "mcp_server";
/// `context_extensions` key naming the tenant of a route.
pub const TENANT_EXTENSION: &str = "tenant";
/// The MCP session header.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// How requests are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzConfig {
    /// Paths served by MCP servers (Streamable HTTP endpoints); a path below one counts too.
    pub mcp_paths: Vec<String>,
    /// The MCP server named in decisions when the route's `context_extensions` do not name one.
    pub default_server: Option<String>,
    /// A header naming the MCP server, read only when configured. It must be one Envoy sets
    /// itself (an agent could otherwise pick the server its policy is decided for).
    pub server_header: Option<String>,
    /// Largest body parsed, in bytes.
    pub max_body: usize,
    /// The Kubernetes namespace of the agents behind this Envoy (a sidecar's own namespace):
    /// namespaced `AgentPolicy` objects govern only principals of their namespace. Without it,
    /// only `ClusterAgentPolicy` objects govern API-key agents.
    pub agent_namespace: Option<String>,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        Self {
            mcp_paths: vec!["/mcp".into()],
            default_server: None,
            server_header: None,
            max_body: crate::decision::MAX_BODY_BYTES,
            agent_namespace: None,
        }
    }
}

/// The ext_authz service.
#[derive(Debug)]
pub struct ExtAuthz {
    decider: Arc<dyn Decider>,
    auth: Authenticator,
    tokens: Option<TokenReviewer>,
    config: ExtAuthzConfig,
}

/// A check that ended before a decision was asked for.
struct Refused {
    http_status: HttpStatusCode,
    grpc_code: tonic::Code,
    result: AuditResult,
    code: String,
    message: String,
    jsonrpc_code: i64,
}

impl ExtAuthz {
    /// A service asking `decider` (which also records what this service answers itself) and
    /// authenticating agents with `auth`.
    pub fn new(decider: Arc<dyn Decider>, auth: Authenticator, config: ExtAuthzConfig) -> Self {
        Self {
            decider,
            auth,
            tokens: None,
            config,
        }
    }

    /// Also accept Kubernetes ServiceAccount (and `EphemeralIdentity`) tokens, reviewed by
    /// `reviewer`, from callers whose bearer credential is no known API key. An agent's token
    /// makes its ServiceAccount the principal (`system:serviceaccount:NS:NAME`, with its
    /// namespace and serviceAccount); a token the reviewer maps to the `gateway` role names the
    /// agent in `x-overseer-agent`, as a gateway key does.
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.tokens = Some(reviewer);
        self
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    /// Answer one check (never fails: every problem is a denial).
    pub async fn check(&self, request: CheckRequest) -> CheckResponse {
        let Some(http) = HttpAttributes::from_check_request(request) else {
            return self
                .refuse(
                    AuditInput::default(),
                    false,
                    &Value::Null,
                    Refused {
                        http_status: HttpStatusCode::BadRequest,
                        grpc_code: tonic::Code::InvalidArgument,
                        result: AuditResult::Malformed,
                        code: "no_http_attributes".into(),
                        message: "the check request carries no HTTP request attributes".into(),
                        jsonrpc_code: -32600,
                    },
                )
                .await;
        };
        let mcp_path = attributes::is_mcp_path(&http.path, &self.config.mcp_paths);
        let mut input = AuditInput {
            session: http.header(SESSION_HEADER).map(clip),
            trace_id: trace_id(&http),
            ..AuditInput::default()
        };
        let principal = match self.principal(&http).await {
            Ok(p) => p,
            Err(refused) => return self.refuse(input, mcp_path, &Value::Null, refused).await,
        };
        input.principal = Some(principal.id.clone());
        let call = match attributes::classify(&http, &self.config.mcp_paths, self.config.max_body) {
            Ok(call) => call,
            Err((rpc_id, refusal)) => {
                let http_status = match refusal {
                    Refusal::TooLarge { .. } => HttpStatusCode::PayloadTooLarge,
                    Refusal::UnsupportedMediaType(_) => HttpStatusCode::UnsupportedMediaType,
                    Refusal::MethodNotAllowed(_) => HttpStatusCode::MethodNotAllowed,
                    _ => HttpStatusCode::BadRequest,
                };
                let refused = Refused {
                    http_status,
                    grpc_code: tonic::Code::InvalidArgument,
                    result: AuditResult::Malformed,
                    code: refusal.code().into(),
                    message: refusal.to_string(),
                    jsonrpc_code: refusal.jsonrpc_code(),
                };
                return self.refuse(input, true, &rpc_id, refused).await;
            }
        };
        let rpc_id = call.rpc_id();
        let (tool, arguments, target) = match call {
            Call::Tool {
                tool, arguments, ..
            } => (tool, arguments, None),
            Call::McpMethod { method, params, .. } => (method, params, None),
            Call::McpProtocol { method, .. } | Call::McpTransport { method } => {
                return self.pass(input, &principal.id, &method).await;
            }
            Call::Http { tool } => (
                tool,
                Default::default(),
                Some(http.host.clone()).filter(|h| !h.is_empty()),
            ),
        };
        let mcp = mcp_path;
        let request = DecisionRequest {
            principal,
            tool,
            server: if mcp { self.server(&http) } else { None },
            target,
            arguments,
            tenant: http.context_extensions.get(TENANT_EXTENSION).cloned(),
            session_id: input.session.clone(),
            trace_id: input.trace_id.clone(),
            ..DecisionRequest::default()
        };
        match self.decider.decide(&request).await {
            Verdict::Decided(decision) => {
                let reasons: Vec<String> = decision.reasons.iter().map(Reason::text).collect();
                let decision_id = decision.decision_id.to_string();
                match decision.decision {
                    Outcome::Allow => answer::allow(&decision_id, &request.principal.id, &reasons),
                    Outcome::Deny => Denial {
                        http_status: HttpStatusCode::Forbidden,
                        grpc_code: tonic::Code::PermissionDenied,
                        decision: "deny",
                        code: "denied".into(),
                        message: format!("Overseer denied {}: {}", request.tool, first(&reasons)),
                        jsonrpc_code: JSONRPC_DENIED,
                        decision_id: Some(decision_id),
                        reasons,
                        approval: None,
                    }
                    .into_response(mcp, &rpc_id),
                    Outcome::RequireApproval => {
                        let message = match &decision.approval {
                            Some(a) => format!(
                                "{} needs a human's approval: approval {} is pending until {}; retry the same call once it is approved",
                                request.tool,
                                a.id,
                                a.expires_at.to_rfc3339()
                            ),
                            None => format!("{} needs a human's approval", request.tool),
                        };
                        Denial {
                            http_status: HttpStatusCode::Forbidden,
                            grpc_code: tonic::Code::PermissionDenied,
                            decision: "require_approval",
                            code: "approval_required".into(),
                            message,
                            jsonrpc_code: JSONRPC_APPROVAL_REQUIRED,
                            decision_id: Some(decision_id),
                            reasons,
                            approval: decision.approval,
                        }
                        .into_response(mcp, &rpc_id)
                    }
                }
            }
            Verdict::Unavailable { code, message } => {
                // The decider could not decide or could not audit: fail closed. A remote decider
                // cannot have audited anything, so the denial is recorded here.
                tracing::warn!(error = %message, tool = %request.tool, "no decision could be had; denying (fail closed)");
                let refused = Refused {
                    http_status: HttpStatusCode::ServiceUnavailable,
                    grpc_code: tonic::Code::Unavailable,
                    result: AuditResult::Deny,
                    code: code.into(),
                    message: format!(
                        "denied because no decision could be had (fail closed): {message}"
                    ),
                    jsonrpc_code: JSONRPC_UNAVAILABLE,
                };
                input.tool = Some(request.tool.clone());
                input.server = request.server.clone();
                input.arguments_digest = Some(request.arguments_digest());
                self.refuse(input, mcp, &rpc_id, refused).await
            }
            Verdict::Refused {
                code,
                message,
                decision_id,
            } => Denial {
                // The decider audited the invalid request itself.
                http_status: HttpStatusCode::BadRequest,
                grpc_code: tonic::Code::InvalidArgument,
                decision: "deny",
                code: code.clone(),
                message: format!("the request cannot be decided: {message}"),
                jsonrpc_code: -32602,
                decision_id: decision_id.map(|d| d.to_string()),
                reasons: vec![format!("{code}: {message}")],
                approval: None,
            }
            .into_response(mcp, &rpc_id),
        }
    }

    /// Who the request is for, from the caller's credential: an API key first, then (with
    /// [`Self::with_token_review`]) a Kubernetes ServiceAccount / `EphemeralIdentity` token.
    async fn principal(&self, http: &HttpAttributes) -> Result<Principal, Refused> {
        let refused = |message: String, http_status| Refused {
            http_status,
            grpc_code: match http_status {
                HttpStatusCode::Unauthorized => tonic::Code::Unauthenticated,
                HttpStatusCode::ServiceUnavailable => tonic::Code::Unavailable,
                _ => tonic::Code::PermissionDenied,
            },
            result: AuditResult::Deny,
            code: match http_status {
                HttpStatusCode::Unauthorized => "unauthenticated".into(),
                HttpStatusCode::ServiceUnavailable => "authentication_unavailable".into(),
                _ => "forbidden".into(),
            },
            message,
            jsonrpc_code: if http_status == HttpStatusCode::ServiceUnavailable {
                JSONRPC_UNAVAILABLE
            } else {
                JSONRPC_UNAUTHENTICATED
            },
        };
        let authenticated = tokenreview::authenticate(
            &self.auth,
            self.tokens.as_ref(),
            http.header("authorization"),
        )
        .await;
        let caller: Caller = authenticated.map_err(|e| {
            let status = match e {
                // The token could not be reviewed: fail closed, and say it is not the agent's fault.
                AuthError::Unavailable(_) => HttpStatusCode::ServiceUnavailable,
                AuthError::NoRole(_) => HttpStatusCode::Forbidden,
                AuthError::Missing | AuthError::Unknown | AuthError::Rejected(_) => {
                    HttpStatusCode::Unauthorized
                }
            };
            refused(e.to_string(), status)
        })?;
        // An agent's own ServiceAccount token: the principal is that ServiceAccount.
        if caller.role == Role::Agent && caller.service_account.is_some() {
            let mut principal = Principal {
                kind: Some(PrincipalKind::ServiceAccount),
                ..Principal::default()
            };
            caller
                .check_principal(&mut principal)
                .map_err(|why| refused(why, HttpStatusCode::Forbidden))?;
            return Ok(principal);
        }
        let id = match caller.role {
            Role::Agent => caller.agent.clone().filter(|a| !a.is_empty()),
            Role::Gateway | Role::Admin => http
                .header(AGENT_ID_HEADER)
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
            Role::Approver => {
                return Err(refused(
                    format!("{} is an approver and may not call tools", caller.name),
                    HttpStatusCode::Forbidden,
                ));
            }
        };
        let Some(id) = id else {
            return Err(refused(
                format!(
                    "{} is a {:?} caller: name the agent in the {AGENT_ID_HEADER} header",
                    caller.name, caller.role
                ),
                HttpStatusCode::Unauthorized,
            ));
        };
        // The same check as the decision API's and the gateway's: an agent key's namespace is
        // its key's, else the configured one.
        let mut principal = Principal {
            id,
            kind: Some(PrincipalKind::Agent),
            ..Principal::default()
        };
        caller
            .check_principal(&mut principal)
            .map_err(|why| refused(why, HttpStatusCode::Forbidden))?;
        if principal.namespace.is_none() {
            principal.namespace.clone_from(&self.config.agent_namespace);
        }
        Ok(principal)
    }

    /// The MCP server: the route's `context_extensions`, then the configured header, then the
    /// default.
    fn server(&self, http: &HttpAttributes) -> Option<String> {
        http.context_extensions
            .get(SERVER_EXTENSION)
            .cloned()
            .or_else(|| {
                self.config
                    .server_header
                    .as_deref()
                    .and_then(|h| http.header(&h.to_ascii_lowercase()))
                    .map(str::to_owned)
            })
            .or_else(|| self.config.default_server.clone())
            .filter(|s| !s.is_empty())
    }

    /// Let an MCP message that runs nothing through, audited as allowed.
    async fn pass(&self, mut input: AuditInput, agent: &str, method: &str) -> CheckResponse {
        input.tool = Some(clip(method));
        let reason = format!("MCP {method} runs no tool: passed without a policy decision");
        let event = refusal_event(input, AuditResult::Allow, reason.clone());
        let id = event.decision_id.clone();
        if let Err(e) = self.decider.record(event).await {
            return audit_failed(&e, true);
        }
        answer::allow(&id, agent, &[reason])
    }

    /// Audit a check that ended before a decision, then deny it.
    async fn refuse(
        &self,
        input: AuditInput,
        mcp: bool,
        rpc_id: &Value,
        refused: Refused,
    ) -> CheckResponse {
        let reason = format!("{}: {}", refused.code, refused.message);
        let event = refusal_event(input, refused.result, reason.clone());
        let id = event.decision_id.clone();
        if let Err(e) = self.decider.record(event).await {
            return audit_failed(&e, mcp);
        }
        Denial {
            http_status: refused.http_status,
            grpc_code: refused.grpc_code,
            decision: "deny",
            code: refused.code,
            message: refused.message,
            jsonrpc_code: refused.jsonrpc_code,
            decision_id: Some(id),
            reasons: vec![reason],
            approval: None,
        }
        .into_response(mcp, rpc_id)
    }
}

fn audit_failed(error: &str, mcp: bool) -> CheckResponse {
    tracing::error!(%error, "audit log refused a record; failing closed");
    let message =
        format!("the audit log cannot record this attempt ({error}); the call must not proceed");
    Denial {
        http_status: HttpStatusCode::ServiceUnavailable,
        grpc_code: tonic::Code::Unavailable,
        decision: "deny",
        code: "audit_unavailable".into(),
        message: message.clone(),
        jsonrpc_code: JSONRPC_UNAVAILABLE,
        decision_id: None,
        reasons: vec![message],
        approval: None,
    }
    .into_response(mcp, &Value::Null)
}

fn first(reasons: &[String]) -> &str {
    reasons
        .first()
        .map_or("no policy allows it", String::as_str)
}

/// At most 256 characters of a header value, for audit records.
fn clip(value: &str) -> String {
    value.chars().take(256).collect()
}

/// The W3C trace id from `traceparent`, else the request id.
fn trace_id(http: &HttpAttributes) -> Option<String> {
    http.header("traceparent")
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .or_else(|| Some(clip(&http.id)).filter(|id| !id.is_empty()))
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            ExtAuthz::check(self, request.into_inner()).await,
        ))
    }
}

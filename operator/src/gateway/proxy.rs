//! The reverse proxy: MCP Streamable HTTP (protocol revision 2025-06-18) at `/mcp/{upstream}`.
//!
//! * `POST` carries one JSON-RPC message, as `application/json` in UTF-8 (any other type or
//!   charset is refused, 415: a server decoding another charset could read another message), and
//!   goes upstream as exactly `Content-Type: application/json`. A message with an object whose
//!   member names collide under case folding is refused (`-32600`, [`super::members`]). A
//!   `tools/call` is decided by the [`Decider`] before anything reaches the upstream; when it is
//!   allowed, the exact bytes that were decided are forwarded. `tools/list` results are filtered
//!   to the tools the agent may ever call; an answer that cannot be filtered is withheld. Other
//!   MCP methods, notifications and responses pass through; methods the gateway does not know
//!   are refused (`-32601`) and never forwarded. Batches are refused (removed in 2025-06-18).
//! * `GET` opens the server-initiated SSE stream, `DELETE` ends a session; both stream through.
//! * The caller authenticates with `Authorization: Bearer <credential>`: an `agent` API key, or
//!   (with a [`TokenReviewer`]) its Kubernetes ServiceAccount or `EphemeralIdentity` token,
//!   reviewed with the TokenReview API when the credential is no known API key. A ServiceAccount
//!   caller is the principal `system:serviceaccount:NS:NAME` of namespace `NS` and
//!   serviceAccount `NAME` ([`Caller::check_principal`]). A review that cannot be done fails
//!   closed (503). That header never reaches the upstream, which gets its own configured
//!   credential instead, and the token is never logged or audited.
//! * `Mcp-Session-Id`s the upstream issues are bound to the principal that initialized them:
//!   another agent presenting one is refused (403), an id the gateway never saw is unknown (404).
//!   A request may carry one, of visible ASCII (else 400); that one value is what is checked and
//!   what is forwarded.
//! * Every refusal is written to the audit trail; every decision is audited by the decider.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ops::Deref,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use overseer_policy::{
    audit::{AuditInput, AuditResult},
    limits,
    request::{DecisionRequest, Outcome, Principal, PrincipalKind, Usage},
};
use serde_json::{Map, Value, json};

use super::{
    config::Upstream,
    decider::{Decider, UNAVAILABLE, Verdict, audit_input, refusal_event},
    jsonrpc::{self, Message},
    metrics::{
        GatewayMetrics, MethodLabel, OutcomeLabel, RequestLabels, ServerLabels, UnknownServer,
    },
    routes::{Route, RouteTable},
    tls::UpstreamClient,
};
use crate::decision::{
    auth::{AuthError, Authenticator, Caller, Role},
    tokenreview::{self, TokenReviewer},
};

/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol version header.
pub const PROTOCOL_HEADER: &str = "mcp-protocol-version";
/// Default largest POST body accepted (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest upstream response buffered to filter `tools/list` or read usage (8 MiB).
const MAX_BUFFERED_RESPONSE: usize = 8 * 1024 * 1024;
/// Most sessions remembered; the oldest binding is forgotten past this (its agent re-initializes).
const MAX_SESSIONS: usize = 100_000;

/// Request headers passed on to the upstream (everything else, `Authorization` first of all,
/// stays at the gateway). The gateway sets `Content-Type` (POST: exactly `application/json`)
/// and `Mcp-Session-Id` (the one value it checked) itself. `Accept-Encoding` is not passed: the
/// answers it reads (`tools/list`, usage) must not be compressed. Neither is `Last-Event-ID`: a
/// resumed stream could replay a `tools/list` answer the gateway never sees to filter.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "accept",
    PROTOCOL_HEADER,
    "traceparent",
    "tracestate",
    "user-agent",
];

/// Response headers never passed back (hop-by-hop).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The gateway's state.
#[derive(Debug)]
pub struct Gateway {
    decider: Arc<dyn Decider>,
    auth: Authenticator,
    tokens: Option<TokenReviewer>,
    routes: RouteTable,
    namespace: Option<String>,
    max_body: usize,
    sessions: Mutex<Sessions>,
    client: UpstreamClient,
    metrics: Option<GatewayMetrics>,
}

#[derive(Debug, Default)]
struct Sessions {
    /// The principal that initialized each `(upstream, session)`.
    owners: HashMap<(String, String), Arc<Principal>>,
    order: VecDeque<(String, String)>,
}

impl Gateway {
    /// A gateway deciding with `decider`, authenticating agents with `auth` (API keys of role
    /// `agent`), proxying to `upstreams`; API-key agents get principal namespace `namespace`.
    /// Add [`Self::with_token_review`] to accept Kubernetes tokens too, and
    /// [`Self::with_routes`] for a table kept current elsewhere (`MCPServer` objects).
    pub fn new(
        decider: Arc<dyn Decider>,
        auth: Authenticator,
        upstreams: HashMap<String, Upstream>,
        namespace: Option<String>,
    ) -> Self {
        let client = super::tls::client(super::tls::system_roots());
        Self {
            decider,
            auth,
            tokens: None,
            routes: RouteTable::serving(upstreams),
            namespace,
            max_body: DEFAULT_MAX_BODY_BYTES,
            sessions: Mutex::new(Sessions::default()),
            client,
            metrics: None,
        }
    }

    /// Count requests and time upstreams in `metrics`.
    pub fn with_metrics(mut self, metrics: GatewayMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Accept POST bodies up to `bytes`.
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Serve the upstreams of `routes` (replacing those given to [`Self::new`]); whoever holds a
    /// clone of it may replace them while the gateway runs.
    pub fn with_routes(mut self, routes: RouteTable) -> Self {
        self.routes = routes;
        self
    }

    /// The upstream table this gateway serves.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Also accept Kubernetes ServiceAccount (and `EphemeralIdentity`) tokens, reviewed by
    /// `reviewer`, from callers whose bearer credential is no known API key.
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.tokens = Some(reviewer);
        self
    }

    /// Authenticate the `Authorization` header: an API key first, then (when configured) a
    /// Kubernetes token through TokenReview, as the decision service does.
    async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        tokenreview::authenticate(&self.auth, self.tokens.as_ref(), authorization).await
    }

    /// The principal an authenticated agent acts as: an API key's `agent` (in the configured
    /// namespace), or a ServiceAccount's `system:serviceaccount:NS:NAME` with its namespace and
    /// serviceAccount. `Err` says why the caller is not admitted.
    fn principal_of(&self, caller: &Caller) -> Result<Principal, String> {
        let not_an_agent = || {
            format!(
                "{} is not an agent; the gateway only admits agents (role: agent)",
                caller.name
            )
        };
        if caller.role != Role::Agent {
            return Err(not_an_agent());
        }
        let mut principal = match (&caller.service_account, caller.agent.as_deref()) {
            // Filled in (id, namespace, serviceAccount) by `check_principal`.
            (Some(_), _) => Principal {
                kind: Some(PrincipalKind::ServiceAccount),
                ..Principal::default()
            },
            // The namespace is the key's, else the gateway's `agentNamespace` (below).
            (None, Some(agent)) => Principal {
                id: agent.to_owned(),
                kind: Some(PrincipalKind::Agent),
                ..Principal::default()
            },
            (None, None) => return Err(not_an_agent()),
        };
        caller.check_principal(&mut principal)?;
        if principal.namespace.is_none() {
            principal.namespace.clone_from(&self.namespace);
        }
        Ok(principal)
    }

    fn bind_session(&self, upstream: &str, session: &str, principal: &Principal) {
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (upstream.to_owned(), session.to_owned());
        if s.owners.contains_key(&key) {
            return;
        }
        if s.order.len() >= MAX_SESSIONS
            && let Some(old) = s.order.pop_front()
        {
            s.owners.remove(&old);
        }
        s.owners.insert(key.clone(), Arc::new(principal.clone()));
        s.order.push_back(key);
    }

    fn session_owner(&self, upstream: &str, session: &str) -> Option<Arc<Principal>> {
        let s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        s.owners
            .get(&(upstream.to_owned(), session.to_owned()))
            .cloned()
    }

    fn forget_session(&self, upstream: &str, session: &str) {
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (upstream.to_owned(), session.to_owned());
        if s.owners.remove(&key).is_some() {
            s.order.retain(|k| k != &key);
        }
    }
}

/// The gateway's routes: `/mcp/{upstream}` and `/healthz`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp/{upstream}", any(handle))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            rpc_error(
                StatusCode::NOT_FOUND,
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                "no such endpoint; MCP servers are at /mcp/{name}",
                None,
            )
        })
        .with_state(gateway)
}

fn rpc_error(
    status: StatusCode,
    id: &Value,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Response {
    let body = jsonrpc::error_response(id, code, message, data).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Who and what one request is about, for audit records and refusals.
struct Audit<'a> {
    gateway: &'a Gateway,
    server: &'a str,
    principal: Option<&'a str>,
    session: Option<String>,
}

/// One request to a served upstream.
struct Call<'a> {
    audit: Audit<'a>,
    upstream: &'a Upstream,
}

impl<'a> Deref for Call<'a> {
    type Target = Audit<'a>;

    fn deref(&self) -> &Audit<'a> {
        &self.audit
    }
}

impl Audit<'_> {
    fn input(&self, tool: Option<&str>) -> AuditInput {
        AuditInput {
            principal: self.principal.map(str::to_owned),
            tool: tool.map(str::to_owned),
            server: Some(self.server.to_owned()),
            session: self.session.clone(),
            ..AuditInput::default()
        }
    }

    /// Audit a refusal and answer it (503 when the audit trail cannot take the record).
    async fn refuse(
        &self,
        status: StatusCode,
        id: &Value,
        code: i64,
        result: AuditResult,
        reason: &str,
        tool: Option<&str>,
    ) -> Response {
        let event = refusal_event(self.input(tool), result, format!("{status}: {reason}"));
        match self.gateway.decider.record(event).await {
            Ok(()) => rpc_error(status, id, code, reason, None),
            Err(e) => audit_failed(id, &e),
        }
    }
}

fn audit_failed(id: &Value, error: &str) -> Response {
    tracing::error!(%error, "audit log refused a gateway record; failing closed");
    rpc_error(
        StatusCode::SERVICE_UNAVAILABLE,
        id,
        jsonrpc::DENIED,
        &format!("the audit log cannot record this request ({error}); it was not forwarded"),
        None,
    )
}

async fn handle(
    State(gateway): State<Arc<Gateway>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(metrics) = gateway.metrics.clone() else {
        return handle_inner(&gateway, name, method, uri, headers, body).await;
    };
    let server = name.clone();
    let mut response = handle_inner(&gateway, name, method, uri, headers, body).await;
    let server = if response
        .extensions_mut()
        .remove::<UnknownServer>()
        .is_some()
    {
        "unknown".to_owned()
    } else {
        server
    };
    let method = response
        .extensions_mut()
        .remove::<MethodLabel>()
        .map_or("none", |m| m.0);
    let outcome = response
        .extensions_mut()
        .remove::<OutcomeLabel>()
        .map_or("refused", |o| o.0);
    metrics
        .requests
        .get_or_create(&RequestLabels {
            server,
            method,
            outcome,
        })
        .inc();
    response
}

/// Label `response` with an outcome (for the metrics).
fn outcome(mut response: Response, outcome: &'static str) -> Response {
    response.extensions_mut().insert(OutcomeLabel(outcome));
    response
}

/// Label `response` with a method (for the metrics).
fn method_labelled(mut response: Response, method: &'static str) -> Response {
    response.extensions_mut().insert(MethodLabel(method));
    response
}

/// The bounded `method` label of a JSON-RPC message.
fn method_label(message: &Message) -> &'static str {
    match message {
        Message::Response => "response",
        Message::Notification { .. } => "notification",
        Message::Request { method, .. } => jsonrpc::KNOWN_METHODS
            .iter()
            .find(|m| **m == method.as_str())
            .copied()
            .unwrap_or("other"),
    }
}

async fn handle_inner(
    gateway: &Arc<Gateway>,
    name: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // One lock-free load of the table; the route (an `Arc`) outlives a concurrent update.
    let Some(route) = gateway.routes.get(&name) else {
        let mut response = rpc_error(
            StatusCode::NOT_FOUND,
            &Value::Null,
            jsonrpc::INVALID_REQUEST,
            &format!("no upstream MCP server named {name:?} is configured"),
            None,
        );
        // Not a configured name: counted under `unknown` (names agents send are unbounded).
        response.extensions_mut().insert(UnknownServer);
        return response;
    };
    let session = session_of(&headers);
    let mut call = Audit {
        gateway,
        server: &name,
        principal: None,
        session: session.clone().ok().flatten(),
    };

    // Authenticate the agent (the credential itself is never logged, audited or forwarded).
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match gateway.authenticate(authorization).await {
        Ok(c) => c,
        Err(e) => return unauthenticated(&call, &e).await,
    };
    let principal = match gateway.principal_of(&caller) {
        Ok(p) => p,
        Err(why) => {
            return call
                .refuse(
                    StatusCode::FORBIDDEN,
                    &Value::Null,
                    jsonrpc::UNAUTHORIZED,
                    AuditResult::Deny,
                    &why,
                    None,
                )
                .await;
        }
    };
    call.principal = Some(&principal.id);
    let session = match session {
        Ok(session) => session,
        Err(why) => {
            return call
                .refuse(
                    StatusCode::BAD_REQUEST,
                    &Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    AuditResult::Malformed,
                    why,
                    None,
                )
                .await;
        }
    };
    // A configured server that is not served is refused, saying why, to authenticated agents
    // only (the reason may name a Secret).
    let upstream = match &route {
        Route::Serve(upstream) => upstream.as_ref(),
        Route::Unavailable(why) => {
            return call
                .refuse(
                    StatusCode::NOT_FOUND,
                    &Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    AuditResult::Deny,
                    &format!(
                        "mcp_server_unavailable: MCP server {name:?} is not served ({}): {}",
                        why.reason, why.message
                    ),
                    None,
                )
                .await;
        }
    };
    let call = Call {
        audit: call,
        upstream,
    };
    if !upstream.admits(&principal.id) {
        return call
            .refuse(
                StatusCode::FORBIDDEN,
                &Value::Null,
                jsonrpc::UNAUTHORIZED,
                AuditResult::Deny,
                &format!(
                    "agent {:?} may not reach MCP server {:?}",
                    principal.id, upstream.name
                ),
                None,
            )
            .await;
    }

    // A session belongs to the principal that initialized it.
    if let Some(sid) = &session {
        match gateway.session_owner(&upstream.name, sid) {
            Some(owner) if *owner == principal => {}
            Some(_) => {
                return call
                    .refuse(
                        StatusCode::FORBIDDEN,
                        &Value::Null,
                        jsonrpc::UNAUTHORIZED,
                        AuditResult::Deny,
                        "session_hijack: this Mcp-Session-Id belongs to another agent",
                        None,
                    )
                    .await;
            }
            None => {
                return call
                    .refuse(
                        StatusCode::NOT_FOUND,
                        &Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        AuditResult::Deny,
                        "unknown Mcp-Session-Id; start a new session with initialize",
                        None,
                    )
                    .await;
            }
        }
    }

    match method {
        Method::POST => post(&call, &principal, &uri, &headers, body).await,
        Method::GET | Method::DELETE => {
            if method == Method::GET && session.is_none() {
                // Without a session there is no stream to resume; the spec allows 405.
                return StatusCode::METHOD_NOT_ALLOWED.into_response();
            }
            let label = if method == Method::GET {
                "GET"
            } else {
                "DELETE"
            };
            let response = match forward(&call, method.clone(), &uri, &headers, Bytes::new()).await
            {
                Ok(response) => {
                    if method == Method::DELETE
                        && response.status().is_success()
                        && let Some(sid) = &session
                    {
                        gateway.forget_session(&upstream.name, sid);
                    }
                    stream_back(response)
                }
                Err(e) => e.into_response(&call, None).await,
            };
            method_labelled(response, label)
        }
        _ => {
            let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

/// The request's `Mcp-Session-Id`: none, or exactly one of visible ASCII (as MCP requires).
/// Another request could otherwise have one value checked and another one used upstream.
fn session_of(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let mut values = headers.get_all(SESSION_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => {
            let bytes = value.as_bytes();
            if bytes.is_empty() || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return Err("Mcp-Session-Id must be visible ASCII (0x21-0x7E) and not empty");
            }
            Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
        }
        (Some(_), Some(_)) => Err("a request carries at most one Mcp-Session-Id header"),
    }
}

/// Check a POST's `Content-Type` (exactly one, `application/json` in UTF-8).
fn check_content_type(headers: &HeaderMap) -> Result<(), String> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| "the Content-Type header is not visible ASCII".to_owned())?,
        ),
        (Some(_), Some(_)) => {
            return Err("a request carries at most one Content-Type header".into());
        }
    };
    jsonrpc::check_json_content_type(value)
}

/// Refuse a caller that did not authenticate: 401 (with `WWW-Authenticate: Bearer`) for a
/// missing, unknown, invalid or expired credential, 403 for a token whose user has no role, and
/// 503 when the token could not be reviewed (fail closed). Audited without the credential.
async fn unauthenticated(call: &Audit<'_>, error: &AuthError) -> Response {
    let status = match error {
        AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AuthError::NoRole(_) => StatusCode::FORBIDDEN,
        AuthError::Missing | AuthError::Unknown | AuthError::Rejected(_) => {
            StatusCode::UNAUTHORIZED
        }
    };
    let reason = match error {
        AuthError::NoRole(user) => format!(
            "{}: {user} is authenticated but is not a ServiceAccount; the gateway admits agents \
             only (an agent API key, or a ServiceAccount / EphemeralIdentity token)",
            error.code()
        ),
        _ => format!("{}: {error}", error.code()),
    };
    let mut response = call
        .refuse(
            status,
            &Value::Null,
            jsonrpc::UNAUTHORIZED,
            AuditResult::Deny,
            &reason,
            None,
        )
        .await;
    // An audit failure is answered 503 by `refuse`; only a real 401 asks for credentials.
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn post(
    call: &Call<'_>,
    principal: &Principal,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let gateway = call.gateway;
    // The body is read as UTF-8 JSON, and sent upstream as `application/json`: a charset the
    // upstream would decode differently is refused before anything is read.
    if let Err(why) = check_content_type(headers) {
        return call
            .refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                AuditResult::Malformed,
                &why,
                None,
            )
            .await;
    }
    let bytes = match axum::body::to_bytes(body, gateway.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return call
                .refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    AuditResult::Malformed,
                    &format!("the body is larger than {} bytes", gateway.max_body),
                    None,
                )
                .await;
        }
    };
    let message = match jsonrpc::classify(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return call
                .refuse(
                    StatusCode::BAD_REQUEST,
                    &e.id,
                    e.code,
                    AuditResult::Malformed,
                    &e.message,
                    None,
                )
                .await;
        }
    };
    let label = method_label(&message);
    let response = match message {
        Message::Response => pass(call, uri, headers, bytes, None).await,
        Message::Notification { method } if method.starts_with("notifications/") => {
            pass(call, uri, headers, bytes, None).await
        }
        Message::Notification { method } => {
            call.refuse(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                jsonrpc::METHOD_NOT_FOUND,
                AuditResult::Malformed,
                &format!("notification {method:?} is not an MCP notification; not forwarded"),
                None,
            )
            .await
        }
        Message::Request { id, method, .. }
            if !jsonrpc::KNOWN_METHODS.contains(&method.as_str()) =>
        {
            call.refuse(
                StatusCode::OK,
                &id,
                jsonrpc::METHOD_NOT_FOUND,
                AuditResult::Malformed,
                &format!("method {method:?} is not an MCP method the gateway lets through"),
                None,
            )
            .await
        }
        Message::Request { id, method, .. } if method == "initialize" => {
            if call.session.is_some() {
                return call
                    .refuse(
                        StatusCode::BAD_REQUEST,
                        &id,
                        jsonrpc::INVALID_REQUEST,
                        AuditResult::Malformed,
                        "initialize must not carry an Mcp-Session-Id",
                        None,
                    )
                    .await;
            }
            match forward(call, Method::POST, uri, headers, bytes).await {
                Ok(response) => {
                    if response.status().is_success()
                        && let Some(sid) = response
                            .headers()
                            .get(SESSION_HEADER)
                            .and_then(|v| v.to_str().ok())
                    {
                        gateway.bind_session(&call.upstream.name, sid, principal);
                    }
                    stream_back(response)
                }
                Err(e) => e.into_response(call, Some(&id)).await,
            }
        }
        Message::Request { id, method, .. } if method == "tools/list" => {
            list_tools(call, principal, uri, headers, bytes, id).await
        }
        Message::Request { id, method, params } if method == "tools/call" => {
            call_tool(call, principal, uri, headers, bytes, id, params).await
        }
        Message::Request { .. } => pass(call, uri, headers, bytes, None).await,
    };
    method_labelled(response, label)
}

async fn pass(
    call: &Call<'_>,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: Bytes,
    id: Option<&Value>,
) -> Response {
    match forward(call, Method::POST, uri, headers, bytes).await {
        Ok(response) => stream_back(response),
        Err(e) => e.into_response(call, id).await,
    }
}

fn trace_id(headers: &HeaderMap) -> Option<String> {
    // traceparent: version-traceid-parentid-flags
    let tp = headers.get("traceparent")?.to_str().ok()?;
    let id = tp.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

async fn call_tool(
    call: &Call<'_>,
    principal: &Principal,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: Bytes,
    id: Value,
    mut params: Map<String, Value>,
) -> Response {
    let gateway = call.gateway;
    let usage_estimate = jsonrpc::usage_in(&params).map(|(tokens, cost)| Usage {
        tokens: tokens.unwrap_or(0),
        cost_micro_usd: cost.unwrap_or(0),
    });
    // Moved out of the parsed message, not copied (the forwarded bytes are `bytes`).
    let arguments = params.remove("arguments");
    let Some(tool) = params.get("name").and_then(Value::as_str) else {
        return call
            .refuse(
                StatusCode::OK,
                &id,
                jsonrpc::INVALID_PARAMS,
                AuditResult::Malformed,
                "tools/call needs params.name (a string)",
                None,
            )
            .await;
    };
    let arguments = match arguments {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a,
        Some(_) => {
            return call
                .refuse(
                    StatusCode::OK,
                    &id,
                    jsonrpc::INVALID_PARAMS,
                    AuditResult::Malformed,
                    "tools/call params.arguments must be an object",
                    Some(tool),
                )
                .await;
        }
    };
    let request = DecisionRequest {
        principal: principal.clone(),
        tool: tool.to_owned(),
        server: Some(call.upstream.name.clone()),
        arguments,
        session_id: call.session.clone(),
        usage_estimate,
        trace_id: trace_id(headers),
        ..DecisionRequest::default()
    };
    let verdict = gateway.decider.decide(&request).await;
    if !verdict.is_allowed() {
        let label = match &verdict {
            Verdict::Decided(d) if d.decision == Outcome::RequireApproval => "approval_required",
            Verdict::Decided(_) => "denied",
            Verdict::Unavailable { .. } => "unavailable",
            Verdict::Refused { .. } => "refused",
        };
        return outcome(refusal(&id, &verdict), label);
    }
    let decision_id = verdict.decision_id();
    let response = match forward(call, Method::POST, uri, headers, bytes).await {
        Ok(r) => r,
        Err(e) => {
            let mut input = audit_input(&request);
            input.session = call.session.clone();
            return e.into_response_for(call, Some(&id), input).await;
        }
    };
    let Some(decision_id) = decision_id else {
        return stream_back(response);
    };
    // Read the actual usage from the result's `_meta` as it streams by, and commit it.
    let decider = Arc::clone(&gateway.decider);
    let sse = body_kind(response.headers()) == Ok(BodyKind::Sse);
    let (parts, incoming) = response.into_parts();
    let tap = Tap {
        inner: incoming,
        buf: Vec::new(),
        overflow: false,
        on_end: Some(Box::new(move |body: Vec<u8>| {
            // Most results report no usage: only a body naming the key is parsed.
            if memchr::memmem::find(&body, jsonrpc::USAGE_META_KEY.as_bytes()).is_none() {
                return;
            }
            let usage = jsonrpc::messages_in(&body, sse)
                .into_iter()
                .find(|m| m.get("id").is_some_and(|r| jsonrpc::same_id(&id, r)))
                .and_then(|m| {
                    m.get("result")
                        .and_then(Value::as_object)
                        .and_then(jsonrpc::usage_in)
                });
            if let Some((tokens, cost_micro_usd)) = usage {
                tokio::spawn(async move {
                    let usage = limits::Usage {
                        tokens,
                        cost_micro_usd,
                    };
                    if let Err(e) = decider.commit_usage(decision_id, usage).await {
                        tracing::debug!(%decision_id, error = %e, "usage not committed");
                    }
                });
            }
        })),
    };
    let mut response = Response::from_parts(parts, Body::new(tap));
    strip_hop_by_hop(response.headers_mut());
    outcome(response, "forwarded")
}

fn refusal(id: &Value, verdict: &Verdict) -> Response {
    let reasons = verdict.reasons();
    let text: Vec<String> = reasons
        .iter()
        .map(|(code, message)| format!("{code}: {message}"))
        .collect();
    let mut data = json!({
        "decision": verdict.outcome().as_str(),
        "reasons": reasons
            .iter()
            .map(|(code, message)| json!({"code": code, "message": message}))
            .collect::<Vec<_>>(),
    });
    if let Some(d) = verdict.decision_id() {
        data["decisionId"] = json!(d.to_string());
    }
    let (code, message) = match (verdict.outcome(), verdict.approval()) {
        (Outcome::RequireApproval, Some(approval)) => {
            data["approvalId"] = json!(approval.id);
            data["expiresAt"] = json!(approval.expires_at.to_rfc3339());
            (
                jsonrpc::APPROVAL_REQUIRED,
                format!(
                    "approval required: approval {} must be granted before this exact call is retried (expires {}); {}",
                    approval.id,
                    approval.expires_at.to_rfc3339(),
                    text.join("; ")
                ),
            )
        }
        _ => (jsonrpc::DENIED, format!("denied: {}", text.join("; "))),
    };
    rpc_error(StatusCode::OK, id, code, &message, Some(data))
}

async fn list_tools(
    call: &Call<'_>,
    principal: &Principal,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: Bytes,
    id: Value,
) -> Response {
    let gateway = call.gateway;
    let response = match forward(call, Method::POST, uri, headers, bytes).await {
        Ok(r) => r,
        Err(e) => return e.into_response(call, Some(&id)).await,
    };
    let server = call.upstream.name.as_str();
    if !response.status().is_success() {
        return stream_back(response);
    }
    let kind = body_kind(response.headers());
    let (mut parts, incoming) = response.into_parts();
    let body = match http_body_util::Limited::new(incoming, MAX_BUFFERED_RESPONSE)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return UpstreamError::Failed(format!("cannot read the tools/list answer: {e}"))
                .into_response(call, Some(&id))
                .await;
        }
    };
    // An answer the gateway cannot take apart, or that does not answer this request, is
    // withheld: passing it on would show tools the agent may not see.
    let parsed = kind.and_then(|kind| {
        let body = jsonrpc::ResponseBody::parse(&body, kind == BodyKind::Sse)?;
        tool_lists_of(&body, &id)?;
        Ok((kind, body))
    });
    let (kind, mut body) = match parsed {
        Ok(parsed) => parsed,
        Err(why) => {
            tracing::warn!(upstream = %server, %why, "tools/list answer withheld");
            let refused = call
                .refuse(
                    StatusCode::BAD_GATEWAY,
                    &id,
                    jsonrpc::INTERNAL_ERROR,
                    AuditResult::Deny,
                    &format!(
                        "tools_list_unfilterable: the tool list of MCP server {server:?} could not be filtered, so it is withheld: {why}"
                    ),
                    None,
                )
                .await;
            return outcome(refused, "upstream_error");
        }
    };
    // The names listed in the body: the answer to this request, and any other tool list in it
    // (all are filtered; a client might take any of them for the answer).
    let listed: Vec<String> = body
        .messages()
        .filter_map(|m| m.pointer("/result/tools").and_then(Value::as_array))
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let permitted: HashSet<String> = match gateway
        .decider
        .permitted_tools(principal, Some(server), listed)
        .await
    {
        Ok(p) => p.into_iter().collect(),
        // Which tools the agent may see cannot be told: withhold the list (fail closed).
        Err(e) => {
            let refused = call
                .refuse(
                    StatusCode::OK,
                    &id,
                    jsonrpc::DENIED,
                    AuditResult::Deny,
                    &format!(
                        "{UNAVAILABLE}: cannot tell which tools this agent may call, so the list is withheld: {e}"
                    ),
                    None,
                )
                .await;
            return outcome(refused, "unavailable");
        }
    };
    for message in body.messages_mut() {
        if let Some(tools) = message
            .get_mut("result")
            .and_then(|r| r.get_mut("tools"))
            .and_then(Value::as_array_mut)
        {
            // A tool without a name cannot be called, nor decided: it is not shown.
            tools.retain(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| permitted.contains(name))
            });
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    // The body is what was filtered, in UTF-8: say exactly that.
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match kind {
            BodyKind::Sse => "text/event-stream",
            BodyKind::Json => "application/json",
        }),
    );
    outcome(
        Response::from_parts(parts, Body::from(body.into_bytes())),
        "forwarded",
    )
}

/// Check that `body` answers request `id` and that every tool list in it can be filtered.
fn tool_lists_of(body: &jsonrpc::ResponseBody, id: &Value) -> Result<(), String> {
    if !body
        .messages()
        .any(|m| m.get("id").is_some_and(|r| jsonrpc::same_id(id, r)))
    {
        return Err(format!("no message in it answers request id {id}"));
    }
    for message in body.messages() {
        if let Some(result) = message.get("result")
            && let Some(tools) = result.get("tools")
            && !tools.is_array()
        {
            return Err("its result.tools is not an array".into());
        }
    }
    Ok(())
}

/// What an upstream's answer to a POST is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// `application/json`: one message.
    Json,
    /// `text/event-stream`: an SSE stream of messages.
    Sse,
}

/// The kind of an upstream's answer from its `Content-Type` (case-insensitive, parameters
/// allowed); `Err` for any other type, or a body the upstream encoded (compressed).
fn body_kind(headers: &HeaderMap) -> Result<BodyKind, String> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(format!("the answer is encoded ({encoding:?})"));
    }
    let value = headers
        .get(header::CONTENT_TYPE)
        .ok_or("the answer has no Content-Type")?
        .to_str()
        .map_err(|_| "the answer's Content-Type is not visible ASCII".to_owned())?;
    let media = jsonrpc::media_type(value)
        .map_err(|e| format!("the answer's Content-Type {value:?} cannot be parsed: {e}"))?;
    match media.essence_str() {
        "text/event-stream" => Ok(BodyKind::Sse),
        "application/json" => Ok(BodyKind::Json),
        other => Err(format!(
            "the answer's Content-Type {other:?} is neither JSON nor SSE"
        )),
    }
}

/// Why the upstream gave no response.
#[derive(Debug)]
enum UpstreamError {
    /// No response headers within the upstream's timeout.
    Timeout,
    /// Could not connect, or the exchange failed.
    Failed(String),
}

impl UpstreamError {
    async fn into_response(self, call: &Call<'_>, id: Option<&Value>) -> Response {
        let input = call.input(None);
        self.into_response_for(call, id, input).await
    }

    async fn into_response_for(
        self,
        call: &Call<'_>,
        id: Option<&Value>,
        input: AuditInput,
    ) -> Response {
        let (status, reason) = match self {
            Self::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "upstream_timeout: MCP server {:?} did not answer within {:?}",
                    call.upstream.name, call.upstream.timeout
                ),
            ),
            Self::Failed(e) => (
                StatusCode::BAD_GATEWAY,
                format!("upstream_error: MCP server {:?}: {e}", call.upstream.name),
            ),
        };
        tracing::warn!(upstream = %call.upstream.name, %reason, "upstream failed");
        let id = id.cloned().unwrap_or(Value::Null);
        // Recorded as a deny: the call did not run through the gateway.
        let event = refusal_event(input, AuditResult::Deny, format!("{status}: {reason}"));
        let response = match call.gateway.decider.record(event).await {
            Ok(()) => rpc_error(status, &id, jsonrpc::UPSTREAM_ERROR, &reason, None),
            Err(e) => audit_failed(&id, &e),
        };
        outcome(response, "upstream_error")
    }
}

async fn forward(
    call: &Call<'_>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<hyper::Response<Incoming>, UpstreamError> {
    let upstream = call.upstream;
    let post = method == Method::POST;
    // The upstream's URI as configured (a cheap clone), with the agent's query when it has none.
    let mut builder = hyper::Request::builder().method(method);
    builder = match (uri.query(), upstream.uri.query()) {
        (Some(q), None) => builder.uri(format!("{}?{q}", upstream.uri)),
        _ => builder.uri(upstream.uri.clone()),
    };
    if let Some(h) = builder.headers_mut() {
        for name in FORWARDED_REQUEST_HEADERS {
            for value in headers.get_all(*name) {
                h.append(HeaderName::from_static(name), value.clone());
            }
        }
        // What the upstream decodes is what was decided: UTF-8 JSON.
        if post {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        // The one session id that was checked (visible ASCII, so always a header value).
        if let Some(session) = &call.session {
            let value = HeaderValue::from_str(session)
                .map_err(|e| UpstreamError::Failed(format!("session id: {e}")))?;
            h.insert(HeaderName::from_static(SESSION_HEADER), value);
        }
        if let Some((name, value)) = &upstream.credential {
            h.insert(name.clone(), value.clone());
        }
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| UpstreamError::Failed(e.to_string()))?;
    let started = std::time::Instant::now();
    // An upstream with its own CA has its own client; the rest share the system roots'.
    let client = upstream.client.as_ref().unwrap_or(&call.gateway.client);
    let answer = tokio::time::timeout(upstream.timeout, client.request(request)).await;
    if let Some(metrics) = &call.gateway.metrics {
        metrics
            .upstream_duration
            .get_or_create(&ServerLabels {
                server: upstream.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
    match answer {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(UpstreamError::Failed(format!("cannot reach it: {e}"))),
        Err(_) => Err(UpstreamError::Timeout),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

fn stream_back(response: hyper::Response<Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    outcome(Response::from_parts(parts, Body::new(body)), "forwarded")
}

type OnEnd = Box<dyn FnOnce(Vec<u8>) + Send>;

/// Passes an upstream body through unchanged while keeping a bounded copy, handed to `on_end`
/// when the body ends (not when it overflowed the bound).
struct Tap {
    inner: Incoming,
    buf: Vec<u8>,
    overflow: bool,
    on_end: Option<OnEnd>,
}

impl Tap {
    fn finish(&mut self) {
        if let Some(f) = self.on_end.take()
            && !self.overflow
        {
            f(std::mem::take(&mut self.buf));
        }
    }
}

impl hyper::body::Body for Tap {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.buf.len() + data.len() <= MAX_BUFFERED_RESPONSE {
                        this.buf.extend_from_slice(data);
                    } else {
                        this.overflow = true;
                    }
                }
                // The server may stop polling once the body says it ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Keeps one timer of tokio's time driver always pending, due every `period`, so that the
/// timeouts set on every call (an upstream's, a remote decision's) can be registered without
/// waking the driver. Tokio wakes its driver (a write to an eventfd, then an extra turn of the
/// event loop) whenever a timer is registered earlier than the driver's next wake-up — and with
/// no timer pending that is every timer, i.e. every call at low or moderate load. With this one
/// pending, a timeout at least `period` long is never earlier, and the wake-up is skipped; the
/// cost is one wake-up per `period`. `period` should be at most the shortest such timeout.
/// Runs until aborted.
pub fn keep_timer_armed(period: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    })
}

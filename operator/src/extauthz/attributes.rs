//! What Envoy sends: the HTTP attributes of a `CheckRequest`, and what Overseer makes of them.
//!
//! [`HttpAttributes::from_check_request`] takes the request apart (headers from either the
//! `headers` map or, with `encode_raw_headers`, the `header_map`; the body from `raw_body` with
//! `pack_as_bytes`, else `body`). [`classify`] then says what the request is:
//!
//! | request | [`Call`] | decided as |
//! | --- | --- | --- |
//! | `POST` on an MCP path, JSON-RPC `tools/call` | [`Call::Tool`] | the tool `params.name` with `params.arguments` |
//! | `POST` on an MCP path, another request that acts (`resources/read`, `prompts/get`, `resources/subscribe`, any unknown method) | [`Call::McpMethod`] | the tool named by the method (e.g. `resources/read`) with `params` as the arguments |
//! | `POST` on an MCP path: `initialize`, `ping`, the `*/list` methods, `logging/setLevel`, `completion/complete`, `notifications/*` and responses | [`Call::McpProtocol`] | not decided: they run nothing; passed for an authenticated agent and audited |
//! | `GET` / `DELETE` on an MCP path (open the SSE stream, end the session) | [`Call::McpTransport`] | not decided, like the above |
//! | any other method on an MCP path | a [`Refusal`] | denied (405): MCP's transport has no other |
//! | anything else | [`Call::Http`] | the tool `"<METHOD> <path>"` (path without the query), target the host |
//!
//! MCP tool names cannot contain `/` or spaces, so the names of the last two rows never collide
//! with a real tool. Requests that cannot be decided are a [`Refusal`].
//!
//! Whether a path is an MCP path is told after normalizing it ([`normalize_path`]: no query,
//! no `;` parameters, unreserved characters percent-decoded, dot segments resolved, `//`
//! collapsed, no trailing `/`, compared case-insensitively), so that `/MCP`, `/mcp;x`, `/mcp/` or
//! `/%6dcp` — which a server may well route to its MCP endpoint — are not decided as plain HTTP.
//! A POST on an MCP path must be `application/json` in UTF-8 and its body must have no object
//! whose member names collide under case folding ([`crate::gateway::members`]): a server could
//! otherwise read another message than the one decided.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde_json::{Map, Value};

use crate::gateway::{
    jsonrpc,
    members::{self, MemberError},
};

/// Header Envoy adds to the check request when it forwarded only part of the body
/// (`allow_partial_message`).
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// MCP methods that run nothing on the server: passed without a policy decision.
const PROTOCOL_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "logging/setLevel",
    "completion/complete",
];

/// The HTTP request Envoy is asking about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpAttributes {
    /// `x-request-id` (or Envoy's equivalent).
    pub id: String,
    /// `GET`, `POST`...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The `Host` / `:authority`.
    pub host: String,
    /// Lower-cased header names and their values (repeated headers joined by `,`).
    pub headers: HashMap<String, String>,
    /// The body Envoy forwarded (empty when it forwarded none).
    pub body: Vec<u8>,
    /// Per-route settings from Envoy's `check_settings.context_extensions`.
    pub context_extensions: HashMap<String, String>,
}

impl HttpAttributes {
    /// Take the HTTP attributes out of a `CheckRequest`; `None` when it carries no HTTP request.
    pub fn from_check_request(request: CheckRequest) -> Option<Self> {
        let attributes = request.attributes?;
        let http = attributes.request?.http?;
        let mut headers = http.headers;
        if let Some(map) = http.header_map {
            // `encode_raw_headers: true`: the values come as bytes and are not merged.
            for header in map.headers {
                let value = if header.raw_value.is_empty() {
                    header.value
                } else {
                    String::from_utf8_lossy(&header.raw_value).into_owned()
                };
                headers
                    .entry(header.key.to_ascii_lowercase())
                    .and_modify(|v| {
                        v.push(',');
                        v.push_str(&value);
                    })
                    .or_insert(value);
            }
        }
        let path = match http.path.split_once('?') {
            Some((path, _query)) => path.to_owned(),
            None => http.path,
        };
        let body = if http.raw_body.is_empty() {
            http.body.into_bytes()
        } else {
            http.raw_body
        };
        Some(Self {
            id: http.id,
            method: http.method,
            path,
            host: http.host,
            headers,
            body,
            context_extensions: attributes.context_extensions,
        })
    }

    /// A header's value (names are matched lower-cased).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Whether Envoy said it forwarded only part of the body.
    pub fn body_is_partial(&self) -> bool {
        self.header(PARTIAL_BODY_HEADER)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// What a request asks to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// An MCP `tools/call`.
    Tool {
        /// The JSON-RPC id, echoed in a deny body.
        rpc_id: Value,
        /// `params.name`.
        tool: String,
        /// `params.arguments` (empty when absent).
        arguments: Map<String, Value>,
    },
    /// Another MCP request that acts: decided with the method as the tool.
    McpMethod {
        /// The JSON-RPC id.
        rpc_id: Value,
        /// The method, used as the tool name.
        method: String,
        /// `params` (empty when absent), used as the arguments.
        params: Map<String, Value>,
    },
    /// An MCP message that runs nothing (see the module docs): not decided.
    McpProtocol {
        /// The JSON-RPC id (`null` for notifications and responses).
        rpc_id: Value,
        /// The method (`response` for a JSON-RPC response).
        method: String,
    },
    /// `GET` or `DELETE` on an MCP path: open the server's SSE stream or end the session.
    McpTransport {
        /// The HTTP method.
        method: String,
    },
    /// A request that is not MCP, decided as the tool `"<METHOD> <path>"`.
    Http {
        /// `"<METHOD> <path>"`.
        tool: String,
    },
}

impl Call {
    /// Whether it came over MCP (its errors are JSON-RPC errors).
    pub fn is_mcp(&self) -> bool {
        !matches!(self, Self::Http { .. })
    }

    /// The JSON-RPC id to echo (`null` when there is none).
    pub fn rpc_id(&self) -> Value {
        match self {
            Self::Tool { rpc_id, .. }
            | Self::McpMethod { rpc_id, .. }
            | Self::McpProtocol { rpc_id, .. } => rpc_id.clone(),
            Self::McpTransport { .. } | Self::Http { .. } => Value::Null,
        }
    }
}

/// Why a request cannot be decided. Each is denied and audited as malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A `POST` to an MCP path arrived without its body.
    #[error(
        "the MCP request reached Overseer without its body: enable `with_request_body` in Envoy's ext_authz filter (max_request_bytes at least the largest tool call)"
    )]
    MissingBody,
    /// Envoy forwarded only part of the body.
    #[error(
        "Envoy forwarded only part of the MCP request body: raise `with_request_body.max_request_bytes` (and leave allow_partial_message off)"
    )]
    PartialBody,
    /// The body is larger than Overseer reads.
    #[error("the MCP request body is {size} bytes; at most {max} are decided")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not JSON.
    #[error("the MCP request body is not JSON: {0}")]
    Parse(String),
    /// The body is JSON but not a JSON-RPC 2.0 request the gateway can decide.
    #[error("the MCP request is not a valid JSON-RPC 2.0 message: {0}")]
    InvalidRequest(String),
    /// A batch (JSON array); MCP's current revision has no batches.
    #[error(
        "JSON-RPC batches are not accepted (MCP 2025-06-18 removed them): send one message per request"
    )]
    Batch,
    /// `tools/call` params are not what MCP says.
    #[error("invalid tools/call params: {0}")]
    InvalidParams(String),
    /// A POST on an MCP path whose `Content-Type` is not `application/json` in UTF-8.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// An object of the body has two member names equal after case folding.
    #[error("the MCP request is refused: {0}")]
    CollidingMembers(String),
    /// A method other than POST, GET and DELETE on an MCP path.
    #[error(
        "{0} is not a method of MCP's Streamable HTTP transport: only POST, GET and DELETE reach an MCP path"
    )]
    MethodNotAllowed(String),
}

impl Refusal {
    /// The JSON-RPC error code for the refusal.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            Self::Parse(_) => -32700,
            Self::InvalidParams(_) => -32602,
            Self::MissingBody
            | Self::PartialBody
            | Self::TooLarge { .. }
            | Self::InvalidRequest(_)
            | Self::Batch
            | Self::UnsupportedMediaType(_)
            | Self::CollidingMembers(_)
            | Self::MethodNotAllowed(_) => -32600,
        }
    }

    /// A short, stable label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingBody => "missing_body",
            Self::PartialBody => "partial_body",
            Self::TooLarge { .. } => "body_too_large",
            Self::Parse(_) => "parse_error",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Batch => "batch_not_supported",
            Self::InvalidParams(_) => "invalid_params",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::CollidingMembers(_) => "colliding_members",
            Self::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

/// Whether `path` is one of `mcp_paths` (exactly, or below it), both normalized
/// ([`normalize_path`]).
pub fn is_mcp_path(path: &str, mcp_paths: &[String]) -> bool {
    let path = normalize_path(path);
    mcp_paths.iter().any(|p| {
        let p = normalize_path(p);
        p == "/"
            || path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// A path as MCP paths are compared: without the query or fragment; without the `;` parameters
/// of each segment; with percent-encoded unreserved characters (RFC 3986) and slashes decoded
/// (once: `%252F` stays `%252f`); `.` and `..` segments resolved and empty ones (`//`) dropped;
/// no trailing `/`; ASCII lower-cased (remaining percent-encodings too). Servers differ in which
/// of these they do; a path any of them may route to an MCP endpoint is matched as one.
pub fn normalize_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or_default();
        // A decoded `%2F` separates segments too.
        for segment in percent_decode_unreserved(raw).split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s.to_ascii_lowercase()),
            }
        }
    }
    format!("/{}", segments.join("/"))
}

/// `text` with `%XX` decoded where it encodes an unreserved character (`A-Z a-z 0-9 - . _ ~`)
/// or `/`; other escapes are kept.
fn percent_decode_unreserved(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/'))
        {
            out.push(char::from(b));
            i += 3;
            continue;
        }
        // Copy up to the next `%` (whole UTF-8 characters: `%` is ASCII).
        let next = text[i + 1..].find('%').map_or(text.len(), |n| i + 1 + n);
        out.push_str(&text[i..next]);
        i = next;
    }
    out
}

/// Say what a request asks to do (see the module docs), or why it cannot be decided.
/// `max_body` bounds the bodies parsed.
pub fn classify(
    http: &HttpAttributes,
    mcp_paths: &[String],
    max_body: usize,
) -> Result<Call, (Value, Refusal)> {
    if !is_mcp_path(&http.path, mcp_paths) {
        return Ok(Call::Http {
            tool: format!("{} {}", http.method, http.path),
        });
    }
    match http.method.as_str() {
        "GET" | "DELETE" => {
            return Ok(Call::McpTransport {
                method: http.method.clone(),
            });
        }
        // Decided from its body (a lower-cased method too: the safe side).
        m if m.eq_ignore_ascii_case("POST") => {}
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err((Value::Null, Refusal::MethodNotAllowed(format!("{shown:?}"))));
        }
    }
    // Read as UTF-8 JSON: a server honouring another charset could read another message.
    jsonrpc::check_json_content_type(http.header("content-type"))
        .map_err(|why| (Value::Null, Refusal::UnsupportedMediaType(why)))?;
    if http.body_is_partial() {
        return Err((Value::Null, Refusal::PartialBody));
    }
    if http.body.is_empty() {
        return Err((Value::Null, Refusal::MissingBody));
    }
    if http.body.len() > max_body {
        return Err((
            Value::Null,
            Refusal::TooLarge {
                size: http.body.len(),
                max: max_body,
            },
        ));
    }
    match members::check_member_names(&http.body) {
        Ok(()) => {}
        Err(MemberError::Syntax(e)) => return Err((Value::Null, Refusal::Parse(e))),
        Err(e @ MemberError::Collision(..)) => {
            return Err((Value::Null, Refusal::CollidingMembers(e.to_string())));
        }
    }
    let value: Value = serde_json::from_slice(&http.body)
        .map_err(|e| (Value::Null, Refusal::Parse(e.to_string())))?;
    let mut message = match value {
        Value::Object(map) => map,
        Value::Array(_) => return Err((Value::Null, Refusal::Batch)),
        other => {
            return Err((
                Value::Null,
                Refusal::InvalidRequest(format!("expected an object, got {}", kind(&other))),
            ));
        }
    };
    let rpc_id = match message.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    let invalid = |why: String| Err((rpc_id.clone(), Refusal::InvalidRequest(why)));
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("`jsonrpc` must be \"2.0\"".into());
    }
    if let Some(id) = message.get("id")
        && !matches!(id, Value::String(_) | Value::Number(_))
    {
        return invalid(format!(
            "`id` must be a string or a number, not {}",
            kind(id)
        ));
    }
    let method = match message.get("method") {
        Some(Value::String(m)) => m.clone(),
        Some(other) => return invalid(format!("`method` must be a string, not {}", kind(other))),
        None if message.contains_key("result") || message.contains_key("error") => {
            // A response to a request the server sent (sampling, elicitation, roots).
            return Ok(Call::McpProtocol {
                rpc_id,
                method: "response".into(),
            });
        }
        None => return invalid("no `method`".into()),
    };
    let params = match message.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(other) => return invalid(format!("`params` must be an object, not {}", kind(&other))),
    };
    // Notifications run nothing, but a `tools/call` (or any other method) sent without an id is
    // still decided: a server might run it anyway.
    if method.starts_with("notifications/") || PROTOCOL_METHODS.contains(&method.as_str()) {
        return Ok(Call::McpProtocol { rpc_id, method });
    }
    if method != "tools/call" {
        return Ok(Call::McpMethod {
            rpc_id,
            method,
            params,
        });
    }
    let mut params = params;
    let tool = match params.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        Some(Value::String(_)) => {
            return Err((rpc_id, Refusal::InvalidParams("`name` is empty".into())));
        }
        Some(other) => {
            return Err((
                rpc_id,
                Refusal::InvalidParams(format!("`name` must be a string, not {}", kind(&other))),
            ));
        }
        None => return Err((rpc_id, Refusal::InvalidParams("no `name`".into()))),
    };
    let arguments = match params.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a,
        Some(other) => {
            return Err((
                rpc_id,
                Refusal::InvalidParams(format!(
                    "`arguments` must be an object, not {}",
                    kind(&other)
                )),
            ));
        }
    };
    Ok(Call::Tool {
        rpc_id,
        tool,
        arguments,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::auth::v3::{
            AttributeContext,
            attribute_context::{HttpRequest, Request},
        },
    };
    use serde_json::json;

    use super::*;

    fn paths() -> Vec<String> {
        vec!["/mcp".into()]
    }

    fn post(body: &str) -> HttpAttributes {
        HttpAttributes {
            method: "POST".into(),
            path: "/mcp".into(),
            headers: HashMap::from([("content-type".into(), "application/json".into())]),
            body: body.as_bytes().to_vec(),
            ..HttpAttributes::default()
        }
    }

    fn check(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                ..AttributeContext::default()
            }),
        }
    }

    #[test]
    fn attributes_come_from_either_header_encoding_and_either_body_field() {
        let mut http = HttpRequest {
            method: "POST".into(),
            path: "/mcp/?session=1".into(),
            body: "text body".into(),
            ..HttpRequest::default()
        };
        http.headers
            .insert("authorization".into(), "Bearer k".into());
        let attrs = HttpAttributes::from_check_request(check(http)).expect("http");
        assert_eq!(attrs.path, "/mcp/");
        assert_eq!(attrs.header("authorization"), Some("Bearer k"));
        assert_eq!(attrs.body, b"text body");

        let http = HttpRequest {
            method: "POST".into(),
            path: "/mcp".into(),
            body: "ignored".into(),
            raw_body: b"raw".to_vec(),
            header_map: Some(HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: "X-A".into(),
                        value: String::new(),
                        raw_value: b"1".to_vec(),
                    },
                    HeaderValue {
                        key: "x-a".into(),
                        value: String::new(),
                        raw_value: b"2".to_vec(),
                    },
                ],
            }),
            ..HttpRequest::default()
        };
        let attrs = HttpAttributes::from_check_request(check(http)).expect("http");
        assert_eq!(attrs.body, b"raw");
        assert_eq!(attrs.header("x-a"), Some("1,2"));

        assert_eq!(
            HttpAttributes::from_check_request(CheckRequest { attributes: None }),
            None
        );
    }

    #[test]
    fn tools_call_names_the_tool_and_its_arguments() {
        let call = classify(
            &post(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"refund","arguments":{"amount":5}}}"#),
            &paths(),
            1024,
        )
        .expect("call");
        let Call::Tool {
            rpc_id,
            tool,
            arguments,
        } = call
        else {
            panic!("not a tool call: {call:?}")
        };
        assert_eq!(rpc_id, json!(7));
        assert_eq!(tool, "refund");
        assert_eq!(Value::Object(arguments), json!({"amount": 5}));
    }

    #[test]
    fn methods_are_classified() {
        for (body, expect) in [
            (
                r#"{"jsonrpc":"2.0","id":"a","method":"initialize","params":{}}"#,
                "protocol initialize",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                "protocol tools/list",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                "protocol notifications/initialized",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#,
                "tool x",
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
                "protocol response",
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///x"}}"#,
                "method resources/read",
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"frobnicate"}"#,
                "method frobnicate",
            ),
        ] {
            let got = match classify(&post(body), &paths(), 1024).expect(body) {
                Call::McpProtocol { method, .. } => format!("protocol {method}"),
                Call::McpMethod { method, .. } => format!("method {method}"),
                Call::Tool { tool, .. } => format!("tool {tool}"),
                other => format!("{other:?}"),
            };
            assert_eq!(got, expect, "{body}");
        }
    }

    #[test]
    fn bad_bodies_are_refused_with_their_jsonrpc_codes() {
        for (body, code, jsonrpc) in [
            ("", "missing_body", -32600),
            ("{not json", "parse_error", -32700),
            ("[]", "batch_not_supported", -32600),
            ("3", "invalid_request", -32600),
            (
                r#"{"id":1,"method":"tools/call"}"#,
                "invalid_request",
                -32600,
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, "invalid_request", -32600),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"tools/call"}"#,
                "invalid_request",
                -32600,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}"#,
                "invalid_request",
                -32600,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
                "invalid_params",
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
                "invalid_params",
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":"x"}}"#,
                "invalid_params",
                -32602,
            ),
        ] {
            let (_, refusal) = classify(&post(body), &paths(), 1024).expect_err(body);
            assert_eq!(refusal.code(), code, "{body}: {refusal}");
            assert_eq!(refusal.jsonrpc_code(), jsonrpc, "{body}");
        }
        let (_, refusal) = classify(&post(&"x".repeat(2000)), &paths(), 1024).expect_err("big");
        assert_eq!(refusal.code(), "body_too_large");
        let mut partial = post("{\"jsonrpc\":\"2.0\"");
        partial
            .headers
            .insert(PARTIAL_BODY_HEADER.into(), "true".into());
        let (_, refusal) = classify(&partial, &paths(), 1024).expect_err("partial");
        assert_eq!(refusal, Refusal::PartialBody);
        assert!(
            Refusal::MissingBody
                .to_string()
                .contains("with_request_body")
        );
    }

    #[test]
    fn the_jsonrpc_id_is_kept_for_refusals_after_parsing() {
        let (id, _) = classify(
            &post(r#"{"jsonrpc":"2.0","id":"req-9","method":"tools/call","params":{}}"#),
            &paths(),
            1024,
        )
        .expect_err("no name");
        assert_eq!(id, json!("req-9"));
    }

    #[test]
    fn other_paths_and_methods() {
        let http = HttpAttributes {
            method: "DELETE".into(),
            path: "/api/items/3".into(),
            ..HttpAttributes::default()
        };
        assert_eq!(
            classify(&http, &paths(), 1024),
            Ok(Call::Http {
                tool: "DELETE /api/items/3".into()
            })
        );
        let http = HttpAttributes {
            method: "GET".into(),
            path: "/mcp".into(),
            ..HttpAttributes::default()
        };
        assert_eq!(
            classify(&http, &paths(), 1024),
            Ok(Call::McpTransport {
                method: "GET".into()
            })
        );
        assert!(is_mcp_path("/mcp/x", &paths()));
        assert!(!is_mcp_path("/mcpx", &paths()));
        assert!(is_mcp_path("/anything", &["/".into()]));
    }

    #[test]
    fn mcp_paths_are_matched_after_normalizing() {
        for path in [
            "/mcp",
            "/MCP",
            "/Mcp/",
            "/mcp;x",
            "/mcp;jsessionid=1/",
            "/mcp/",
            "//mcp",
            "/%6dcp",
            "/%6Dcp",
            "/%4D%43%50",
            "/./mcp",
            "/x/../mcp",
            "/x%2F..%2Fmcp",
            "/x/%2e%2e/mcp",
            "/mcp?x=/api",
            "/mcp#frag",
            "/mcp/session/1",
            "/mcp//session",
        ] {
            assert!(is_mcp_path(path, &paths()), "{path}");
        }
        for path in [
            "/mcpx",
            "/mc",
            "/api/mcp",
            "/mcp/../api",
            "/mcp/%2e%2e/api",
            "/mcp%2F..%2Fapi",
            "/%2561cp",
            "/m%63p%00",
            "/mc%70x",
        ] {
            assert!(!is_mcp_path(path, &paths()), "{path}");
        }
        // Configured paths are normalized too.
        assert!(is_mcp_path("/tools/mcp", &["/Tools/MCP/".into()]));
        assert_eq!(normalize_path("/A//b/./c/../%7Ed;p?q"), "/a/b/~d");
        assert_eq!(normalize_path("/caf%C3%A9/%252F"), "/caf%c3%a9/%252f");
        assert_eq!(normalize_path(""), "/");
    }

    #[test]
    fn a_post_on_a_variant_of_an_mcp_path_is_decided_from_its_body() {
        for path in ["/MCP", "/mcp;x", "/mcp/", "/%6dcp"] {
            let mut http = post(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"refund","arguments":{}}}"#,
            );
            http.path = path.into();
            match classify(&http, &paths(), 1024) {
                Ok(Call::Tool { tool, .. }) => assert_eq!(tool, "refund", "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_post_get_and_delete_reach_an_mcp_path() {
        for method in [
            "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "FROB",
        ] {
            let http = HttpAttributes {
                method: method.into(),
                path: "/mcp".into(),
                ..HttpAttributes::default()
            };
            let (_, refusal) = classify(&http, &paths(), 1024).expect_err(method);
            assert_eq!(refusal.code(), "method_not_allowed", "{method}");
            assert!(refusal.to_string().contains(method), "{refusal}");
        }
        for method in ["GET", "DELETE"] {
            let http = HttpAttributes {
                method: method.into(),
                path: "/MCP/".into(),
                ..HttpAttributes::default()
            };
            assert_eq!(
                classify(&http, &paths(), 1024),
                Ok(Call::McpTransport {
                    method: method.into()
                })
            );
        }
        // Off MCP paths every method is decided as plain HTTP.
        let http = HttpAttributes {
            method: "PUT".into(),
            path: "/api/x".into(),
            ..HttpAttributes::default()
        };
        assert_eq!(
            classify(&http, &paths(), 1024),
            Ok(Call::Http {
                tool: "PUT /api/x".into()
            })
        );
    }

    #[test]
    fn a_post_must_be_utf8_json() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        for content_type in [
            None,
            Some("application/json; charset=utf-7"),
            Some("text/plain"),
            // Two Content-Type headers, joined by Envoy.
            Some("application/json,application/json; charset=utf-7"),
        ] {
            let mut http = post(body);
            http.headers.remove("content-type");
            if let Some(ct) = content_type {
                http.headers.insert("content-type".into(), ct.into());
            }
            let (_, refusal) = classify(&http, &paths(), 1024).expect_err("refused");
            assert_eq!(refusal.code(), "unsupported_media_type", "{content_type:?}");
            assert_eq!(refusal.jsonrpc_code(), -32600);
        }
        let mut http = post(body);
        http.headers.insert(
            "content-type".into(),
            "Application/JSON ; charset=\"UTF-8\"".into(),
        );
        assert!(classify(&http, &paths(), 1024).is_ok());
    }

    #[test]
    fn colliding_member_names_are_refused() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_all","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"x\",\"arguments\":{\"\u{17F}ql\":1,\"sql\":2}}}",
        ] {
            let (_, refusal) = classify(&post(body), &paths(), 1024).expect_err(body);
            assert_eq!(refusal.code(), "colliding_members", "{body}");
            assert_eq!(refusal.jsonrpc_code(), -32600);
        }
    }
}

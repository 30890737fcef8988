//! JSON-RPC 2.0 as MCP's Streamable HTTP transport carries it: classifying one POSTed message,
//! error objects, and reading/rewriting responses that arrive as JSON or as an SSE stream.

use serde_json::{Map, Value, json};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object (batches included: removed in MCP 2025-06-18).
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not let through the gateway.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// The gateway could not reach the upstream, or it failed.
pub const UPSTREAM_ERROR: i64 = -32603;
/// Server-defined: the call was denied by policy (or fail-closed).
pub const DENIED: i64 = -32001;
/// Server-defined: the call needs a human's approval; `data.approvalId` names it.
pub const APPROVAL_REQUIRED: i64 = -32002;
/// Server-defined: the caller is not authenticated, or may not use this upstream or session.
pub const UNAUTHORIZED: i64 = -32003;

/// The `_meta` key under which an agent reports a call's expected usage (request) and a server
/// its actual usage (result): `{"tokens": N, "costMicroUsd": N}`.
pub const USAGE_META_KEY: &str = "overseer.dev/usage";

/// Client → server methods of MCP (2025-06-18) the gateway lets through. Anything else is
/// refused with [`METHOD_NOT_FOUND`] without reaching the upstream: a method the gateway does not
/// understand could be a tool invocation it cannot decide.
pub const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
];

/// One POSTed message, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request (`method` and `id`).
    Request {
        /// Its id (string or number).
        id: Value,
        /// The method.
        method: String,
        /// The params (absent: empty object).
        params: Map<String, Value>,
    },
    /// A notification (`method`, no `id`).
    Notification {
        /// The method.
        method: String,
    },
    /// A response to a server-initiated request (`id` and `result` or `error`).
    Response,
}

/// Why a body is not one acceptable message: the JSON-RPC error code and message, and the id
/// to answer with (`null` when none could be read).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// JSON-RPC error code.
    pub code: i64,
    /// What is wrong.
    pub message: String,
    /// The request's id when it had a usable one.
    pub id: Value,
}

fn invalid(code: i64, message: impl Into<String>, id: Value) -> Invalid {
    Invalid {
        code,
        message: message.into(),
        id,
    }
}

/// Classify a POST body.
pub fn classify(body: &[u8]) -> Result<Message, Invalid> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(PARSE_ERROR, format!("parse error: {e}"), Value::Null))?;
    let mut obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(invalid(
                INVALID_REQUEST,
                "JSON-RPC batches are not supported: MCP removed batching in protocol revision 2025-06-18; send one message per POST",
                Value::Null,
            ));
        }
        _ => {
            return Err(invalid(
                INVALID_REQUEST,
                "a JSON-RPC message must be an object",
                Value::Null,
            ));
        }
    };
    let id = match obj.get("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => {
            return Err(invalid(
                INVALID_REQUEST,
                "id must be a string or a number (MCP forbids null ids)",
                Value::Null,
            ));
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
            id.unwrap_or(Value::Null),
        ));
    }
    // The message is owned: its method and params are moved out, not copied.
    match obj.remove("method") {
        Some(Value::String(method)) => {
            let params = match obj.remove("params") {
                None => Map::new(),
                Some(Value::Object(p)) => p,
                Some(_) => {
                    return Err(invalid(
                        INVALID_REQUEST,
                        "params must be an object",
                        id.unwrap_or(Value::Null),
                    ));
                }
            };
            Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method },
            })
        }
        Some(_) => Err(invalid(
            INVALID_REQUEST,
            "method must be a string",
            id.unwrap_or(Value::Null),
        )),
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => {
            Ok(Message::Response)
        }
        None => Err(invalid(
            INVALID_REQUEST,
            "not a JSON-RPC request, notification or response",
            id.unwrap_or(Value::Null),
        )),
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// Usage reported in `_meta[USAGE_META_KEY]` of `object` (request params or a result).
pub fn usage_in(object: &Map<String, Value>) -> Option<(Option<u64>, Option<u64>)> {
    let u = object.get("_meta")?.get(USAGE_META_KEY)?;
    let tokens = u.get("tokens").and_then(Value::as_u64);
    let cost = u.get("costMicroUsd").and_then(Value::as_u64);
    (tokens.is_some() || cost.is_some()).then_some((tokens, cost))
}

/// The JSON-RPC messages in a response body: the body itself when it is JSON, the `data` of
/// every event when it is an SSE stream.
pub fn messages_in(body: &[u8], sse: bool) -> Vec<Value> {
    if !sse {
        return serde_json::from_slice(body).ok().into_iter().collect();
    }
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|event| serde_json::from_str(&event_data(event)).ok())
        .collect()
}

fn event_data(event: &str) -> String {
    event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rewrite the response to request `id` in a body (JSON, or an SSE stream whose other events
/// and fields are kept as they are) with `rewrite`. Returns `None` when nothing was rewritten.
pub fn rewrite_response(
    body: &[u8],
    sse: bool,
    id: &Value,
    rewrite: impl Fn(&mut Value),
) -> Option<Vec<u8>> {
    if !sse {
        let mut v: Value = serde_json::from_slice(body).ok()?;
        if v.get("id") != Some(id) {
            return None;
        }
        rewrite(&mut v);
        return serde_json::to_vec(&v).ok();
    }
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for (i, event) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        let parsed: Option<Value> = serde_json::from_str(&event_data(event)).ok();
        match parsed {
            Some(mut v) if !changed && v.get("id") == Some(id) => {
                rewrite(&mut v);
                changed = true;
                let mut first = true;
                for line in event.lines() {
                    if line.starts_with("data:") {
                        if first {
                            out.push_str("data: ");
                            out.push_str(&v.to_string());
                            out.push('\n');
                            first = false;
                        }
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                if out.ends_with('\n') {
                    out.pop();
                }
            }
            _ => out.push_str(event),
        }
    }
    changed.then(|| out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#),
            Ok(Message::Request {
                id: json!(1),
                method: "tools/call".into(),
                params: json!({"name":"x"}).as_object().cloned().unwrap_or_default(),
            })
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Message::Notification {
                method: "notifications/initialized".into()
            })
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":"s1","result":{}}"#),
            Ok(Message::Response)
        );
    }

    #[test]
    fn refuses_bad_messages_with_the_right_codes() {
        for (body, code) in [
            (&b"{nope"[..], PARSE_ERROR),
            (
                b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]",
                INVALID_REQUEST,
            ),
            (b"42", INVALID_REQUEST),
            (
                b"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}",
                INVALID_REQUEST,
            ),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}",
                INVALID_REQUEST,
            ),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":7}",
                INVALID_REQUEST,
            ),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":[1]}",
                INVALID_REQUEST,
            ),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1}", INVALID_REQUEST),
        ] {
            let err = classify(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(err.code, code, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(
            classify(br#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#).map_err(|e| e.id),
            Err(json!(7))
        );
    }

    #[test]
    fn rewrites_the_matching_sse_event_and_keeps_the_rest() {
        let body = b"event: message\nid: e1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"b\"}]}}\n\n";
        let out = rewrite_response(body, true, &json!(3), |v| {
            v["result"]["tools"] = json!([{"name":"a"}]);
        })
        .expect("rewritten");
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(
            text.starts_with("event: message\nid: e1\ndata: {\"jsonrpc\""),
            "{text}"
        );
        let msgs = messages_in(&out, true);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1]["result"]["tools"], json!([{"name":"a"}]));
        assert!(rewrite_response(body, true, &json!(4), |_| {}).is_none());
        let json_body = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#;
        assert!(rewrite_response(json_body, false, &json!(3), |_| {}).is_some());
    }

    #[test]
    fn reads_usage_meta() {
        let params = json!({"_meta": {"overseer.dev/usage": {"tokens": 5}}});
        assert_eq!(
            usage_in(params.as_object().unwrap_or(&Map::new())),
            Some((Some(5), None))
        );
        assert_eq!(usage_in(&Map::new()), None);
    }
}

//! JSON-RPC 2.0 as MCP's Streamable HTTP transport carries it: classifying one POSTed message,
//! error objects, and reading/rewriting responses that arrive as JSON or as an SSE stream.

use serde_json::{Map, Value, json};

use super::members::{self, MemberError};

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
/// JSON-RPC's internal error (the same code as [`UPSTREAM_ERROR`]): e.g. an upstream's
/// `tools/list` answer the gateway could not filter.
pub const INTERNAL_ERROR: i64 = -32603;
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

/// Classify a POST body. A body with an object whose member names collide under case folding
/// is refused ([`INVALID_REQUEST`], see [`members`]) before anything is read from it.
pub fn classify(body: &[u8]) -> Result<Message, Invalid> {
    match members::check_member_names(body) {
        Ok(()) => {}
        Err(e @ MemberError::Syntax(_)) => {
            return Err(invalid(PARSE_ERROR, e.to_string(), Value::Null));
        }
        Err(e @ MemberError::Collision(..)) => {
            return Err(invalid(INVALID_REQUEST, e.to_string(), Value::Null));
        }
    }
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

/// Check a POST's `Content-Type` (`None` when it has none): only `application/json`, without a
/// charset or with charset UTF-8 (names and values case-insensitive, the charset possibly
/// quoted, whitespace around `;` tolerated as RFC 9110 allows), is read as the gateway reads it.
/// A server that decodes the body with another charset (the TypeScript SDK honours any charset
/// iconv-lite knows, UTF-7 included) could read a different message from the same bytes. `Err`
/// says why the type is refused.
pub fn check_json_content_type(value: Option<&str>) -> Result<(), String> {
    const WANT: &str = "MCP messages are POSTed as application/json (UTF-8)";
    let Some(value) = value else {
        return Err(format!("the request has no Content-Type; {WANT}"));
    };
    let shown: String = value.chars().take(128).collect();
    let mime = media_type(value)
        .map_err(|e| format!("Content-Type {shown:?} cannot be parsed ({e}); {WANT}"))?;
    if mime.essence_str() != "application/json" {
        return Err(format!("Content-Type {shown:?} is not JSON; {WANT}"));
    }
    for (name, charset) in mime.params() {
        if name == mime::CHARSET && !charset.as_str().eq_ignore_ascii_case("utf-8") {
            return Err(format!(
                "Content-Type {shown:?}: charset {:?} is not UTF-8; {WANT}",
                charset.as_str()
            ));
        }
    }
    Ok(())
}

/// Parse a `Content-Type` value, tolerating whitespace around `;` as RFC 9110 does (type,
/// subtype and parameter names lower-cased, quoted parameter values unquoted).
pub fn media_type(value: &str) -> Result<mime::Mime, mime::FromStrError> {
    without_ows(value).parse()
}

/// `value` without optional whitespace: trimmed, and without spaces and tabs around `;` (outside
/// quoted strings) or empty parameters, which RFC 9110 allows and the `mime` parser does not.
fn without_ows(value: &str) -> String {
    let is_ows = |c: char| c == ' ' || c == '\t';
    let mut out = String::with_capacity(value.len());
    let (mut quoted, mut escaped, mut after_semicolon) = (false, false, false);
    for c in value.trim_matches(is_ows).chars() {
        if quoted {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            ';' => {
                while out.ends_with(is_ows) {
                    out.pop();
                }
                if !out.ends_with(';') {
                    out.push(';');
                }
                after_semicolon = true;
            }
            c if is_ows(c) && after_semicolon => {}
            c => {
                after_semicolon = false;
                quoted = c == '"';
                out.push(c);
            }
        }
    }
    out
}

/// Whether a response's `id` answers a request's: equal strings, or numerically equal numbers
/// (`1.0` and `1`, as a JavaScript client compares them).
pub fn same_id(request: &Value, response: &Value) -> bool {
    match (request, response) {
        (Value::Number(a), Value::Number(b)) => {
            a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
        }
        (Value::String(a), Value::String(b)) => a == b,
        _ => false,
    }
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
        .filter_map(data_field)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of an SSE `data` field line (`data` alone is an empty one).
fn data_field(line: &str) -> Option<&str> {
    if line == "data" {
        return Some("");
    }
    let d = line.strip_prefix("data:")?;
    Some(d.strip_prefix(' ').unwrap_or(d))
}

/// A response body, JSON or an SSE stream, taken apart so that the messages in it can be
/// rewritten ([`Self::messages_mut`]) and the body put back together ([`Self::into_bytes`]):
/// SSE events without data, and the other fields of events with a message, are kept as they are.
#[derive(Debug)]
pub struct ResponseBody {
    sse: bool,
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    /// An SSE event without data (comments, `retry`), or the empty text after the last one.
    Raw(String),
    /// A JSON-RPC message: the SSE event's text (empty for a JSON body), and its data parsed.
    Message(String, Value),
}

impl ResponseBody {
    /// Take `body` apart. `Err` says why it cannot be: a JSON body that is not JSON, an SSE
    /// stream that is not UTF-8 or with an event whose data is not JSON, or a message with member
    /// names that collide under case folding (clients would disagree about what it says).
    pub fn parse(body: &[u8], sse: bool) -> Result<Self, String> {
        let parse = |data: &[u8]| -> Result<Value, String> {
            members::check_member_names(data).map_err(|e| e.to_string())?;
            serde_json::from_slice(data).map_err(|e| format!("parse error: {e}"))
        };
        if !sse {
            let message = parse(body)?;
            return Ok(Self {
                sse,
                parts: vec![Part::Message(String::new(), message)],
            });
        }
        let text =
            std::str::from_utf8(body).map_err(|e| format!("the stream is not UTF-8: {e}"))?;
        // Any of CRLF, LF and CR ends a line; a leading byte order mark is not part of the stream.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut parts = Vec::new();
        for event in text.split("\n\n") {
            let data = event_data(event);
            if data.trim().is_empty() {
                parts.push(Part::Raw(event.to_owned()));
            } else {
                let message =
                    parse(data.as_bytes()).map_err(|e| format!("an event's data: {e}"))?;
                parts.push(Part::Message(event.to_owned(), message));
            }
        }
        Ok(Self { sse, parts })
    }

    /// Every message in the body.
    pub fn messages(&self) -> impl Iterator<Item = &Value> {
        self.parts.iter().filter_map(|p| match p {
            Part::Message(_, m) => Some(m),
            Part::Raw(_) => None,
        })
    }

    /// Every message in the body, to rewrite.
    pub fn messages_mut(&mut self) -> impl Iterator<Item = &mut Value> {
        self.parts.iter_mut().filter_map(|p| match p {
            Part::Message(_, m) => Some(m),
            Part::Raw(_) => None,
        })
    }

    /// The body put back together: a JSON body is its message; in an SSE stream each event with
    /// a message has its data lines replaced by one `data:` line with the message.
    pub fn into_bytes(self) -> Vec<u8> {
        if !self.sse {
            return match self.parts.into_iter().next() {
                Some(Part::Message(_, m)) => m.to_string().into_bytes(),
                Some(Part::Raw(text)) => text.into_bytes(),
                None => Vec::new(),
            };
        }
        let mut out = String::new();
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push_str("\n\n");
            }
            match part {
                Part::Raw(text) => out.push_str(text),
                Part::Message(event, message) => {
                    let mut lines = Vec::new();
                    let mut data = None;
                    for line in event.lines() {
                        if data_field(line).is_none() {
                            lines.push(line.to_owned());
                        } else if data.is_none() {
                            data = Some(lines.len());
                            lines.push(format!("data: {message}"));
                        }
                    }
                    out.push_str(&lines.join("\n"));
                }
            }
        }
        out.into_bytes()
    }
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
    fn rewrites_sse_messages_and_keeps_the_rest() {
        let body = b"event: message\nid: e1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n: comment\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\ndata:\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"b\"}]}}\nid: e2\n\n";
        let mut parsed = ResponseBody::parse(body, true).expect("parses");
        assert_eq!(parsed.messages().count(), 2);
        for m in parsed.messages_mut() {
            if same_id(&json!(3), &m["id"]) {
                m["result"]["tools"] = json!([{"name":"a"}]);
            }
        }
        let out = parsed.into_bytes();
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(
            text.starts_with("event: message\nid: e1\ndata: {\"jsonrpc\""),
            "{text}"
        );
        assert!(text.contains("\n\n: comment\n\n"), "{text}");
        assert!(text.contains("\nid: e2\n\n"), "{text}");
        let msgs = messages_in(&out, true);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1]["result"]["tools"], json!([{"name":"a"}]));

        let mut json_body =
            ResponseBody::parse(br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#, false)
                .expect("parses");
        assert_eq!(json_body.messages_mut().count(), 1);
        assert_eq!(
            json_body.into_bytes(),
            br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#
        );
    }

    #[test]
    fn sse_lines_may_end_with_cr_and_the_stream_may_start_with_a_bom() {
        let body = "\u{feff}event: message\rdata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\r";
        let parsed = ResponseBody::parse(body.as_bytes(), true).expect("parses");
        assert_eq!(
            parsed.messages().collect::<Vec<_>>(),
            [&json!({"jsonrpc":"2.0","id":1,"result":{}})]
        );
    }

    #[test]
    fn bodies_that_cannot_be_taken_apart_are_errors() {
        for (body, sse) in [
            (&b"{not json"[..], false),
            (b"", false),
            (b"data: {not json\n\n", true),
            (b"data: {\"id\":1}\n\n\xff\xfe", true),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[]},\"Result\":{\"tools\":[{\"name\":\"x\"}]}}",
                false,
            ),
            (
                b"data: {\"id\":1,\"result\":{\"tools\":[],\"tools\":[{\"name\":\"x\"}]}}\n\n",
                true,
            ),
        ] {
            assert!(
                ResponseBody::parse(body, sse).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn ids_match_by_value() {
        assert!(same_id(&json!(1), &json!(1)));
        assert!(same_id(&json!(1.0), &json!(1)));
        assert!(same_id(&json!(1), &json!(1.0)));
        assert!(same_id(&json!(-2), &json!(-2.0)));
        assert!(same_id(&json!("a"), &json!("a")));
        assert!(!same_id(&json!(1), &json!(2)));
        assert!(!same_id(&json!(1), &json!("1")));
        assert!(!same_id(&json!("a"), &json!("A")));
        assert!(!same_id(&json!(1), &Value::Null));
    }

    #[test]
    fn only_utf8_json_content_types_are_accepted() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json ; charset=\"utf-8\"",
            "application/json\t;\tcharset=utf-8 ",
            "application/json;;charset=utf-8;",
            "application/json; charset=utf-8; profile=\"a;b\"",
        ] {
            assert_eq!(check_json_content_type(Some(ok)), Ok(()), "{ok}");
        }
        for bad in [
            None,
            Some("application/json; charset=utf-7"),
            Some("application/json; charset=\"UTF-7\""),
            Some("APPLICATION/JSON;CHARSET=UTF-16"),
            Some("application/json; charset=utf-8; charset=utf-7"),
            Some("application/json; charset = utf-7"),
            Some("application/json, application/json; charset=utf-7"),
            Some("text/plain; x=application/json"),
            Some("application/jsonx"),
            Some("application/vnd.api+json"),
            Some("text/event-stream"),
            Some(""),
            Some("application/json; charset=\"utf-8"),
        ] {
            assert!(check_json_content_type(bad).is_err(), "{bad:?}");
        }
        let why =
            check_json_content_type(Some("application/json; charset=utf-7")).expect_err("utf-7");
        assert!(why.contains("utf-7") && why.contains("not UTF-8"), "{why}");
    }

    #[test]
    fn colliding_member_names_are_invalid_requests() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_all","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"path":"a","PATH":"b"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
        ] {
            let err = classify(body.as_bytes()).expect_err(body);
            assert_eq!(err.code, INVALID_REQUEST, "{body}");
            assert!(err.message.contains("parsers disagree"), "{}", err.message);
        }
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

//! What Envoy gets back: a `CheckResponse` that lets the request through with Overseer's headers,
//! or denies it with a status, headers and a body (a JSON-RPC error for MCP requests).

use envoy_types::{
    ext_authz::v3::{
        CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
        pb::{CheckResponse, HeaderAppendAction, HttpStatusCode},
    },
    pb::google::rpc,
};
use overseer_policy::request::ApprovalRef;
use serde::Serialize;
use serde_json::{Value, json};

/// Header naming the answer: `allow`, `deny` or `require_approval`.
pub const DECISION_HEADER: &str = "x-overseer-decision";
/// Header carrying the decision id (the audit record's id).
pub const DECISION_ID_HEADER: &str = "x-overseer-decision-id";
/// Header carrying the reasons, `; `-separated.
pub const REASONS_HEADER: &str = "x-overseer-reasons";
/// Header carrying the pending approval's id, on a `require_approval` answer.
pub const APPROVAL_ID_HEADER: &str = "x-overseer-approval-id";
/// Header telling the upstream which agent the call was decided for.
pub const AGENT_HEADER: &str = "x-overseer-agent";

/// JSON-RPC error code of a call the policy denied.
pub const JSONRPC_DENIED: i64 = -32001;
/// JSON-RPC error code of a call that waits for a human's approval.
pub const JSONRPC_APPROVAL_REQUIRED: i64 = -32002;
/// JSON-RPC error code of a caller that is not authenticated (or not allowed to ask).
pub const JSONRPC_UNAUTHENTICATED: i64 = -32003;
/// JSON-RPC error code of a call denied because no decision could be had (fail closed).
pub const JSONRPC_UNAVAILABLE: i64 = -32004;

/// Longest value written into a reasons header; longer text is cut (the body has all of it).
const MAX_HEADER_VALUE: usize = 1024;

/// A header value Envoy accepts: visible ASCII and spaces only, at most [`MAX_HEADER_VALUE`]
/// bytes.
pub fn header_value(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if out.len() > MAX_HEADER_VALUE {
        out.truncate(MAX_HEADER_VALUE - 3);
        out.push_str("...");
    }
    out
}

/// Let the request through: the decision's headers go upstream (overwriting any the agent sent),
/// the agent's `Authorization` header does not, and the decision id goes back to the agent.
pub fn allow(decision_id: &str, agent: &str, reasons: &[String]) -> CheckResponse {
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    let mut ok = OkHttpResponseBuilder::new();
    ok.add_header(DECISION_HEADER, "allow", overwrite, false)
        .add_header(DECISION_ID_HEADER, decision_id, overwrite, false)
        .add_header(AGENT_HEADER, header_value(agent), overwrite, false)
        .add_header(
            REASONS_HEADER,
            header_value(&reasons.join("; ")),
            overwrite,
            false,
        )
        .remove_header("authorization")
        .add_response_header(DECISION_ID_HEADER, decision_id, overwrite, false);
    let mut response = CheckResponse::with_status(tonic::Status::ok("allowed by Overseer"));
    response.set_http_response(ok);
    response
}

/// Everything a denial says.
#[derive(Debug, Clone)]
pub struct Denial {
    /// HTTP status for the agent.
    pub http_status: HttpStatusCode,
    /// gRPC status code of the check (any non-OK code denies).
    pub grpc_code: tonic::Code,
    /// `deny` or `require_approval` (the `x-overseer-decision` header).
    pub decision: &'static str,
    /// A stable code (`denied`, `approval_required`, `unauthenticated`, `decision_unavailable`,
    /// or a refusal's code).
    pub code: String,
    /// One-line summary.
    pub message: String,
    /// The JSON-RPC error code, for MCP requests.
    pub jsonrpc_code: i64,
    /// The audit record's id, when the attempt was audited.
    pub decision_id: Option<String>,
    /// Every reason.
    pub reasons: Vec<String>,
    /// The pending approval.
    pub approval: Option<ApprovalRef>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Detail<'a> {
    decision: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision_id: Option<&'a str>,
    reasons: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<&'a ApprovalRef>,
}

impl Denial {
    /// The response body: a JSON-RPC error echoing `rpc_id` for an MCP request, otherwise
    /// `{message, decision, code, decisionId, reasons, approval?}`.
    pub fn body(&self, mcp: bool, rpc_id: &Value) -> String {
        let detail = Detail {
            decision: self.decision,
            code: &self.code,
            decision_id: self.decision_id.as_deref(),
            reasons: &self.reasons,
            approval: self.approval.as_ref(),
        };
        let value = if mcp {
            json!({
                "jsonrpc": "2.0",
                "id": rpc_id,
                "error": {"code": self.jsonrpc_code, "message": self.message, "data": detail},
            })
        } else {
            let mut value = serde_json::to_value(&detail).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("message".into(), Value::String(self.message.clone()));
            }
            value
        };
        value.to_string()
    }

    /// The `CheckResponse` that denies.
    pub fn into_response(self, mcp: bool, rpc_id: &Value) -> CheckResponse {
        let mut denied = DeniedHttpResponseBuilder::new();
        denied
            .set_http_status(self.http_status)
            .add_header("content-type", "application/json", None, false)
            .add_header(DECISION_HEADER, self.decision, None, false)
            .add_header(
                REASONS_HEADER,
                header_value(&self.reasons.join("; ")),
                None,
                false,
            );
        if let Some(id) = &self.decision_id {
            denied.add_header(DECISION_ID_HEADER, id.as_str(), None, false);
        }
        if let Some(approval) = &self.approval {
            denied.add_header(APPROVAL_ID_HEADER, header_value(&approval.id), None, false);
        }
        if self.http_status == HttpStatusCode::Unauthorized {
            denied.add_header("www-authenticate", "Bearer", None, false);
        }
        denied.set_body(self.body(mcp, rpc_id));
        let mut response = CheckResponse::new();
        response.status = Some(rpc::Status {
            code: self.grpc_code.into(),
            message: self.message.clone(),
            details: Vec::new(),
        });
        response.set_http_response(denied);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_visible_ascii_and_bounded() {
        assert_eq!(header_value("a\r\nb é"), "a??b ?");
        let long = header_value(&"x".repeat(5000));
        assert_eq!(long.len(), MAX_HEADER_VALUE);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn deny_bodies_are_jsonrpc_errors_for_mcp_and_json_otherwise() {
        let denial = Denial {
            http_status: HttpStatusCode::Forbidden,
            grpc_code: tonic::Code::PermissionDenied,
            decision: "deny",
            code: "denied".into(),
            message: "denied by policy".into(),
            jsonrpc_code: JSONRPC_DENIED,
            decision_id: Some("d-1".into()),
            reasons: vec!["p#r: no".into()],
            approval: None,
        };
        let mcp: Value = serde_json::from_str(&denial.body(true, &json!(4))).expect("json");
        assert_eq!(mcp["jsonrpc"], "2.0");
        assert_eq!(mcp["id"], 4);
        assert_eq!(mcp["error"]["code"], JSONRPC_DENIED);
        assert_eq!(mcp["error"]["data"]["reasons"][0], "p#r: no");
        assert_eq!(mcp["error"]["data"]["decisionId"], "d-1");
        let plain: Value = serde_json::from_str(&denial.body(false, &Value::Null)).expect("json");
        assert_eq!(plain["message"], "denied by policy");
        assert_eq!(plain["decision"], "deny");
        assert!(plain.get("jsonrpc").is_none());
    }
}

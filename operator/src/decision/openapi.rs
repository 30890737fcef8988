//! The OpenAPI 3 document of the decision service, generated from the Rust types that (de)serialize
//! the requests and answers, served at `/openapi.json` and committed as
//! `docs/openapi/decisions.json` (a test fails when the committed copy is stale).

use std::sync::OnceLock;

use axum::response::IntoResponse;
use overseer_policy::{
    approvals::Approval,
    request::{Decision, DecisionRequest},
};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Value, json};

use super::{
    ErrorBody, PermittedToolsRequest, PermittedToolsResponse, ReviewRequest, UsageRequest,
    UsageResponse,
};

fn schema_ref<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> Value {
    serde_json::to_value(generator.subschema_for::<T>()).unwrap_or(Value::Null)
}

/// Build the document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let decision_request = schema_ref::<DecisionRequest>(&mut generator);
    let decision = schema_ref::<Decision>(&mut generator);
    let usage_request = schema_ref::<UsageRequest>(&mut generator);
    let usage_response = schema_ref::<UsageResponse>(&mut generator);
    let permitted_request = schema_ref::<PermittedToolsRequest>(&mut generator);
    let permitted_response = schema_ref::<PermittedToolsResponse>(&mut generator);
    let review_request = schema_ref::<ReviewRequest>(&mut generator);
    let approval = schema_ref::<Approval>(&mut generator);
    let error = schema_ref::<ErrorBody>(&mut generator);
    let schemas: serde_json::Map<String, Value> =
        generator.take_definitions(true).into_iter().collect();
    let json_body = |schema: &Value| json!({"content": {"application/json": {"schema": schema}}});
    let err = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error}}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Overseer decision service",
            "version": "v1",
            "description": "Runtime authorization of AI agents' tool calls. Every attempt is recorded in the hash-chained audit log before it is answered."
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (standalone) or a ServiceAccount token (in a cluster)."}}
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/decisions": {"post": {
                "operationId": "decide",
                "summary": "May this principal call this tool, on this target, with these arguments, now?",
                "requestBody": {"required": true, "content": {"application/json": {"schema": decision_request}}},
                "responses": {
                    "200": {"description": "The decision (allow, deny or require_approval) with its reasons.", "content": json_body(&decision)["content"]},
                    "400": err("The body is not a valid decision request (malformed JSON, unknown fields, missing principal)."),
                    "401": err("No or unknown credentials."),
                    "403": err("The caller may not ask on behalf of this principal."),
                    "413": err("The body is too large."),
                    "422": err("A field is out of bounds (oversized arguments, empty principal id...)."),
                    "503": err("The audit log cannot record the attempt: the call must not proceed.")
                }
            }},
            "/v1/usage": {"post": {
                "operationId": "commitUsage",
                "summary": "Commit the actual tokens and cost of an allowed call (reserve → commit).",
                "requestBody": {"required": true, "content": {"application/json": {"schema": usage_request}}},
                "responses": {
                    "200": {"description": "What the commit changed.", "content": json_body(&usage_response)["content"]},
                    "400": err("The body is not a valid usage report."),
                    "401": err("No or unknown credentials."),
                    "404": err("The decision reserved no budget, or is unknown or too old."),
                    "409": err("The reservation was already committed or has expired.")
                }
            }},
            "/v1/tools/permitted": {"post": {
                "operationId": "permittedTools",
                "summary": "Which of these tools (listed by an MCP server) may this principal ever call? For filtering tools/list; every call is still decided on its own.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": permitted_request}}},
                "responses": {
                    "200": {"description": "The permitted tools, in the order asked.", "content": json_body(&permitted_response)["content"]},
                    "400": err("The body is not a valid permitted-tools request."),
                    "401": err("No or unknown credentials."),
                    "403": err("The caller may not ask on behalf of this principal, or is an approver."),
                    "413": err("The body is too large."),
                    "422": err("More than 10,000 tools asked about.")
                }
            }},
            "/v1/approvals/{id}": {"get": {
                "operationId": "getApproval",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The approval and its state.", "content": json_body(&approval)["content"]},
                    "401": err("No or unknown credentials."),
                    "404": err("No such approval.")
                }
            }},
            "/v1/approvals/{id}/review": {"post": {
                "operationId": "reviewApproval",
                "summary": "Approve or deny a pending approval, as the authenticated reviewer.",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": review_request}}},
                "responses": {
                    "200": {"description": "The reviewed approval.", "content": json_body(&approval)["content"]},
                    "400": err("The body is not a valid review."),
                    "401": err("No or unknown credentials."),
                    "403": err("The caller may not review this approval (not an approver, not allowed by the policy, or its own request)."),
                    "404": err("No such approval."),
                    "409": err("The approval is no longer pending.")
                }
            }}
        }
    })
}

/// The document, rendered once.
pub fn document_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = serde_json::to_string_pretty(&document()).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        text
    })
}

/// `GET /openapi.json`.
pub async fn serve() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document_text(),
    )
}

//! The Cedar schema Overseer gives Cedar, and the translation of a [`DecisionRequest`] into a
//! Cedar request (principal entity, action, resource and context).
//!
//! # The schema
//!
//! ```cedar
#![doc = include_str!("overseer.cedarschema")]
//! ```
//!
//! * `principal` is an `Agent` whose id is the request's `principal.id`. Its attributes are the
//!   principal's `kind` (`ServiceAccount`, `EphemeralIdentity`, `Spiffe`, `Agent` or
//!   `Unspecified`), `namespace`, `serviceAccount`, `ephemeralIdentity` and `spiffeId`; its labels
//!   are Cedar *tags*: `principal.hasTag("team") && principal.getTag("team") == "payments"`.
//! * `action` is always `Action::"call_tool"`.
//! * `resource` is the `Tool` named by the request's `tool`: `resource == Tool::"delete_db"`.
//! * `context` holds `tool`, the optional `server`, `target`, `user`, `tenant` and `sessionId`,
//!   the call's `arguments`, the decision time (`context.time`, in UTC: `unixSeconds`, `hour`
//!   0–23, `minute` 0–59, `weekday` `"Mon"`…`"Sun"`) and the usage estimate (`context.usage`,
//!   `tokens` and `costMicroUsd`, 0 when the request gave none).
//!
//! # Arguments
//!
//! Arguments are arbitrary JSON, so the schema cannot type them: the validator checks everything
//! in a condition except the attributes read from `context.arguments`. At evaluation JSON maps to
//! Cedar as: objects → records, arrays → sets, strings → strings, booleans → booleans, integers
//! that fit in 64 bits → `Long`, other numbers → `decimal` when Cedar's decimal can hold them
//! exactly (at most 4 fractional digits) and otherwise their decimal text as a string; `null`
//! values are left out (so `context.arguments has x` is false for `"x": null`). Guard optional
//! arguments with `has`: `context.arguments has amount && context.arguments.amount < 1000`. A
//! condition that reads a missing argument or compares values of the wrong type fails to
//! evaluate: an `Allow` rule then does not match, and a `Deny` or `RequireApproval` rule *does*
//! (fail closed, reported with the code `condition_error`).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::Value;

use crate::request::DecisionRequest;

/// The Cedar schema (Cedar's human-readable schema syntax) that conditions and raw `cedar:`
/// policies are validated against.
pub const CEDAR_SCHEMA: &str = include_str!("overseer.cedarschema");

/// The only action: calling a tool.
pub const ACTION_CALL_TOOL: &str = "call_tool";

struct Names {
    schema: Schema,
    agent: EntityTypeName,
    tool: EntityTypeName,
    action: EntityUid,
}

static NAMES: LazyLock<Result<Names, String>> = LazyLock::new(|| {
    let (schema, _warnings) = Schema::from_cedarschema_str(CEDAR_SCHEMA)
        .map_err(|e| format!("Overseer's Cedar schema: {e}"))?;
    let agent = EntityTypeName::from_str("Agent").map_err(|e| e.to_string())?;
    let tool = EntityTypeName::from_str("Tool").map_err(|e| e.to_string())?;
    let action = EntityUid::from_type_name_and_id(
        EntityTypeName::from_str("Action").map_err(|e| e.to_string())?,
        EntityId::new(ACTION_CALL_TOOL),
    );
    Ok(Names {
        schema,
        agent,
        tool,
        action,
    })
});

fn names() -> Result<&'static Names, String> {
    NAMES.as_ref().map_err(Clone::clone)
}

/// The parsed [`CEDAR_SCHEMA`]. It is a constant of this crate; an error here is a bug that the
/// crate's own tests catch, reported rather than panicking.
pub fn schema() -> Result<&'static Schema, String> {
    names().map(|n| &n.schema)
}

/// A request translated for Cedar: request and entity store.
#[derive(Debug)]
pub struct CedarInput {
    /// The Cedar request.
    pub request: Request,
    /// The entity store (the principal, with its attributes and labels as tags).
    pub entities: Entities,
}

/// The principal entity (attributes and tags) is needed.
pub(crate) const NEED_PRINCIPAL: u8 = 1;
/// `context.arguments` is needed.
pub(crate) const NEED_ARGUMENTS: u8 = 2;
/// `context.time` is needed.
pub(crate) const NEED_TIME: u8 = 4;
/// `context.usage` is needed.
pub(crate) const NEED_USAGE: u8 = 8;
/// Everything.
pub(crate) const NEED_ALL: u8 = 15;

/// What a condition can read, found conservatively from its text: Cedar has no way to name
/// `principal`, `arguments`, `time` or `usage` without writing those words, and a `context` used
/// as a whole (not followed by `.`, `[` or `has`) needs everything.
pub(crate) fn needs_of(text: &str) -> u8 {
    let mut n = 0;
    for (word, flag) in [
        ("principal", NEED_PRINCIPAL),
        ("arguments", NEED_ARGUMENTS),
        ("time", NEED_TIME),
        ("usage", NEED_USAGE),
    ] {
        if text.contains(word) {
            n |= flag;
        }
    }
    for (i, _) in text.match_indices("context") {
        let rest = text[i + "context".len()..].trim_start();
        if !(rest.starts_with('.') || rest.starts_with('[') || rest.starts_with("has")) {
            return NEED_ALL;
        }
    }
    n
}

/// Translate a decision request into a Cedar request and entity store.
pub fn cedar_input(req: &DecisionRequest, now: DateTime<Utc>) -> Result<CedarInput, String> {
    cedar_input_for(req, now, NEED_ALL)
}

/// Translate a decision request, building only the parts `needs` asks for (the rest is left
/// out, which only policies that cannot read it are evaluated against).
pub(crate) fn cedar_input_for(
    req: &DecisionRequest,
    now: DateTime<Utc>,
    needs: u8,
) -> Result<CedarInput, String> {
    let n = names()?;
    let principal =
        EntityUid::from_type_name_and_id(n.agent.clone(), EntityId::new(&req.principal.id));
    let resource = EntityUid::from_type_name_and_id(n.tool.clone(), EntityId::new(&req.tool));

    let entities = if needs & NEED_PRINCIPAL != 0 {
        principal_entities(req, &principal)?
    } else {
        Entities::empty()
    };

    let mut ctx: Vec<(String, RestrictedExpression)> = Vec::with_capacity(10);
    ctx.push((
        "tool".into(),
        RestrictedExpression::new_string(req.tool.clone()),
    ));
    for (name, value) in [
        ("server", &req.server),
        ("target", &req.target),
        ("user", &req.user),
        ("tenant", &req.tenant),
        ("sessionId", &req.session_id),
    ] {
        if let Some(v) = value {
            ctx.push((name.into(), RestrictedExpression::new_string(v.clone())));
        }
    }
    if needs & NEED_ARGUMENTS != 0 {
        let args = req
            .arguments
            .iter()
            .filter_map(|(k, v)| json_to_cedar(v).map(|e| (k.clone(), e)));
        ctx.push((
            "arguments".into(),
            RestrictedExpression::new_record(args).map_err(|e| e.to_string())?,
        ));
    }
    if needs & NEED_TIME != 0 {
        let weekday = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            [now.weekday().num_days_from_monday() as usize];
        let time = RestrictedExpression::new_record([
            (
                "unixSeconds".to_string(),
                RestrictedExpression::new_long(now.timestamp()),
            ),
            (
                "hour".to_string(),
                RestrictedExpression::new_long(i64::from(now.hour())),
            ),
            (
                "minute".to_string(),
                RestrictedExpression::new_long(i64::from(now.minute())),
            ),
            (
                "weekday".to_string(),
                RestrictedExpression::new_string(weekday.into()),
            ),
        ])
        .map_err(|e| e.to_string())?;
        ctx.push(("time".into(), time));
    }
    if needs & NEED_USAGE != 0 {
        let usage = req.usage_estimate.unwrap_or_default();
        let usage = RestrictedExpression::new_record([
            (
                "tokens".to_string(),
                RestrictedExpression::new_long(saturating_i64(usage.tokens)),
            ),
            (
                "costMicroUsd".to_string(),
                RestrictedExpression::new_long(saturating_i64(usage.cost_micro_usd)),
            ),
        ])
        .map_err(|e| e.to_string())?;
        ctx.push(("usage".into(), usage));
    }
    let context = Context::from_pairs(ctx).map_err(|e| e.to_string())?;
    let request = Request::new(principal, n.action.clone(), resource, context, None)
        .map_err(|e| e.to_string())?;
    Ok(CedarInput { request, entities })
}

fn principal_entities(req: &DecisionRequest, principal: &EntityUid) -> Result<Entities, String> {
    let mut attrs: HashMap<String, RestrictedExpression> = HashMap::with_capacity(5);
    let kind = req.principal.kind.map_or("Unspecified", |k| k.as_str());
    attrs.insert("kind".into(), RestrictedExpression::new_string(kind.into()));
    let p = &req.principal;
    for (name, value) in [
        ("namespace", &p.namespace),
        ("serviceAccount", &p.service_account),
        ("ephemeralIdentity", &p.ephemeral_identity),
        ("spiffeId", &p.spiffe_id),
    ] {
        if let Some(v) = value {
            attrs.insert(name.into(), RestrictedExpression::new_string(v.clone()));
        }
    }
    let tags = p
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
    let entity = Entity::new_with_tags(principal.clone(), attrs, HashSet::new(), tags)
        .map_err(|e| e.to_string())?;
    Entities::from_entities([entity], None).map_err(|e| e.to_string())
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Translate one JSON value into a Cedar restricted expression (see the module docs); `None`
/// for `null`, which is left out.
fn json_to_cedar(value: &Value) -> Option<RestrictedExpression> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(RestrictedExpression::new_bool(*b)),
        Value::String(s) => Some(RestrictedExpression::new_string(s.clone())),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => number_to_cedar(n),
        }),
        Value::Array(items) => Some(RestrictedExpression::new_set(
            items.iter().filter_map(json_to_cedar),
        )),
        Value::Object(map) => {
            let fields = map
                .iter()
                .filter_map(|(k, v)| json_to_cedar(v).map(|e| (k.clone(), e)));
            // Keys of a JSON object are unique, so building the record cannot fail.
            RestrictedExpression::new_record(fields).ok()
        }
    }
}

/// A non-`i64` number: a Cedar `decimal` when it has at most 4 fractional digits and fits
/// Cedar's decimal range, else its text.
fn number_to_cedar(n: &serde_json::Number) -> RestrictedExpression {
    let text = n.to_string();
    if let Some(f) = n.as_f64() {
        let scaled = f * 10_000.0;
        // Cedar decimals are i64 multiples of 1e-4.
        if f.is_finite() && scaled.fract() == 0.0 && scaled.abs() < 9.2e18 {
            let s = format!("{f:.4}");
            return RestrictedExpression::new_decimal(s);
        }
    }
    RestrictedExpression::new_string(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Principal, PrincipalKind};

    #[test]
    fn schema_parses() {
        schema().unwrap();
    }

    #[test]
    fn request_translates() {
        let req: DecisionRequest = serde_json::from_value(serde_json::json!({
            "principal": {"id": "a", "kind": "Agent", "namespace": "ns", "labels": {"team": "x"}},
            "tool": "t", "arguments": {"n": 1, "f": 1.5, "huge": 1e300, "s": "x", "null": null,
            "list": [1, 2], "obj": {"k": true}}
        }))
        .unwrap();
        let input = cedar_input(&req, DateTime::from_timestamp(0, 0).unwrap()).unwrap();
        let ctx = input.request.context().unwrap();
        assert!(ctx.get("arguments").is_some());
        let _ = Principal {
            kind: Some(PrincipalKind::Agent),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod needs_tests {
    use super::*;

    #[test]
    fn needs_are_found_conservatively() {
        assert_eq!(
            needs_of("context.arguments has a && context.arguments.a < 3"),
            NEED_ARGUMENTS
        );
        assert_eq!(needs_of("context.time.hour < 9"), NEED_TIME);
        assert_eq!(needs_of("principal.getTag(\"x\") == \"y\""), NEED_PRINCIPAL);
        assert_eq!(
            needs_of("context has usage && context.usage.tokens > 5"),
            NEED_USAGE
        );
        assert_eq!(needs_of("context.tool == \"x\""), 0);
        assert_eq!(needs_of("context == {}"), NEED_ALL);
        assert_eq!(needs_of("context[\"time\"].hour == 3"), NEED_TIME);
    }
}

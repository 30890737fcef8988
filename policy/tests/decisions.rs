//! Decision semantics: compile errors with locations, deny-overrides, audit mode, subjects and
//! scope, globs, time windows, rate limits, budgets and approvals.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use overseer_crds::agents::{
    AgentSubjects, ApprovalSettings, Budget, BudgetMetric, ExceedAction, PolicyMode, PolicyRules,
    RateLimit, RateLimitKey, RuleEffect, ServiceAccountSubject, TimeWindow, ToolRule, Weekday,
};
use overseer_policy::approvals::{ApprovalError, ApprovalState};
use overseer_policy::compile::{NamespaceScope, PolicySource, compile};
use overseer_policy::engine::Engine;
use overseer_policy::request::{DecisionRequest, Outcome, Principal, ReasonCode, Usage};
use serde_json::json;

fn now() -> DateTime<Utc> {
    // A Monday, 10:00 UTC.
    DateTime::parse_from_rfc3339("2025-06-02T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn rule(name: &str, tools: &[&str], effect: RuleEffect, when: Option<&str>) -> ToolRule {
    ToolRule {
        name: name.into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        server: None,
        effect,
        when: when.map(Into::into),
        reason: None,
    }
}

fn rules(tools: Vec<ToolRule>) -> PolicyRules {
    PolicyRules {
        tools,
        ..Default::default()
    }
}

fn req(ns: &str, id: &str, tool: &str, args: serde_json::Value) -> DecisionRequest {
    DecisionRequest {
        principal: Principal {
            id: id.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        tool: tool.into(),
        arguments: args.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

fn engine(sources: &[PolicySource]) -> Engine {
    let c = compile(sources);
    assert!(c.is_ok(), "{:?}", c.failures().collect::<Vec<_>>());
    Engine::new(c.compiled)
}

fn decide(e: &Engine, r: &DecisionRequest) -> overseer_policy::request::Decision {
    e.decide(r, now()).unwrap()
}

#[test]
fn default_deny_and_allow() {
    let e = engine(&[PolicySource::namespaced(
        "ns",
        "p",
        rules(vec![rule("read", &["read_*"], RuleEffect::Allow, None)]),
    )]);
    let d = decide(&e, &req("ns", "a", "read_file", json!({})));
    assert_eq!(d.decision, Outcome::Allow);
    assert_eq!(d.reasons[0].policy.as_deref(), Some("ns/p"));
    assert_eq!(d.reasons[0].rule.as_deref(), Some("read"));
    assert_eq!(d.policy_revision, e.current().revision());
    let d = decide(&e, &req("ns", "a", "write_file", json!({})));
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].code, ReasonCode::DefaultDeny);
    // A namespaced policy does not govern other namespaces.
    let d = decide(&e, &req("other", "a", "read_file", json!({})));
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].code, ReasonCode::DefaultDeny);
}

#[test]
fn deny_overrides_approval_overrides_allow() {
    let e = engine(&[
        PolicySource::namespaced(
            "ns",
            "p",
            rules(vec![
                rule("all", &["*"], RuleEffect::Allow, None),
                rule("pay-approval", &["pay"], RuleEffect::RequireApproval, None),
                rule(
                    "big",
                    &["pay"],
                    RuleEffect::Deny,
                    Some("context.arguments has amount && context.arguments.amount > 100"),
                ),
            ]),
        ),
        PolicySource::cluster(
            "guard",
            NamespaceScope::All,
            rules(vec![rule("no-rm", &["rm"], RuleEffect::Deny, None)]),
        ),
    ]);
    assert_eq!(
        decide(&e, &req("ns", "a", "ls", json!({}))).decision,
        Outcome::Allow
    );
    let d = decide(&e, &req("ns", "a", "pay", json!({"amount": 5})));
    assert_eq!(d.decision, Outcome::RequireApproval);
    assert_eq!(d.reasons.len(), 1);
    assert_eq!(d.reasons[0].rule.as_deref(), Some("pay-approval"));
    assert!(d.approval.is_some());
    let d = decide(&e, &req("ns", "a", "pay", json!({"amount": 500})));
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].rule.as_deref(), Some("big"));
    assert!(d.approval.is_none());
    // A cluster-wide deny cannot be overridden by a namespaced allow.
    let d = decide(&e, &req("ns", "a", "rm", json!({})));
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].policy.as_deref(), Some("guard"));
}

#[test]
fn failing_deny_conditions_fail_closed_and_failing_allow_conditions_do_not_allow() {
    let e = engine(&[PolicySource::namespaced(
        "ns",
        "p",
        rules(vec![
            rule(
                "allow-small",
                &["pay"],
                RuleEffect::Allow,
                Some("context.arguments.amount < 10"),
            ),
            rule("allow-ls", &["ls"], RuleEffect::Allow, None),
            rule(
                "deny-prod",
                &["ls"],
                RuleEffect::Deny,
                Some("context.arguments.env == \"prod\""),
            ),
        ]),
    )]);
    // No amount: the allow condition errors, so it does not allow.
    assert_eq!(
        decide(&e, &req("ns", "a", "pay", json!({}))).decision,
        Outcome::Deny
    );
    assert_eq!(
        decide(&e, &req("ns", "a", "pay", json!({"amount": "lots"}))).decision,
        Outcome::Deny
    );
    assert_eq!(
        decide(&e, &req("ns", "a", "pay", json!({"amount": 3}))).decision,
        Outcome::Allow
    );
    // No env: the deny condition errors, so it denies.
    let d = decide(&e, &req("ns", "a", "ls", json!({})));
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].code, ReasonCode::ConditionError);
    assert_eq!(
        decide(&e, &req("ns", "a", "ls", json!({"env": "dev"}))).decision,
        Outcome::Allow
    );
}

#[test]
fn conditions_see_context_principal_and_arguments() {
    let e = engine(&[PolicySource::cluster(
        "c",
        NamespaceScope::All,
        rules(vec![rule(
            "r",
            &["query"],
            RuleEffect::Allow,
            Some(
                "context has target && context.target like \"dev-*\" && principal.hasTag(\"team\") && principal.getTag(\"team\") == \"data\" \
                     && context.time.weekday == \"Mon\" && context.arguments.opts.limit <= 100 \
                     && context.arguments.tags.contains(\"x\") && context.arguments.ratio == decimal(\"1.5\")",
            ),
        )]),
    )]);
    let mut r = req(
        "ns",
        "a",
        "query",
        json!({"opts": {"limit": 10}, "tags": ["x", "y"], "ratio": 1.5}),
    );
    r.target = Some("dev-db".into());
    r.principal.labels.insert("team".into(), "data".into());
    assert_eq!(decide(&e, &r).decision, Outcome::Allow);
    r.target = Some("prod-db".into());
    assert_eq!(decide(&e, &r).decision, Outcome::Deny);
}

#[test]
fn raw_cedar_policies() {
    let mut p = rules(vec![rule("all", &["*"], RuleEffect::Allow, None)]);
    p.cedar = Some(
        r#"@id("no-prod-writes") @reason("prod is read-only")
forbid (principal, action, resource == Tool::"write") when { context has target && context.target like "prod-*" };
@id("ask-for-email") @effect("require_approval")
forbid (principal, action, resource == Tool::"email");"#
            .into(),
    );
    let e = engine(&[PolicySource::namespaced("ns", "p", p)]);
    let mut r = req("ns", "a", "write", json!({}));
    r.target = Some("prod-1".into());
    let d = decide(&e, &r);
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].rule.as_deref(), Some("no-prod-writes"));
    assert_eq!(d.reasons[0].message, "prod is read-only");
    r.target = Some("dev-1".into());
    assert_eq!(decide(&e, &r).decision, Outcome::Allow);
    let d = decide(&e, &req("ns", "a", "email", json!({})));
    assert_eq!(d.decision, Outcome::RequireApproval);
    assert_eq!(d.reasons[0].rule.as_deref(), Some("ask-for-email"));
    assert_eq!(e.current().rule_count(), 1);
    assert!(e.current().cedar_text().contains("no-prod-writes"));
}

#[test]
fn compile_errors_name_policy_field_and_location() {
    let bad_when = PolicySource::namespaced(
        "ns",
        "bad-when",
        rules(vec![
            rule("ok", &["a"], RuleEffect::Allow, None),
            rule(
                "typo",
                &["b"],
                RuleEffect::Allow,
                Some("context.tool == \"b\" &&\n  context.targt == \"x\""),
            ),
            rule("syntax", &["c"], RuleEffect::Allow, Some("context.tool ==")),
            rule(
                "injection",
                &["d"],
                RuleEffect::Allow,
                Some("true }; permit(principal, action, resource) when { true"),
            ),
            rule("type", &["e"], RuleEffect::Allow, Some("context.tool > 3")),
        ]),
    );
    let mut cedar = rules(vec![]);
    cedar.cedar = Some("permit(principal, action, resource);\nforbid(principal, action, resource) when { context.nope };".into());
    let bad_cedar = PolicySource::cluster("bad-cedar", NamespaceScope::All, cedar);
    let mut unparsable = rules(vec![]);
    unparsable.cedar = Some("permit(principal, action, resource)\nwhen { 1 + };".into());
    let unparsable = PolicySource::cluster("unparsable", NamespaceScope::All, unparsable);
    let good = PolicySource::namespaced(
        "ns",
        "good",
        rules(vec![rule("x", &["x"], RuleEffect::Allow, None)]),
    );

    let c = compile(&[bad_when, bad_cedar, unparsable, good]);
    assert!(!c.is_ok());
    let r = &c.reports[0];
    assert_eq!(r.policy, "ns/bad-when");
    let fields: Vec<&str> = r.errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"spec.tools[1].when"), "{:?}", r.errors);
    assert!(fields.contains(&"spec.tools[2].when"), "{:?}", r.errors);
    assert!(fields.contains(&"spec.tools[3].when"), "{:?}", r.errors);
    assert!(fields.contains(&"spec.tools[4].when"), "{:?}", r.errors);
    let typo = r
        .errors
        .iter()
        .find(|e| e.field == "spec.tools[1].when")
        .unwrap();
    assert_eq!((typo.line, typo.column), (Some(2), Some(3)), "{typo}");
    assert!(typo.message.contains("targt"), "{typo}");
    let syntax = r
        .errors
        .iter()
        .find(|e| e.field == "spec.tools[2].when")
        .unwrap();
    assert!(syntax.line.is_some(), "{syntax}");

    let r = &c.reports[1];
    assert_eq!(r.policy, "bad-cedar");
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.errors[0].field, "spec.cedar");
    assert_eq!(r.errors[0].line, Some(2), "{}", r.errors[0]);
    let r = &c.reports[2];
    assert_eq!(r.errors[0].field, "spec.cedar");
    assert_eq!(r.errors[0].line, Some(2), "{}", r.errors[0]);

    // The valid policy is still compiled and served.
    assert!(c.reports[3].is_ok());
    assert_eq!(c.compiled.policy_count(), 1);
    let e = Engine::new(c.compiled);
    assert_eq!(
        decide(&e, &req("ns", "a", "x", json!({}))).decision,
        Outcome::Allow
    );
}

#[test]
fn other_compile_errors() {
    let mut p = rules(vec![
        rule("a", &["t"], RuleEffect::Allow, None),
        rule("a", &["[bad"], RuleEffect::Allow, None),
    ]);
    p.time_windows = vec![TimeWindow {
        name: "w".into(),
        start: "9:00".into(),
        end: "17:00".into(),
        time_zone: Some("Nowhere/Land".into()),
        ..Default::default()
    }];
    p.subjects = Some(AgentSubjects {
        service_accounts: vec![ServiceAccountSubject {
            name: "x".into(),
            namespace: Some("elsewhere".into()),
        }],
        ..Default::default()
    });
    p.cedar = Some("@effect(\"maybe\") forbid(principal, action, resource);".into());
    let c = compile(&[PolicySource::namespaced("ns", "p", p)]);
    let fields: Vec<&str> = c.reports[0]
        .errors
        .iter()
        .map(|e| e.field.as_str())
        .collect();
    for f in [
        "spec.tools[1].name",
        "spec.tools[1].tools[0]",
        "spec.timeWindows[0].start",
        "spec.subjects.serviceAccounts[0].namespace",
        "spec.cedar",
    ] {
        assert!(fields.contains(&f), "{f} missing in {fields:?}");
    }
}

#[test]
fn audit_mode_records_but_never_changes_the_answer() {
    let enforce = PolicySource::namespaced(
        "ns",
        "base",
        rules(vec![rule("all", &["*"], RuleEffect::Allow, None)]),
    );
    let mut audit = rules(vec![
        rule("no-delete", &["delete_*"], RuleEffect::Deny, None),
        rule("extra", &["secret"], RuleEffect::Allow, None),
    ]);
    audit.mode = PolicyMode::Audit;
    let audit = PolicySource::namespaced("ns", "trial", audit);
    let e = engine(&[enforce, audit.clone()]);
    let d = decide(&e, &req("ns", "a", "delete_db", json!({})));
    assert_eq!(d.decision, Outcome::Allow);
    assert_eq!(d.mode.would_have, Some(Outcome::Deny));
    let audit_reason = d
        .reasons
        .iter()
        .find(|r| r.code == ReasonCode::AuditDeny)
        .unwrap();
    assert_eq!(audit_reason.policy.as_deref(), Some("ns/trial"));
    assert_eq!(audit_reason.rule.as_deref(), Some("no-delete"));
    let d = decide(&e, &req("ns", "a", "list", json!({})));
    assert_eq!(d.decision, Outcome::Allow);
    assert_eq!(d.mode.would_have, None);

    // An audit policy alone never widens access either.
    let e = engine(&[audit]);
    let d = decide(&e, &req("ns", "a", "secret", json!({})));
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].code, ReasonCode::DefaultDeny);
}

#[test]
fn subjects_narrow_the_governed_agents() {
    let mut p = rules(vec![rule("all", &["*"], RuleEffect::Allow, None)]);
    p.subjects = Some(AgentSubjects {
        service_accounts: vec![ServiceAccountSubject {
            name: "support-bot".into(),
            namespace: None,
        }],
        agent_ids: vec!["helper-*".into()],
        agent_selector: Some(LabelSelector {
            match_labels: Some([("tier".to_string(), "trusted".to_string())].into()),
            match_expressions: None,
        }),
        ..Default::default()
    });
    let e = engine(&[PolicySource::namespaced("ns", "p", p)]);
    let mut r = req("ns", "x", "t", json!({}));
    assert_eq!(decide(&e, &r).decision, Outcome::Deny);
    r.principal.service_account = Some("support-bot".into());
    assert_eq!(decide(&e, &r).decision, Outcome::Allow);
    let mut r = req("ns", "helper-3", "t", json!({}));
    assert_eq!(decide(&e, &r).decision, Outcome::Allow);
    r.principal.id = "other".into();
    r.principal.labels.insert("tier".into(), "trusted".into());
    assert_eq!(decide(&e, &r).decision, Outcome::Allow);

    // Cluster policies limited to selected namespaces.
    let c = PolicySource::cluster(
        "c",
        NamespaceScope::Only(BTreeSet::from(["team-a".to_string()])),
        rules(vec![rule("all", &["*"], RuleEffect::Allow, None)]),
    );
    let e = engine(&[c]);
    assert_eq!(
        decide(&e, &req("team-a", "x", "t", json!({}))).decision,
        Outcome::Allow
    );
    assert_eq!(
        decide(&e, &req("team-b", "x", "t", json!({}))).decision,
        Outcome::Deny
    );
    let mut r = req("team-a", "x", "t", json!({}));
    r.principal.namespace = None;
    assert_eq!(decide(&e, &r).decision, Outcome::Deny);
}

#[test]
fn globs_and_servers() {
    let mut r1 = rule("gh", &["create_*", "merge_?r"], RuleEffect::Allow, None);
    r1.server = Some("github*".into());
    let e = engine(&[PolicySource::namespaced("ns", "p", rules(vec![r1]))]);
    let mut r = req("ns", "a", "create_issue", json!({}));
    assert_eq!(decide(&e, &r).decision, Outcome::Deny, "no server given");
    r.server = Some("github-enterprise".into());
    assert_eq!(decide(&e, &r).decision, Outcome::Allow);
    r.tool = "merge_pr".into();
    assert_eq!(decide(&e, &r).decision, Outcome::Allow);
    r.tool = "merge_prs".into();
    assert_eq!(decide(&e, &r).decision, Outcome::Deny);
    r.server = Some("gitlab".into());
    r.tool = "create_issue".into();
    assert_eq!(decide(&e, &r).decision, Outcome::Deny);
}

#[test]
fn time_windows_deny_outside_business_hours() {
    let mut p = rules(vec![rule(
        "ops",
        &["kubectl_*", "status"],
        RuleEffect::Allow,
        None,
    )]);
    p.time_windows = vec![TimeWindow {
        name: "business-hours".into(),
        days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ],
        start: "09:00".into(),
        end: "17:00".into(),
        time_zone: Some("America/New_York".into()),
        tools: vec!["kubectl_*".into()],
    }];
    let e = engine(&[PolicySource::namespaced("ns", "p", p)]);
    let r = req("ns", "a", "kubectl_apply", json!({}));
    // 10:00 UTC is 06:00 in New York: closed.
    let d = e.decide(&r, now()).unwrap();
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].code, ReasonCode::OutsideTimeWindow);
    assert_eq!(d.reasons[0].rule.as_deref(), Some("business-hours"));
    // 14:00 UTC is 10:00 in New York: open.
    assert_eq!(
        e.decide(&r, now() + TimeDelta::hours(4)).unwrap().decision,
        Outcome::Allow
    );
    // Tools the window does not cover are not restricted.
    assert_eq!(
        e.decide(&req("ns", "a", "status", json!({})), now())
            .unwrap()
            .decision,
        Outcome::Allow
    );
}

#[test]
fn rate_limits_charge_only_allowed_calls_and_isolate_tenants() {
    let mut p = rules(vec![
        rule("all", &["*"], RuleEffect::Allow, None),
        rule(
            "no-prod",
            &["*"],
            RuleEffect::Deny,
            Some("context has target && context.target == \"prod\""),
        ),
    ]);
    p.rate_limits = vec![RateLimit {
        name: "per-tenant".into(),
        key: RateLimitKey::Tenant,
        tools: vec![],
        limit: 2,
        window: "1m".parse().unwrap(),
    }];
    let e = engine(&[PolicySource::namespaced("ns", "p", p)]);
    let mut a = req("ns", "x", "t", json!({}));
    a.tenant = Some("acme".into());
    let mut denied = a.clone();
    denied.target = Some("prod".into());
    // Denied calls do not count.
    for _ in 0..5 {
        assert_eq!(decide(&e, &denied).decision, Outcome::Deny);
    }
    assert_eq!(decide(&e, &a).decision, Outcome::Allow);
    assert_eq!(decide(&e, &a).decision, Outcome::Allow);
    let d = decide(&e, &a);
    assert_eq!(d.decision, Outcome::Deny);
    assert_eq!(d.reasons[0].code, ReasonCode::RateLimited);
    assert_eq!(d.reasons[0].rule.as_deref(), Some("per-tenant"));
    // Another tenant is unaffected.
    let mut b = a.clone();
    b.tenant = Some("globex".into());
    assert_eq!(decide(&e, &b).decision, Outcome::Allow);
    // The window ends.
    assert_eq!(
        e.decide(&a, now() + TimeDelta::minutes(2))
            .unwrap()
            .decision,
        Outcome::Allow
    );
}

#[test]
fn budgets_reserve_commit_and_ask_for_approval() {
    let mut p = rules(vec![rule("llm", &["llm_*"], RuleEffect::Allow, None)]);
    p.budgets = vec![Budget {
        name: "tokens".into(),
        metric: BudgetMetric::Tokens,
        key: RateLimitKey::Agent,
        tools: vec![],
        limit: 1000,
        window: None,
        on_exceed: ExceedAction::RequireApproval,
    }];
    p.approval = Some(ApprovalSettings {
        users: vec!["boss".into()],
        ..Default::default()
    });
    let e = engine(&[PolicySource::namespaced("ns", "p", p)]);
    let mut r = req("ns", "a", "llm_chat", json!({}));
    r.usage_estimate = Some(Usage {
        tokens: 800,
        cost_micro_usd: 0,
    });
    let d = decide(&e, &r);
    assert_eq!(d.decision, Outcome::Allow);
    // Actual use was lower: 300 of 1000 used.
    e.commit_usage(
        d.decision_id,
        overseer_policy::limits::Usage {
            tokens: Some(300),
            cost_micro_usd: None,
        },
        now(),
    )
    .unwrap();
    assert!(
        e.commit_usage(d.decision_id, Default::default(), now())
            .is_err(),
        "commits once"
    );
    let d = decide(&e, &r);
    assert_eq!(d.decision, Outcome::RequireApproval, "{:?}", d.reasons);
    assert_eq!(d.reasons[0].code, ReasonCode::BudgetExceeded);
    let id = d.approval.unwrap().id;
    e.approve(&id, "boss", &[], now()).unwrap();
    let d = decide(&e, &r);
    assert_eq!(d.decision, Outcome::Allow, "{:?}", d.reasons);
    assert_eq!(d.reasons[0].code, ReasonCode::ApprovalGranted);
    assert_eq!(
        decide(&e, &r).decision,
        Outcome::RequireApproval,
        "the approval is single-use"
    );
}

fn approval_engine() -> Engine {
    let mut p = rules(vec![rule(
        "wire",
        &["wire_transfer"],
        RuleEffect::RequireApproval,
        None,
    )]);
    p.approval = Some(ApprovalSettings {
        users: vec!["alice".into()],
        groups: vec!["finance-approvers".into()],
        timeout: Some("10m".parse().unwrap()),
        ..Default::default()
    });
    engine(&[PolicySource::namespaced("ns", "p", p)])
}

#[test]
fn approvals_are_bound_single_use_and_not_self_approvable() {
    let e = approval_engine();
    let mut r = req(
        "ns",
        "agent-1",
        "wire_transfer",
        json!({"amount": 100, "to": "x"}),
    );
    r.principal.service_account = Some("agent-sa".into());
    let d = decide(&e, &r);
    assert_eq!(d.decision, Outcome::RequireApproval);
    let a = d.approval.unwrap();
    assert_eq!(a.expires_at, now() + TimeDelta::minutes(10));
    // Asking again returns the same pending approval.
    assert_eq!(decide(&e, &r).approval.unwrap().id, a.id);

    assert!(matches!(
        e.approve(&a.id, "agent-1", &["finance-approvers".into()], now()),
        Err(ApprovalError::SelfApproval { .. })
    ));
    assert!(matches!(
        e.approve(
            &a.id,
            "system:serviceaccount:ns:agent-sa",
            &["finance-approvers".into()],
            now()
        ),
        Err(ApprovalError::SelfApproval { .. })
    ));
    assert!(matches!(
        e.approve(&a.id, "mallory", &["devs".into()], now()),
        Err(ApprovalError::NotAllowed { .. })
    ));
    let approved = e
        .approve(&a.id, "bob", &["finance-approvers".into()], now())
        .unwrap();
    assert!(matches!(approved.state, ApprovalState::Approved { .. }));

    // A different request (other arguments) cannot use it.
    let mut other = r.clone();
    other.arguments.insert("amount".into(), json!(1_000_000));
    let d = decide(&e, &other);
    assert_eq!(d.decision, Outcome::RequireApproval);
    assert_ne!(d.approval.unwrap().id, a.id);
    // The same request is allowed exactly once.
    let d = decide(&e, &r);
    assert_eq!(d.decision, Outcome::Allow);
    assert_eq!(d.reasons[0].rule.as_deref(), Some(a.id.as_str()));
    assert!(matches!(
        e.approval(&a.id, now()).unwrap().state,
        ApprovalState::Consumed { .. }
    ));
    let d = decide(&e, &r);
    assert_eq!(d.decision, Outcome::RequireApproval);
    assert_ne!(d.approval.unwrap().id, a.id);
}

#[test]
fn approvals_expire_into_deny() {
    let e = approval_engine();
    let r = req("ns", "agent-1", "wire_transfer", json!({}));
    let a = decide(&e, &r).approval.unwrap();
    let later = now() + TimeDelta::minutes(11);
    assert!(matches!(
        e.approve(&a.id, "alice", &[], later),
        Err(ApprovalError::NotPending { .. })
    ));
    assert_eq!(
        e.approval(&a.id, later).unwrap().state,
        ApprovalState::Expired
    );
    // Approved but not used in time: it cannot be used afterwards.
    let b = decide(&e, &r).approval.unwrap();
    e.approve(&b.id, "alice", &[], now()).unwrap();
    let d = e.decide(&r, later).unwrap();
    assert_eq!(d.decision, Outcome::RequireApproval);
    assert_ne!(d.approval.unwrap().id, b.id);
}

#[test]
fn revisions_swap_atomically_and_depend_only_on_content() {
    let p1 = PolicySource::namespaced(
        "ns",
        "a",
        rules(vec![rule("x", &["x"], RuleEffect::Allow, None)]),
    );
    let p2 = PolicySource::namespaced(
        "ns",
        "b",
        rules(vec![rule("y", &["y"], RuleEffect::Deny, None)]),
    );
    let c1 = compile(&[p1.clone(), p2.clone()]).compiled;
    let c2 = compile(&[p2.clone(), p1.clone()]).compiled;
    assert_eq!(c1.revision(), c2.revision());
    assert_eq!(c1.revision().len(), 12);
    let e = Engine::new(c1);
    let old_rev = e.current().revision().to_owned();
    assert_eq!(
        decide(&e, &req("ns", "a", "x", json!({}))).decision,
        Outcome::Allow
    );
    let old = e.swap(compile(&[p2]).compiled);
    assert_eq!(old.revision(), old_rev);
    let d = decide(&e, &req("ns", "a", "x", json!({})));
    assert_eq!(d.decision, Outcome::Deny);
    assert_ne!(d.policy_revision, old_rev);
}

#[test]
fn invalid_requests_are_errors_not_decisions() {
    let e = approval_engine();
    let mut r = req("ns", "a", "t", json!({}));
    r.tool.clear();
    assert!(e.decide(&r, now()).is_err());
}

#[test]
fn may_allow_lists_the_tools_a_principal_can_ever_call() {
    let mut deny_srv = rule("no-admin-on-prod", &["admin_*"], RuleEffect::Deny, None);
    deny_srv.server = Some("prod-*".into());
    let e = engine(&[
        PolicySource::namespaced(
            "ns",
            "p",
            rules(vec![
                rule("read", &["read_*", "admin_*"], RuleEffect::Allow, None),
                rule("refund", &["refund"], RuleEffect::RequireApproval, None),
                rule(
                    "big",
                    &["transfer"],
                    RuleEffect::Allow,
                    Some("context.arguments.amount < 10"),
                ),
                rule("no-secrets", &["read_secret"], RuleEffect::Deny, None),
                rule(
                    "maybe-not",
                    &["read_maybe"],
                    RuleEffect::Deny,
                    Some("context.arguments.x == 1"),
                ),
                deny_srv,
            ]),
        ),
        PolicySource {
            rules: PolicyRules {
                mode: PolicyMode::Audit,
                ..rules(vec![rule("audit-all", &["*"], RuleEffect::Allow, None)])
            },
            ..PolicySource::namespaced("ns", "audit", PolicyRules::default())
        },
    ]);
    let c = e.current();
    let p = |ns: &str| Principal {
        id: "a".into(),
        namespace: Some(ns.into()),
        ..Default::default()
    };
    let yes = |tool: &str, server: Option<&str>| c.may_allow(&p("ns"), server, tool);
    assert!(yes("read_file", None));
    assert!(yes("refund", None), "approval can be granted");
    assert!(yes("transfer", None), "the condition may hold");
    assert!(
        yes("read_maybe", None),
        "a conditional deny does not always apply"
    );
    assert!(!yes("read_secret", None), "unconditional deny overrides");
    assert!(
        !yes("write_file", None),
        "no rule allows it; audit policies never allow"
    );
    assert!(yes("admin_users", Some("staging")));
    assert!(!yes("admin_users", Some("prod-eu")), "deny for that server");
    assert!(!c.may_allow(&p("other"), None, "read_file"), "out of scope");
}

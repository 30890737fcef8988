//! Property tests: arbitrary policies and requests never panic, and decisions always follow
//! deny-overrides (deny > require_approval > allow > default deny), checked against a model.

use chrono::{DateTime, Utc};
use overseer_crds::agents::{AgentSubjects, PolicyMode, PolicyRules, RuleEffect, ToolRule};
use overseer_policy::compile::{NamespaceScope, PolicySource, compile};
use overseer_policy::engine::Engine;
use overseer_policy::request::{DecisionRequest, Outcome, Principal, ReasonCode};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const TOOLS: &[&str] = &["read", "write", "delete", "pay", "email"];
const PATTERNS: &[&str] = &[
    "read",
    "write",
    "delete",
    "pay",
    "email",
    "*",
    "d*",
    "?ay",
    "{read,write}",
];
const AGENTS: &[&str] = &["a1", "a2", "b1"];
const NAMESPACES: &[&str] = &["ns1", "ns2"];

/// A rule's optional condition: `amount > n` on a present, numeric argument.
#[derive(Debug, Clone)]
struct Rule {
    patterns: Vec<usize>,
    effect: RuleEffect,
    threshold: Option<i64>,
}

#[derive(Debug, Clone)]
struct Pol {
    namespace: Option<usize>,
    agent_glob: Option<&'static str>,
    audit: bool,
    rules: Vec<Rule>,
}

fn effect() -> impl Strategy<Value = RuleEffect> {
    prop_oneof![
        Just(RuleEffect::Allow),
        Just(RuleEffect::Deny),
        Just(RuleEffect::RequireApproval)
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(0..PATTERNS.len(), 1..3),
        effect(),
        prop::option::of(0i64..100),
    )
        .prop_map(|(patterns, effect, threshold)| Rule {
            patterns,
            effect,
            threshold,
        })
}

fn pol() -> impl Strategy<Value = Pol> {
    (
        prop::option::of(0..NAMESPACES.len()),
        prop::option::of(prop_oneof![Just("a*"), Just("b1"), Just("*")]),
        prop::bool::weighted(0.2),
        prop::collection::vec(rule(), 0..6),
    )
        .prop_map(|(namespace, agent_glob, audit, rules)| Pol {
            namespace,
            agent_glob,
            audit,
            rules,
        })
}

fn source(i: usize, p: &Pol) -> PolicySource {
    let rules = PolicyRules {
        mode: if p.audit {
            PolicyMode::Audit
        } else {
            PolicyMode::Enforce
        },
        subjects: p.agent_glob.map(|g| AgentSubjects {
            agent_ids: vec![g.into()],
            ..Default::default()
        }),
        tools: p
            .rules
            .iter()
            .enumerate()
            .map(|(j, r)| ToolRule {
                name: format!("r{j}"),
                tools: r
                    .patterns
                    .iter()
                    .map(|&k| PATTERNS[k].to_string())
                    .collect(),
                server: None,
                effect: r.effect,
                when: r.threshold.map(|n| {
                    format!("context.arguments has amount && context.arguments.amount > {n}")
                }),
                reason: None,
            })
            .collect(),
        ..Default::default()
    };
    match p.namespace {
        Some(ns) => PolicySource::namespaced(NAMESPACES[ns], format!("p{i}"), rules),
        None => PolicySource::cluster(format!("p{i}"), NamespaceScope::All, rules),
    }
}

fn pattern_matches(pattern: &str, tool: &str) -> bool {
    match pattern {
        "*" => true,
        "d*" => tool.starts_with('d'),
        "?ay" => tool.len() == 3 && tool.ends_with("ay"),
        "{read,write}" => tool == "read" || tool == "write",
        p => p == tool,
    }
}

fn glob_matches(glob: &str, id: &str) -> bool {
    match glob {
        "*" => true,
        "a*" => id.starts_with('a'),
        g => g == id,
    }
}

/// The model: strictest matching effect among enforced policies; default deny.
fn model(pols: &[Pol], agent: &str, ns: &str, tool: &str, amount: Option<i64>) -> Outcome {
    let mut best: Option<Outcome> = None;
    for p in pols.iter().filter(|p| !p.audit) {
        if p.namespace.is_some_and(|n| NAMESPACES[n] != ns)
            || p.agent_glob.is_some_and(|g| !glob_matches(g, agent))
        {
            continue;
        }
        for r in &p.rules {
            if !r
                .patterns
                .iter()
                .any(|&k| pattern_matches(PATTERNS[k], tool))
            {
                continue;
            }
            if let Some(n) = r.threshold
                && amount.is_none_or(|a| a <= n)
            {
                continue;
            }
            let e = match r.effect {
                RuleEffect::Allow => Outcome::Allow,
                RuleEffect::Deny => Outcome::Deny,
                RuleEffect::RequireApproval => Outcome::RequireApproval,
            };
            if best.is_none_or(|b| e.severity() > b.severity()) {
                best = Some(e);
            }
        }
    }
    best.unwrap_or(Outcome::Deny)
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn decisions_follow_deny_overrides(
        pols in prop::collection::vec(pol(), 0..5),
        requests in prop::collection::vec((0..AGENTS.len(), 0..NAMESPACES.len(), 0..TOOLS.len(), prop::option::of(-5i64..120)), 1..12),
    ) {
        let sources: Vec<PolicySource> = pols.iter().enumerate().map(|(i, p)| source(i, p)).collect();
        let c = compile(&sources);
        prop_assert!(c.is_ok(), "{:?}", c.reports);
        let engine = Engine::new(c.compiled);
        for (a, n, t, amount) in requests {
            let mut args = Map::new();
            if let Some(v) = amount {
                args.insert("amount".into(), json!(v));
            }
            let req = DecisionRequest {
                principal: Principal { id: AGENTS[a].into(), namespace: Some(NAMESPACES[n].into()), ..Default::default() },
                tool: TOOLS[t].into(),
                arguments: args,
                ..Default::default()
            };
            let d = engine.decide(&req, now()).unwrap();
            let want = model(&pols, AGENTS[a], NAMESPACES[n], TOOLS[t], amount);
            prop_assert_eq!(d.decision, want, "reasons {:?}", d.reasons);
            // Every answer names what decided it.
            prop_assert!(!d.reasons.is_empty());
            if want == Outcome::Deny {
                prop_assert!(d.reasons.iter().any(|r| matches!(r.code, ReasonCode::Deny | ReasonCode::DefaultDeny)));
            }
            if d.decision == Outcome::RequireApproval {
                prop_assert!(d.approval.is_some());
            }
        }
    }

    #[test]
    fn arbitrary_policies_and_requests_never_panic(
        whens in prop::collection::vec(prop::option::of(".{0,60}"), 0..4),
        cedar in prop::option::of(".{0,120}"),
        patterns in prop::collection::vec(".{0,12}", 1..3),
        server in prop::option::of(".{0,12}"),
        tool in ".{0,20}",
        id in ".{0,20}",
        ns in prop::option::of("[a-z]{0,5}"),
        key in ".{0,8}",
        value in any::<i64>(),
        float in any::<f64>(),
        text in ".{0,20}",
    ) {
        let rules = PolicyRules {
            tools: whens.iter().enumerate().map(|(i, w)| ToolRule {
                name: format!("r{i}"),
                tools: patterns.clone(),
                server: server.clone(),
                effect: [RuleEffect::Allow, RuleEffect::Deny, RuleEffect::RequireApproval][i % 3],
                when: w.clone(),
                reason: None,
            }).collect(),
            cedar,
            ..Default::default()
        };
        let c = compile(&[PolicySource::cluster("p", NamespaceScope::All, rules)]);
        for r in &c.reports {
            for e in &r.errors {
                prop_assert!(!e.field.is_empty());
            }
        }
        let engine = Engine::new(c.compiled);
        let mut args = Map::new();
        args.insert(key, json!({"n": value, "f": float, "s": text, "l": [value, Value::Null]}));
        let req = DecisionRequest {
            principal: Principal { id, namespace: ns, ..Default::default() },
            tool,
            arguments: args,
            ..Default::default()
        };
        if let Ok(d) = engine.decide(&req, now()) {
            prop_assert!(!d.reasons.is_empty());
        }
    }
}

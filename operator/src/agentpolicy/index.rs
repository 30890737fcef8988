//! The policy set every replica serves: the watched policies, compiled once per change of the
//! set (never per request) and swapped into the decision [`Engine`] atomically. A policy whose
//! new version does not compile keeps serving its last good version ([`PolicyCatalog`]).
//!
//! [`PolicyIndex::sync`] is a pure state transition over what the watches hold; it runs on every
//! replica, leader or not, so followers answer decisions from the same revision.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use overseer_policy::{compile::PolicyReport, engine::Engine};

use super::source::Source;
use crate::decision::catalog::PolicyCatalog;

/// What one [`PolicyIndex::sync`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Whether the set was recompiled.
    pub compiled: bool,
    /// The revision swapped into the engine, when it changed.
    pub swapped: Option<String>,
}

/// The compiled policy set and the per-policy results that statuses are written from.
#[derive(Debug)]
pub struct PolicyIndex {
    catalog: PolicyCatalog,
    engine: Arc<Engine>,
    /// Per policy key: the report of its current version (compile or selector errors).
    reports: BTreeMap<String, PolicyReport>,
    /// Per policy key: the report of the version that serves (current or last good).
    serving: BTreeMap<String, PolicyReport>,
    /// Keys whose current version was refused before compiling (their catalog entry, if any,
    /// is an older version).
    refused: BTreeMap<String, PolicyReport>,
    synced: bool,
}

impl PolicyIndex {
    /// An empty index feeding `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            catalog: PolicyCatalog::new(),
            engine,
            reports: BTreeMap::new(),
            serving: BTreeMap::new(),
            refused: BTreeMap::new(),
            synced: false,
        }
    }

    /// The engine this index feeds.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Whether [`Self::sync`] ran at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Make the served set equal `sources` (every watched policy): changed policies are
    /// recompiled, deleted ones leave the set, broken ones keep serving their last good version.
    /// Compiles only when something changed; swaps the engine only when the revision changed.
    pub fn sync(&mut self, sources: Vec<Source>) -> SyncOutcome {
        let mut changed = !self.synced;
        let mut keys = BTreeSet::new();
        let mut refused = BTreeMap::new();
        for source in sources {
            let key = source.key();
            match source {
                Source::Policy(policy) => changed |= self.catalog.upsert(*policy),
                Source::Invalid(report) => {
                    refused.insert(key.clone(), report);
                }
            }
            keys.insert(key);
        }
        changed |= self.catalog.retain(&keys);
        self.refused = refused;
        self.synced = true;
        if !changed {
            self.refresh_reports(&keys);
            return SyncOutcome {
                compiled: false,
                swapped: None,
            };
        }
        let rebuild = self.catalog.rebuild();
        self.reports = rebuild
            .reports
            .into_iter()
            .map(|r| (r.policy.clone(), r))
            .collect();
        self.serving = rebuild
            .compilation
            .reports
            .iter()
            .filter(|r| r.is_ok())
            .map(|r| (r.policy.clone(), r.clone()))
            .collect();
        self.refresh_reports(&keys);
        let compiled = rebuild.compilation.compiled;
        let swapped = (compiled.revision() != self.engine.current().revision()).then(|| {
            let revision = compiled.revision().to_owned();
            self.engine.swap(compiled);
            revision
        });
        SyncOutcome {
            compiled: true,
            swapped,
        }
    }

    fn refresh_reports(&mut self, keys: &BTreeSet<String>) {
        self.reports.retain(|k, _| keys.contains(k));
        self.serving.retain(|k, _| keys.contains(k));
        for (key, report) in &self.refused {
            self.reports.insert(key.clone(), report.clone());
        }
    }

    /// The report of the policy's current version, once it was synced.
    pub fn report(&self, key: &str) -> Option<&PolicyReport> {
        self.reports.get(key)
    }

    /// The report of the version of the policy that serves decisions (its current version, or
    /// its last good one), if any does.
    pub fn serving(&self, key: &str) -> Option<&PolicyReport> {
        self.serving.get(key)
    }

    /// The revision the engine serves.
    pub fn revision(&self) -> String {
        self.engine.current().revision().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use overseer_crds::agents::{PolicyRules, RuleEffect, ToolRule};
    use overseer_policy::{
        compile::{CompiledPolicies, PolicySource},
        request::{DecisionRequest, Outcome},
    };

    fn policy(effect: RuleEffect, when: Option<&str>) -> Source {
        Source::Policy(Box::new(PolicySource::namespaced(
            "agents",
            "support",
            PolicyRules {
                tools: vec![ToolRule {
                    name: "read".into(),
                    tools: vec!["read_*".into()],
                    effect,
                    when: when.map(Into::into),
                    ..ToolRule::default()
                }],
                ..PolicyRules::default()
            },
        )))
    }

    fn decide(engine: &Engine) -> Outcome {
        let request: DecisionRequest = serde_json::from_value(serde_json::json!({
            "principal": {"id": "support-bot", "namespace": "agents"},
            "tool": "read_ticket",
        }))
        .expect("request");
        let now = Utc
            .with_ymd_and_hms(2030, 1, 1, 12, 0, 0)
            .single()
            .expect("time");
        engine.decide(&request, now).expect("decides").decision
    }

    #[test]
    fn an_invalid_update_keeps_the_last_good_revision_serving_decisions() {
        let engine = Arc::new(Engine::new(CompiledPolicies::empty()));
        let mut index = PolicyIndex::new(engine.clone());
        assert_eq!(
            decide(&engine),
            Outcome::Deny,
            "default deny before any policy"
        );

        let outcome = index.sync(vec![policy(RuleEffect::Allow, None)]);
        assert!(outcome.compiled);
        let good = outcome.swapped.expect("a new revision");
        assert_eq!(decide(&engine), Outcome::Allow);
        assert!(index.report("agents/support").expect("report").is_ok());

        let outcome = index.sync(vec![policy(
            RuleEffect::Allow,
            Some("this is not cedar ((("),
        )]);
        assert!(outcome.compiled);
        assert_eq!(outcome.swapped, None, "the served revision did not change");
        assert_eq!(index.revision(), good);
        assert_eq!(decide(&engine), Outcome::Allow, "old answers continue");
        let report = index.report("agents/support").expect("report");
        assert!(
            report.message().contains("spec.tools[0].when"),
            "{}",
            report.message()
        );
        assert!(
            index
                .serving("agents/support")
                .is_some_and(PolicyReport::is_ok)
        );

        // Fixed again, to a different rule: it serves at once.
        let outcome = index.sync(vec![policy(RuleEffect::Deny, None)]);
        assert!(outcome.swapped.is_some());
        assert_eq!(decide(&engine), Outcome::Deny);
    }

    #[test]
    fn unchanged_sets_do_not_recompile_and_deleted_policies_leave() {
        let engine = Arc::new(Engine::new(CompiledPolicies::empty()));
        let mut index = PolicyIndex::new(engine.clone());
        assert!(index.sync(vec![policy(RuleEffect::Allow, None)]).compiled);
        let again = index.sync(vec![policy(RuleEffect::Allow, None)]);
        assert_eq!(
            again,
            SyncOutcome {
                compiled: false,
                swapped: None
            }
        );
        let gone = index.sync(vec![]);
        assert!(gone.compiled && gone.swapped.is_some());
        assert_eq!(engine.current().policy_count(), 0);
        assert!(index.report("agents/support").is_none());
        assert_eq!(decide(&engine), Outcome::Deny);
    }

    #[test]
    fn a_policy_refused_before_compiling_keeps_its_last_good_version() {
        let engine = Arc::new(Engine::new(CompiledPolicies::empty()));
        let mut index = PolicyIndex::new(engine.clone());
        index.sync(vec![policy(RuleEffect::Allow, None)]);
        let refused = PolicyReport {
            policy: "agents/support".into(),
            generation: Some(2),
            revision: String::new(),
            rule_count: 0,
            errors: vec![overseer_policy::compile::CompileError {
                field: "spec.namespaceSelector".into(),
                message: "bad".into(),
                line: None,
                column: None,
            }],
        };
        let outcome = index.sync(vec![Source::Invalid(refused.clone())]);
        assert!(!outcome.compiled);
        assert_eq!(index.report("agents/support"), Some(&refused));
        assert!(index.serving("agents/support").is_some());
        assert_eq!(decide(&engine), Outcome::Allow);
    }
}

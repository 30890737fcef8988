//! The set of policies the decision service serves, with last-good semantics: a policy whose new
//! version does not compile keeps serving its last good version, and reports why.

use std::collections::BTreeMap;

use overseer_policy::compile::{Compilation, PolicyReport, PolicySource, compile};

#[derive(Debug, Clone)]
struct Entry {
    /// The version last submitted.
    current: PolicySource,
    /// The last version that compiled, if any.
    last_good: Option<PolicySource>,
    /// The report of the last compile of `current`.
    report: Option<PolicyReport>,
}

/// Policies by key (`namespace/name` or `name`).
#[derive(Debug, Default, Clone)]
pub struct PolicyCatalog {
    entries: BTreeMap<String, Entry>,
}

/// The outcome of recompiling the catalog.
#[derive(Debug)]
pub struct Rebuild {
    /// What was compiled (every policy at its current or last good version).
    pub compilation: Compilation,
    /// Per submitted policy, its current version's report (errors included).
    pub reports: Vec<PolicyReport>,
}

impl PolicyCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a policy. Returns whether anything changed.
    pub fn upsert(&mut self, source: PolicySource) -> bool {
        let key = source.key();
        match self.entries.get_mut(&key) {
            Some(entry) if entry.current == source => false,
            Some(entry) => {
                entry.current = source;
                entry.report = None;
                true
            }
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        current: source,
                        last_good: None,
                        report: None,
                    },
                );
                true
            }
        }
    }

    /// Remove a policy. Returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Keep only the policies whose keys are in `keys`.
    pub fn retain(&mut self, keys: &std::collections::BTreeSet<String>) -> bool {
        let before = self.entries.len();
        self.entries.retain(|k, _| keys.contains(k));
        before != self.entries.len()
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no policies.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Compile every policy: policies whose current version compiles are served at it; the others
    /// at their last good version (or not at all if they never compiled).
    pub fn rebuild(&mut self) -> Rebuild {
        // First compile every current version on its own terms to learn which ones are good.
        let current: Vec<PolicySource> = self.entries.values().map(|e| e.current.clone()).collect();
        let first = compile(&current);
        let mut failed = std::collections::BTreeSet::new();
        for report in &first.reports {
            if !report.is_ok() {
                failed.insert(report.policy.clone());
            }
            if let Some(entry) = self.entries.get_mut(&report.policy) {
                entry.report = Some(report.clone());
                if report.is_ok() {
                    entry.last_good = Some(entry.current.clone());
                }
            }
        }
        let reports = first.reports.clone();
        if failed.is_empty() {
            return Rebuild {
                compilation: first,
                reports,
            };
        }
        // Serve the failed policies at their last good versions.
        let serving: Vec<PolicySource> = self
            .entries
            .iter()
            .filter_map(|(key, e)| {
                if failed.contains(key) {
                    e.last_good.clone()
                } else {
                    Some(e.current.clone())
                }
            })
            .collect();
        Rebuild {
            compilation: compile(&serving),
            reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_crds::agents::{PolicyRules, RuleEffect, ToolRule};

    fn policy(name: &str, when: Option<&str>) -> PolicySource {
        PolicySource::namespaced(
            "default",
            name,
            PolicyRules {
                tools: vec![ToolRule {
                    name: "read".into(),
                    tools: vec!["read_*".into()],
                    effect: RuleEffect::Allow,
                    when: when.map(Into::into),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_broken_update_keeps_the_last_good_version_serving() {
        let mut catalog = PolicyCatalog::new();
        assert!(catalog.upsert(policy("p", None)));
        let good = catalog.rebuild();
        assert!(good.reports.iter().all(|r| r.is_ok()));
        assert_eq!(good.compilation.compiled.policy_count(), 1);
        let good_revision = good.compilation.compiled.revision().to_owned();

        assert!(catalog.upsert(policy("p", Some("this is not cedar ((("))));
        let broken = catalog.rebuild();
        let report = broken
            .reports
            .iter()
            .find(|r| r.policy == "default/p")
            .expect("report");
        assert!(!report.is_ok(), "the broken version is reported");
        assert!(
            report.message().contains("spec.tools[0].when"),
            "{}",
            report.message()
        );
        assert_eq!(
            broken.compilation.compiled.policy_count(),
            1,
            "the last good version still serves"
        );
        assert_eq!(broken.compilation.compiled.revision(), good_revision);
    }

    #[test]
    fn unchanged_upserts_are_no_ops_and_removal_drops_the_policy() {
        let mut catalog = PolicyCatalog::new();
        assert!(catalog.upsert(policy("p", None)));
        assert!(!catalog.upsert(policy("p", None)));
        assert!(catalog.remove("default/p"));
        assert!(catalog.is_empty());
        assert_eq!(catalog.rebuild().compilation.compiled.policy_count(), 0);
    }
}

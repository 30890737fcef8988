//! Watched `AgentPolicy` / `ClusterAgentPolicy` objects → the policy core's [`PolicySource`],
//! mapped exactly as the file loader of `overseer serve` maps YAML documents
//! ([`crate::decision::files::parse_policies`]): an `AgentPolicy` governs its own namespace, a
//! `ClusterAgentPolicy` every namespace, or (in a cluster) the namespaces its `namespaceSelector`
//! matches, resolved against the watched Namespaces' labels.

use std::collections::{BTreeMap, BTreeSet};

use kube::{
    ResourceExt,
    core::{Selector, SelectorExt},
};
use overseer_crds::agents::{AgentPolicy, ClusterAgentPolicy};
use overseer_policy::compile::{CompileError, NamespaceScope, PolicyReport, PolicySource};

/// One watched policy, ready for the catalog, or why it cannot even be handed to the compiler.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The policy, to compile.
    Policy(Box<PolicySource>),
    /// A problem found before compiling (an invalid `namespaceSelector`), reported like a
    /// compile error; the policy's last good version keeps serving.
    Invalid(PolicyReport),
}

impl Source {
    /// The catalog key: `namespace/name` for an `AgentPolicy`, `name` for a `ClusterAgentPolicy`.
    pub fn key(&self) -> String {
        match self {
            Self::Policy(source) => source.key(),
            Self::Invalid(report) => report.policy.clone(),
        }
    }
}

/// The catalog key of an `AgentPolicy` (`namespace/name`), as [`PolicySource::key`] builds it.
pub fn agent_policy_key(policy: &AgentPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// The catalog key of a `ClusterAgentPolicy` (its name).
pub fn cluster_policy_key(policy: &ClusterAgentPolicy) -> String {
    policy.name_any()
}

/// An `AgentPolicy` as a source: its namespace, name, generation and rules.
pub fn agent_policy_source(policy: &AgentPolicy) -> Source {
    let mut source = PolicySource::namespaced(
        policy.namespace().unwrap_or_default(),
        policy.name_any(),
        policy.spec.policy.clone(),
    );
    source.generation = policy.metadata.generation;
    Source::Policy(Box::new(source))
}

/// A `ClusterAgentPolicy` as a source. Without a `namespaceSelector` it applies everywhere;
/// with one, to the namespaces in `namespaces` (name → labels) that it matches.
pub fn cluster_policy_source(
    policy: &ClusterAgentPolicy,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Source {
    let name = policy.name_any();
    let scope = match &policy.spec.namespace_selector {
        None => NamespaceScope::All,
        Some(selector) => match Selector::try_from(selector.clone()) {
            Ok(selector) => NamespaceScope::Only(
                namespaces
                    .iter()
                    .filter(|(_, labels)| selector.matches(labels))
                    .map(|(ns, _)| ns.clone())
                    .collect::<BTreeSet<_>>(),
            ),
            Err(e) => {
                return Source::Invalid(PolicyReport {
                    policy: name,
                    generation: policy.metadata.generation,
                    revision: String::new(),
                    rule_count: 0,
                    errors: vec![CompileError {
                        field: "spec.namespaceSelector".into(),
                        message: format!("not a valid label selector: {e}"),
                        line: None,
                        column: None,
                    }],
                });
            }
        },
    };
    let mut source = PolicySource::cluster(name, scope, policy.spec.policy.clone());
    source.generation = policy.metadata.generation;
    Source::Policy(Box::new(source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use overseer_crds::agents::ClusterAgentPolicySpec;
    use overseer_policy::compile::PolicyScope;

    const YAML: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: support, namespace: agents, generation: 3}
spec:
  tools:
    - {name: read, tools: ["read_*"], effect: Allow}
---
apiVersion: agents.overseer.dev/v1alpha1
kind: ClusterAgentPolicy
metadata: {name: guardrails, generation: 2}
spec:
  tools:
    - {name: no-drop, tools: ["drop_*"], effect: Deny}
"#;

    #[test]
    fn watched_objects_map_like_the_file_loader() {
        let from_files = crate::decision::files::parse_policies(YAML).expect("parses");
        let mut docs = serde_yaml::Deserializer::from_str(YAML);
        let agent: AgentPolicy =
            serde::Deserialize::deserialize(docs.next().expect("doc")).expect("agent policy");
        let cluster: ClusterAgentPolicy =
            serde::Deserialize::deserialize(docs.next().expect("doc")).expect("cluster policy");
        let watched = [
            agent_policy_source(&agent),
            cluster_policy_source(&cluster, &BTreeMap::new()),
        ];
        let watched: Vec<PolicySource> = watched
            .into_iter()
            .map(|s| match s {
                Source::Policy(p) => *p,
                Source::Invalid(r) => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(watched, from_files);
        assert_eq!(agent_policy_key(&agent), "agents/support");
        assert_eq!(cluster_policy_key(&cluster), "guardrails");
        assert_eq!(watched[0].generation, Some(3));
    }

    fn cluster_with(selector: LabelSelector) -> ClusterAgentPolicy {
        ClusterAgentPolicy::new(
            "prod-only",
            ClusterAgentPolicySpec {
                namespace_selector: Some(selector),
                ..ClusterAgentPolicySpec::default()
            },
        )
    }

    #[test]
    fn a_namespace_selector_resolves_against_namespace_labels() {
        let namespaces = BTreeMap::from([
            (
                "a".to_owned(),
                BTreeMap::from([("env".into(), "prod".into())]),
            ),
            (
                "b".to_owned(),
                BTreeMap::from([("env".into(), "dev".into())]),
            ),
            ("c".to_owned(), BTreeMap::new()),
        ]);
        let policy = cluster_with(LabelSelector {
            match_labels: Some(BTreeMap::from([("env".into(), "prod".into())])),
            ..LabelSelector::default()
        });
        let Source::Policy(source) = cluster_policy_source(&policy, &namespaces) else {
            panic!("valid")
        };
        assert_eq!(
            source.scope,
            PolicyScope::Cluster {
                namespaces: NamespaceScope::Only(BTreeSet::from(["a".to_owned()]))
            }
        );
    }

    #[test]
    fn an_invalid_selector_is_reported_on_its_field() {
        let policy = cluster_with(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "Near".into(),
                values: Some(vec!["prod".into()]),
            }]),
            ..LabelSelector::default()
        });
        let Source::Invalid(report) = cluster_policy_source(&policy, &BTreeMap::new()) else {
            panic!("invalid")
        };
        assert_eq!(report.policy, "prod-only");
        assert!(
            report.message().starts_with("spec.namespaceSelector: "),
            "{}",
            report.message()
        );
    }
}

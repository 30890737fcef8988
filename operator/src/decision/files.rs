//! Policies from a directory of YAML files (`overseer serve --policies DIR`, `overseer check`).
//!
//! Every `*.yaml`/`*.yml` file below the directory may hold several documents, each an
//! `AgentPolicy` (namespace defaults to `default`) or a `ClusterAgentPolicy`. A file that fails to
//! parse is reported and its policies keep their previous versions; a policy that fails to compile
//! keeps its last good version (see [`super::catalog`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use overseer_crds::agents::{AgentPolicy, ClusterAgentPolicy};
use overseer_policy::compile::{NamespaceScope, PolicySource};
use serde::Deserialize;

use super::catalog::PolicyCatalog;

/// A problem with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, and where.
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Every policy file below `dir`, sorted.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            // Hidden entries are skipped: a mounted ConfigMap keeps each file twice, as
            // `name.yaml` and under the `..data`/`..<timestamp>` directories it swaps atomically.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parse the policies of one YAML text (several documents allowed).
pub fn parse_policies(text: &str) -> Result<Vec<PolicySource>, String> {
    let mut sources = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        if api_version != "agents.overseer.dev/v1alpha1" {
            return Err(format!(
                "document {}: apiVersion {api_version:?} is not agents.overseer.dev/v1alpha1",
                i + 1
            ));
        }
        match kind.as_str() {
            "AgentPolicy" => {
                let policy: AgentPolicy = serde_yaml::from_value(value)
                    .map_err(|e| format!("document {} (AgentPolicy): {e}", i + 1))?;
                let name = policy
                    .metadata
                    .name
                    .clone()
                    .ok_or_else(|| format!("document {}: metadata.name is missing", i + 1))?;
                let namespace = policy
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let mut source = PolicySource::namespaced(namespace, name, policy.spec.policy);
                source.generation = policy.metadata.generation;
                sources.push(source);
            }
            "ClusterAgentPolicy" => {
                let policy: ClusterAgentPolicy = serde_yaml::from_value(value)
                    .map_err(|e| format!("document {} (ClusterAgentPolicy): {e}", i + 1))?;
                let name = policy
                    .metadata
                    .name
                    .clone()
                    .ok_or_else(|| format!("document {}: metadata.name is missing", i + 1))?;
                if policy.spec.namespace_selector.is_some() {
                    return Err(format!(
                        "document {}: ClusterAgentPolicy {name} has a namespaceSelector, which needs a cluster's namespace labels; \
                         outside a cluster remove it (the policy then applies to every namespace)",
                        i + 1
                    ));
                }
                let mut source =
                    PolicySource::cluster(name, NamespaceScope::All, policy.spec.policy);
                source.generation = policy.metadata.generation;
                sources.push(source);
            }
            other => {
                return Err(format!(
                    "document {}: kind {other:?} is not AgentPolicy or ClusterAgentPolicy",
                    i + 1
                ));
            }
        }
    }
    Ok(sources)
}

/// A policy directory and what was last loaded from each file.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    keys_by_file: BTreeMap<PathBuf, BTreeSet<String>>,
}

impl PolicyDir {
    /// A directory to load from.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            keys_by_file: BTreeMap::new(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Read every file into `catalog`. Files that fail to parse keep their previous policies and
    /// are returned as errors; policies of files that disappeared are removed.
    pub fn load_into(&mut self, catalog: &mut PolicyCatalog) -> Result<Vec<FileError>, FileError> {
        let files = policy_files(&self.dir).map_err(|e| FileError {
            path: self.dir.clone(),
            message: format!("cannot read directory: {e}"),
        })?;
        let mut errors = Vec::new();
        let mut next: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for path in files {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_policies(&t));
            match parsed {
                Ok(sources) => {
                    let mut keys = BTreeSet::new();
                    for source in sources {
                        let key = source.key();
                        if let Some(other) = seen.get(&key) {
                            errors.push(FileError {
                                path: path.clone(),
                                message: format!(
                                    "policy {key} is also defined in {}; this copy is ignored",
                                    other.display()
                                ),
                            });
                            continue;
                        }
                        seen.insert(key.clone(), path.clone());
                        catalog.upsert(source);
                        keys.insert(key);
                    }
                    next.insert(path, keys);
                }
                Err(message) => {
                    // Keep what this file contributed before.
                    let previous = self.keys_by_file.get(&path).cloned().unwrap_or_default();
                    for key in &previous {
                        seen.insert(key.clone(), path.clone());
                    }
                    next.insert(path.clone(), previous);
                    errors.push(FileError { path, message });
                }
            }
        }
        let keep: BTreeSet<String> = next.values().flatten().cloned().collect();
        catalog.retain(&keep);
        self.keys_by_file = next;
        Ok(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: support, namespace: agents}
spec:
  tools:
    - {name: read, tools: ["read_*"], effect: Allow}
---
apiVersion: agents.overseer.dev/v1alpha1
kind: ClusterAgentPolicy
metadata: {name: guardrails}
spec:
  tools:
    - {name: no-drop, tools: ["drop_*"], effect: Deny}
"#;

    #[test]
    fn parses_both_kinds_from_one_file() {
        let sources = parse_policies(POLICY).expect("parses");
        let keys: Vec<_> = sources.iter().map(PolicySource::key).collect();
        assert_eq!(keys, ["agents/support", "guardrails"]);
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        for (yaml, expect) in [
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}",
                "is not agents.overseer.dev/v1alpha1",
            ),
            (
                "apiVersion: agents.overseer.dev/v1alpha1\nkind: Foo\nmetadata: {name: x}",
                "is not AgentPolicy",
            ),
            (
                "apiVersion: agents.overseer.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {}\nspec: {}",
                "metadata.name is missing",
            ),
            (
                "apiVersion: agents.overseer.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: x}\nspec: {mode: Sometimes}",
                "unknown variant",
            ),
            ("a: [", "document 1"),
        ] {
            let err = parse_policies(yaml).expect_err(yaml);
            assert!(err.contains(expect), "{yaml}: {err}");
        }
    }

    #[test]
    fn hidden_entries_like_configmap_data_dirs_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("..data")).expect("mkdir");
        std::fs::write(dir.path().join("..data/p.yaml"), POLICY).expect("write");
        std::fs::write(dir.path().join("p.yaml"), POLICY).expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), "not: [yaml").expect("write");
        let files = policy_files(dir.path()).expect("lists");
        assert_eq!(files, vec![dir.path().join("p.yaml")]);
    }

    #[test]
    fn a_file_that_breaks_keeps_its_previous_policies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, POLICY).expect("write");
        let mut catalog = PolicyCatalog::new();
        let mut pd = PolicyDir::new(dir.path());
        assert!(pd.load_into(&mut catalog).expect("loads").is_empty());
        assert_eq!(catalog.len(), 2);

        std::fs::write(&file, "kind: [").expect("write");
        let errors = pd.load_into(&mut catalog).expect("loads");
        assert_eq!(errors.len(), 1);
        assert_eq!(catalog.len(), 2, "the broken file's policies still serve");

        std::fs::remove_file(&file).expect("rm");
        assert!(pd.load_into(&mut catalog).expect("loads").is_empty());
        assert!(catalog.is_empty(), "a removed file's policies are gone");
    }
}

//! Every sample in `examples/` parses through the Rust types and is checked against the generated
//! schema and its CEL rules: valid samples pass; each invalid sample fails with the message named
//! on its first line (`# expect: <text>`).

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use overseer_crds::{agents, fleet, runway};
use overseer_testing::CrdValidator;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && !path.ends_with("kustomization.yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Deserializes `object` into the Rust type of its kind (proving the types accept it) and returns
/// the CRD to validate it with; `Err` for a kind that is not Overseer's.
fn parse_typed(
    object: &Value,
) -> Result<
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    String,
> {
    fn typed<K: CustomResourceExt + serde::de::DeserializeOwned>(object: &Value) -> Result<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition, String>{
        serde_json::from_value::<K>(object.clone())
            .map_err(|e| format!("does not parse as {}: {e}", K::crd_name()))?;
        Ok(K::crd())
    }
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("agents.overseer.dev/v1alpha1", "AgentPolicy") => typed::<agents::AgentPolicy>(object),
        ("agents.overseer.dev/v1alpha1", "ClusterAgentPolicy") => {
            typed::<agents::ClusterAgentPolicy>(object)
        }
        ("agents.overseer.dev/v1alpha1", "AgentApproval") => typed::<agents::AgentApproval>(object),
        ("agents.overseer.dev/v1alpha1", "EphemeralIdentityClass") => {
            typed::<agents::EphemeralIdentityClass>(object)
        }
        ("agents.overseer.dev/v1alpha1", "EphemeralIdentity") => {
            typed::<agents::EphemeralIdentity>(object)
        }
        ("agents.overseer.dev/v1alpha1", "MCPServer") => typed::<agents::MCPServer>(object),
        ("runway.overseer.dev/v1alpha1", "InferenceRuntime") => {
            typed::<runway::InferenceRuntime>(object)
        }
        ("fleet.overseer.dev/v1alpha1", "FleetCluster") => typed::<fleet::FleetCluster>(object),
        ("fleet.overseer.dev/v1alpha1", "FleetRollout") => typed::<fleet::FleetRollout>(object),
        ("fleet.overseer.dev/v1alpha1", "FleetApproval") => typed::<fleet::FleetApproval>(object),
        _ => Err(format!("{api_version}/{kind} is not an Overseer kind")),
    }
}

fn load(path: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let object: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    (text, object)
}

#[test]
fn valid_samples_parse_and_validate() {
    let files: Vec<_> = yaml_files(&examples_dir())
        .into_iter()
        .filter(|p| !p.starts_with(examples_dir().join("invalid")))
        .collect();
    assert!(
        files.len() >= 9,
        "expected samples of every kind under examples/, found {}",
        files.len()
    );
    let mut kinds = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for path in &files {
        let (_, object) = load(path);
        match parse_typed(&object) {
            Err(e) => failures.push(format!("{}: {e}", path.display())),
            Ok(crd) => {
                kinds.insert(crd.spec.names.kind.clone());
                let validator = CrdValidator::new(&crd, None).expect("our CRDs compile");
                for error in validator.errors(&object) {
                    failures.push(format!("{}: {error}", path.display()));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invalid valid samples:\n{}",
        failures.join("\n")
    );
    let all: std::collections::BTreeSet<_> = overseer_crds::all_crds()
        .into_iter()
        .map(|c| c.spec.names.kind)
        .collect();
    let missing: Vec<_> = all.difference(&kinds).collect();
    assert!(missing.is_empty(), "no valid sample for {missing:?}");
}

#[test]
fn invalid_samples_fail_with_the_expected_message() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(
        !files.is_empty(),
        "expected invalid samples under examples/invalid/"
    );
    let mut failures = Vec::new();
    for path in &files {
        let (text, object) = load(path);
        let Some(expect) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
        else {
            failures.push(format!(
                "{}: first line must be `# expect: <message>`",
                path.display()
            ));
            continue;
        };
        // A sample the Rust types refuse is invalid too; the message must still match.
        let errors = match parse_typed(&object) {
            Err(e) => vec![e],
            Ok(crd) => CrdValidator::new(&crd, None)
                .expect("our CRDs compile")
                .errors(&object),
        };
        if errors.is_empty() {
            failures.push(format!(
                "{}: accepted, expected an error containing {expect:?}",
                path.display()
            ));
        } else if !errors.iter().any(|e| e.contains(expect)) {
            failures.push(format!(
                "{}: expected {expect:?}, got:\n  {}",
                path.display(),
                errors.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every Go-duration field is range-checked by a CEL rule, so the API server refuses a value the
/// operator could not read: kube's `Duration` parser panics on an inner negative piece (`1h-1m`)
/// and on overflow, and one such object would stop the controller that watches its kind.
#[test]
fn every_duration_field_refuses_what_the_operator_cannot_read() {
    let cases: &[(&str, &[&str])] = &[
        (
            "ephemeralidentityclass/ops-deploy.yaml",
            &["/spec/maxTtl", "/spec/defaultTtl", "/spec/recordRetention"],
        ),
        (
            "fleetrollout/platform-from-git.yaml",
            &["/spec/source/git/interval"],
        ),
        (
            "fleetrollout/agents-three-stages.yaml",
            &[
                "/spec/stages/0/gate/minBakeTime",
                "/spec/stages/0/gate/timeout",
                "/spec/stages/2/afterTasks/0/waitTime",
                "/spec/applyStrategy/driftCheckInterval",
            ],
        ),
        (
            "inferenceruntime/llm-d-disaggregated.yaml",
            &[
                "/spec/switchStrategy/progressDeadline",
                "/spec/switchStrategy/canarySteps/0/pause",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (file, pointers) in cases {
        let (_, object) = load(&examples_dir().join(file));
        let crd = parse_typed(&object).unwrap_or_else(|e| panic!("{file}: {e}"));
        let validator = CrdValidator::new(&crd, None).expect("our CRDs compile");
        assert!(
            validator.errors(&object).is_empty(),
            "{file} is valid as it is"
        );
        for pointer in *pointers {
            for bad in ["1h-1m", "99999999999999999999h", "-5m"] {
                let mut changed = object.clone();
                let (parent, field) = pointer.rsplit_once('/').expect("a field");
                let Some(Value::Object(map)) = changed.pointer_mut(parent) else {
                    panic!("{file}: no object at {parent}");
                };
                map.insert(field.to_owned(), Value::from(bad));
                if validator.errors(&changed).is_empty() {
                    failures.push(format!("{file}: {pointer} = {bad:?} is accepted"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

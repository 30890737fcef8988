//! The install manifests in `config/`, checked without a cluster or kubectl: every kustomization
//! resolves, every object parses into its Kubernetes type without losing a field (a misspelled
//! field fails), and the pieces agree with one another (Service ports name container ports, probes
//! use the health port, RBAC names only resources the CRDs define, the operator's ServiceAccount is
//! the one the admission policy trusts).
//!
//! This is the offline counterpart of `kubectl apply -k config/default --dry-run=client`, which
//! needs an API server for its REST mapping.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        apps::v1::Deployment,
        core::v1::{Namespace, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

const NAMESPACE: &str = "overseer-system";
const OPERATOR_SA: &str = "system:serviceaccount:overseer-system:overseer";

fn root() -> PathBuf {
    e2e::repo_root()
}

fn kustomization(dir: &Path) -> Value {
    let path = dir.join("kustomization.yaml");
    e2e::read_yaml(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

fn resources(kustomization: &Value) -> Vec<String> {
    kustomization["resources"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every object a kustomization directory renders (following directory resources), before
/// kustomize's transformations, with the file it came from.
fn objects(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for resource in resources(&kustomization(dir)) {
        let path = dir.join(&resource);
        assert!(
            path.exists(),
            "{}: resource {resource} does not exist",
            dir.display()
        );
        if path.is_dir() {
            assert!(
                path.join("kustomization.yaml").is_file(),
                "{}: no kustomization.yaml",
                path.display()
            );
            out.extend(objects(&path));
        } else {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value: Value = serde_json::to_value(
                    <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
                )
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if !value.is_null() {
                    out.push((path.clone(), value));
                }
            }
        }
    }
    out
}

/// Parse `value` as `T` and check nothing was lost on the way (unknown or misspelled fields).
fn typed<T: DeserializeOwned + Serialize>(path: &Path, value: &Value) -> T {
    let object: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let back = serde_json::to_value(&object).expect("serializes");
    let mut lost = Vec::new();
    diff("", value, &back, &mut lost);
    assert!(
        lost.is_empty(),
        "{}: fields not in the {} schema: {lost:?}",
        path.display(),
        value["kind"]
    );
    object
}

fn diff(at: &str, original: &Value, back: &Value, lost: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => diff(&format!("{at}.{key}"), value, other, lost),
                    None if is_empty(value) => {}
                    None => lost.push(format!("{at}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{at}[{i}]"), x, y, lost);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The rendered objects of config/default, grouped by kind.
fn default_objects() -> BTreeMap<String, Vec<(PathBuf, Value)>> {
    let mut by_kind: BTreeMap<String, Vec<(PathBuf, Value)>> = BTreeMap::new();
    for (path, value) in objects(&root().join("config/default")) {
        let kind = value["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", path.display()))
            .to_string();
        by_kind.entry(kind).or_default().push((path, value));
    }
    by_kind
}

fn one<T: DeserializeOwned + Serialize>(
    objects: &BTreeMap<String, Vec<(PathBuf, Value)>>,
    kind: &str,
    name: &str,
) -> T {
    let (path, value) = objects
        .get(kind)
        .and_then(|all| all.iter().find(|(_, v)| v["metadata"]["name"] == name))
        .unwrap_or_else(|| panic!("config/default has no {kind} {name}"));
    typed(path, value)
}

#[test]
fn every_kustomization_resolves_and_every_object_parses() {
    let objects = default_objects();
    let known = [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    for (kind, list) in &objects {
        assert!(
            known.contains(&kind.as_str()),
            "unexpected kind {kind} in config/default"
        );
        for (path, value) in list {
            match kind.as_str() {
                "CustomResourceDefinition" => {
                    typed::<CustomResourceDefinition>(path, value);
                }
                "Namespace" => {
                    typed::<Namespace>(path, value);
                }
                "ServiceAccount" => {
                    typed::<ServiceAccount>(path, value);
                }
                "ClusterRole" => {
                    typed::<ClusterRole>(path, value);
                }
                "ClusterRoleBinding" => {
                    typed::<ClusterRoleBinding>(path, value);
                }
                "Role" => {
                    typed::<Role>(path, value);
                }
                "RoleBinding" => {
                    typed::<RoleBinding>(path, value);
                }
                "Deployment" => {
                    typed::<Deployment>(path, value);
                }
                "Service" => {
                    typed::<Service>(path, value);
                }
                "PodDisruptionBudget" => {
                    typed::<PodDisruptionBudget>(path, value);
                }
                "ValidatingAdmissionPolicy" => {
                    typed::<ValidatingAdmissionPolicy>(path, value);
                }
                "ValidatingAdmissionPolicyBinding" => {
                    typed::<ValidatingAdmissionPolicyBinding>(path, value);
                }
                _ => unreachable!("checked above"),
            }
        }
    }
    // Namespaced objects already name overseer-system (the default kustomization also sets it).
    for kind in [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        for (path, value) in &objects[kind] {
            assert_eq!(
                value["metadata"]["namespace"],
                NAMESPACE,
                "{}: {kind}",
                path.display()
            );
        }
    }
}

#[test]
fn default_includes_crds_rbac_manager_and_admission() {
    let default = kustomization(&root().join("config/default"));
    let mut got = resources(&default);
    got.sort();
    assert_eq!(got, ["../admission", "../crd", "../manager", "../rbac"]);
}

#[test]
fn crd_kustomization_lists_every_generated_crd() {
    let dir = root().join("config/crd");
    let listed: BTreeSet<String> = resources(&kustomization(&dir)).into_iter().collect();
    let on_disk: BTreeSet<String> = e2e::yaml_files(&dir.join("bases"))
        .expect("bases")
        .iter()
        .filter_map(|p| {
            p.file_name()
                .map(|n| format!("bases/{}", n.to_string_lossy()))
        })
        .collect();
    assert_eq!(listed, on_disk);
}

#[test]
fn samples_kustomization_lists_every_valid_sample_but_approvals() {
    assert_eq!(
        resources(&kustomization(&root().join("config/samples"))),
        ["../../examples"]
    );
    let listed: BTreeSet<String> = resources(&kustomization(&root().join("examples")))
        .into_iter()
        .collect();
    let (valid, _) = e2e::load_samples().expect("samples");
    let expected: BTreeSet<String> = valid
        .iter()
        .filter(|s| !s.kind().ends_with(" AgentApproval"))
        .filter_map(|s| {
            s.path
                .strip_prefix("examples")
                .ok()
                .map(|p| p.display().to_string())
        })
        .collect();
    assert_eq!(listed, expected);
}

#[test]
fn deployment_is_hardened_and_wired_to_its_service() {
    let objects = default_objects();
    let deployment: Deployment = one(&objects, "Deployment", "overseer");
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2), "two replicas for leader election");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("overseer"));
    let pod_security = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let [container] = pod.containers.as_slice() else {
        panic!("one container")
    };
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/overseer-dev/overseer:latest")
    );
    // The arguments parse with overseer's own parser: `run`, serving the decision API on 8181
    // with its audit trail on stdout and its counters on a mounted volume.
    let args = container.args.clone().unwrap_or_default();
    let cli = {
        use clap::Parser as _;
        operator::cli::Cli::try_parse_from(std::iter::once("overseer".to_owned()).chain(args))
            .unwrap_or_else(|e| panic!("config/manager passes flags overseer rejects: {e}"))
    };
    let operator::cli::Command::Run(run) = cli.command else {
        panic!("the manager must run `overseer run`")
    };
    run.validate().expect("valid run flags");
    let decision = &run.decision;
    let decision_port = decision
        .decision_listen
        .expect("the decision API is served")
        .port();
    assert!(decision.decision_audit_stdout, "audit records on stdout");
    let state = decision
        .decision_state_file
        .clone()
        .expect("counters are persisted");
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| state.starts_with(&m.mount_path) && m.read_only != Some(true)),
        "{} is on a writable mount (the root filesystem is read-only)",
        state.display()
    );
    let security = container
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    let resources = container.resources.clone().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key(key)),
            "request {key}"
        );
        assert!(
            resources
                .limits
                .as_ref()
                .is_some_and(|r| r.contains_key(key)),
            "limit {key}"
        );
    }
    let env: BTreeMap<String, String> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.clone(), field.field_path.clone()))
        })
        .collect();
    // `overseer run` reads the Lease's namespace and its replica identity from these.
    assert_eq!(
        env,
        BTreeMap::from([
            (
                "OVERSEER_LEASE_NAMESPACE".to_string(),
                "metadata.namespace".to_string()
            ),
            ("POD_NAME".to_string(), "metadata.name".to_string()),
        ])
    );

    let ports: BTreeMap<String, i32> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    // The defaults of `overseer run --health-addr 0.0.0.0:8081 --metrics-addr 0.0.0.0:8080`
    // (the container sets neither flag) and the decision API's --decision-listen.
    assert_eq!(
        ports,
        BTreeMap::from([
            ("decisions".to_string(), i32::from(decision_port)),
            ("health".to_string(), 8081),
            ("metrics".to_string(), 8080)
        ])
    );
    let probe_port = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| (h.path.clone(), h.port.clone()))
    };
    assert_eq!(
        probe_port(&container.liveness_probe),
        Some((
            Some("/healthz".into()),
            IntOrString::String("health".into())
        ))
    );
    assert_eq!(
        probe_port(&container.readiness_probe),
        Some((Some("/readyz".into()), IntOrString::String("health".into())))
    );

    let service: Service = one(&objects, "Service", "overseer");
    let service_spec = service.spec.expect("service spec");
    let pod_labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let selector = service_spec.selector.unwrap_or_default();
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the Service selects the pods"
    );
    let mut exposed: Vec<(String, i32)> = Vec::new();
    for port in service_spec.ports.iter().flatten() {
        let Some(IntOrString::String(target)) = &port.target_port else {
            panic!("target ports are named")
        };
        assert!(
            ports.contains_key(target),
            "Service port {target} is a container port"
        );
        exposed.push((target.clone(), port.port));
    }
    exposed.sort();
    assert_eq!(
        exposed,
        [
            ("decisions".to_string(), 8181),
            ("metrics".to_string(), 8080)
        ]
    );
}

#[test]
fn the_decision_api_gets_exactly_what_it_uses() {
    let objects = default_objects();
    let role: ClusterRole = one(&objects, "ClusterRole", "overseer-manager-decisions");
    // Reviewing callers' tokens; everything else it touches is granted by role.yaml (reads,
    // AgentApproval status) and identity_role.yaml (AgentApproval creation, the kill switch).
    let expected: BTreeSet<(String, String, String)> =
        triples("authentication.k8s.io", "tokenreviews", &["create"])
            .into_iter()
            .collect();
    assert_eq!(grants(&role), expected);
    cluster_role_bound_to_the_operator(&objects, "overseer-manager-decisions");
}

/// Every (group, resource) the CRDs define, subresources included.
fn crd_resources() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for path in e2e::yaml_files(&root().join("config/crd/bases")).expect("bases") {
        let crd: CustomResourceDefinition = e2e::read_yaml(&path).expect("CRD");
        let plural = crd.spec.names.plural.clone();
        out.insert((crd.spec.group.clone(), plural.clone()));
        for version in &crd.spec.versions {
            if let Some(sub) = &version.subresources {
                if sub.status.is_some() {
                    out.insert((crd.spec.group.clone(), format!("{plural}/status")));
                }
                if sub.scale.is_some() {
                    out.insert((crd.spec.group.clone(), format!("{plural}/scale")));
                }
            }
        }
    }
    out
}

fn rules_of(role: &ClusterRole) -> Vec<PolicyRule> {
    role.rules.clone().unwrap_or_default()
}

#[test]
fn rbac_names_only_resources_that_exist_and_never_wildcards() {
    let objects = default_objects();
    let ours = crd_resources();
    for (path, value) in objects["ClusterRole"].iter().chain(&objects["Role"]) {
        let rules: Vec<PolicyRule> = serde_json::from_value(value["rules"].clone()).expect("rules");
        for rule in rules {
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(
                !groups.iter().any(|g| g == "*"),
                "{}: wildcard group",
                path.display()
            );
            assert!(
                !resources.iter().any(|r| r.contains('*')),
                "{}: wildcard resource",
                path.display()
            );
            assert!(
                !rule.verbs.iter().any(|v| v == "*" || v == "escalate"),
                "{}: verb",
                path.display()
            );
            for group in groups.iter().filter(|g| g.ends_with(".overseer.dev")) {
                for resource in &resources {
                    assert!(
                        ours.contains(&(group.clone(), resource.clone())),
                        "{}: {group}/{resource} is not defined by the CRDs",
                        path.display()
                    );
                }
            }
        }
    }
}

/// A role's permissions, as (group, resource, verb, object name) tuples; the name is empty
/// where a rule covers every object.
fn named_grants(role: &ClusterRole) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules_of(role) {
        assert!(rule.non_resource_urls.is_none());
        let names = match &rule.resource_names {
            Some(names) => {
                assert!(
                    !names.is_empty(),
                    "an empty resourceNames means every object"
                );
                names.clone()
            }
            None => vec![String::new()],
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

/// The operator's permissions, as (group, resource, verb) triples, from rules that name no objects.
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    named_grants(role)
        .into_iter()
        .map(|(group, resource, verb, name)| {
            assert!(
                name.is_empty(),
                "{group}/{resource} {verb} is limited to {name}"
            );
            (group, resource, verb)
        })
        .collect()
}

/// (group, resource, verb) triples for every verb in `verbs`.
fn triples(group: &str, resource: &str, verbs: &[&str]) -> Vec<(String, String, String)> {
    verbs
        .iter()
        .map(|verb| (group.to_string(), resource.to_string(), verb.to_string()))
        .collect()
}

/// Assert that the ClusterRoleBinding `name` binds the ClusterRole `name` to the operator's
/// ServiceAccount and nothing else.
fn cluster_role_bound_to_the_operator(
    objects: &BTreeMap<String, Vec<(PathBuf, Value)>>,
    name: &str,
) {
    let binding: ClusterRoleBinding = one(objects, "ClusterRoleBinding", name);
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", name)
    );
    bound_to_the_operator_only(binding.subjects, name);
}

/// Assert that `subjects` is the operator's ServiceAccount and nothing else.
fn bound_to_the_operator_only(
    subjects: Option<Vec<k8s_openapi::api::rbac::v1::Subject>>,
    binding: &str,
) {
    let subjects = subjects.unwrap_or_default();
    let [subject] = subjects.as_slice() else {
        panic!("{binding}: one subject")
    };
    let username = format!(
        "system:serviceaccount:{}:{}",
        subject.namespace.as_deref().unwrap_or_default(),
        subject.name
    );
    assert_eq!(
        (subject.kind.as_str(), username.as_str()),
        ("ServiceAccount", OPERATOR_SA),
        "{binding}"
    );
}

#[test]
fn the_operator_gets_exactly_what_it_uses() {
    let objects = default_objects();
    let manager: ClusterRole = one(&objects, "ClusterRole", "overseer-manager");
    let mut expected = BTreeSet::new();
    let mut add = |group: &str, resource: &str, verbs: &[&str]| {
        for verb in verbs {
            expected.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    };
    add(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        &["get", "list", "watch"],
    );
    add("events.k8s.io", "events", &["create", "patch"]);
    add("", "events", &["create", "patch"]);
    for (group, resource) in crd_resources() {
        if resource.ends_with("/status") {
            add(&group, &resource, &["patch", "update"]);
        } else if !resource.contains('/') {
            add(&group, &resource, &["get", "list", "watch"]);
        }
    }
    assert_eq!(grants(&manager), expected);

    let leases: Role = one(&objects, "Role", "overseer-leader-election");
    assert_eq!(leases.metadata.namespace.as_deref(), Some(NAMESPACE));
    let [rule] = leases.rules.as_deref().unwrap_or_default() else {
        panic!("one lease rule")
    };
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&["coordination.k8s.io".to_string()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["leases".to_string()][..]));
    let mut verbs = rule.verbs.clone();
    verbs.sort();
    // The Lease is read, created when absent, and acquired, renewed and released by patches.
    assert_eq!(verbs, ["create", "get", "patch"]);

    // The EphemeralIdentity controller: its children (issue, revoke, sweep), token requests,
    // namespaces and classes (decide), its own kind and status, approval requests; `bind` only on
    // vetted roles.
    let identity: ClusterRole = one(&objects, "ClusterRole", "overseer-identity-manager");
    let children = ["get", "list", "watch", "create", "patch", "delete"];
    let mut expected: BTreeSet<(String, String, String, String)> = [
        triples("", "serviceaccounts", &children),
        triples("", "secrets", &children),
        triples("", "serviceaccounts/token", &["create"]),
        triples("rbac.authorization.k8s.io", "roles", &children),
        triples("rbac.authorization.k8s.io", "rolebindings", &children),
        triples("", "namespaces", &["get", "list", "watch"]),
        triples(
            "agents.overseer.dev",
            "ephemeralidentityclasses",
            &["get", "list", "watch"],
        ),
        triples(
            "agents.overseer.dev",
            "ephemeralidentities",
            &["get", "list", "watch", "patch", "delete"],
        ),
        triples(
            "agents.overseer.dev",
            "ephemeralidentities/status",
            &["patch"],
        ),
        // Approval requests for classes with requireApproval (server-side apply creates them).
        triples(
            "agents.overseer.dev",
            "agentapprovals",
            &["create", "patch"],
        ),
        // Class status: may the operator bind each allowed ClusterRole?
        triples(
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            &["create"],
        ),
    ]
    .into_iter()
    .flatten()
    .map(|(group, resource, verb)| (group, resource, verb, String::new()))
    .collect();
    expected.insert((
        "rbac.authorization.k8s.io".to_string(),
        "clusterroles".to_string(),
        "bind".to_string(),
        "view".to_string(),
    ));
    assert_eq!(named_grants(&identity), expected);
    // What classes may grant in explicit rules: the operator must hold it to write such a Role.
    let grantable: ClusterRole = one(&objects, "ClusterRole", "overseer-identity-grantable");
    let expected: BTreeSet<_> = [
        triples("", "pods", &["get", "list"]),
        triples("", "pods/log", &["get", "list"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(grants(&grantable), expected);

    // Every role is bound to the operator's ServiceAccount, and to nothing else.
    for name in [
        "overseer-manager",
        "overseer-identity-manager",
        "overseer-identity-grantable",
    ] {
        cluster_role_bound_to_the_operator(&objects, name);
    }
    let role_binding: RoleBinding = one(&objects, "RoleBinding", "overseer-leader-election");
    assert_eq!(
        (
            role_binding.role_ref.kind.as_str(),
            role_binding.role_ref.name.as_str()
        ),
        ("Role", "overseer-leader-election")
    );
    bound_to_the_operator_only(role_binding.subjects, "overseer-leader-election");
    let _: ServiceAccount = one(&objects, "ServiceAccount", "overseer");
}

#[test]
fn user_roles_aggregate_and_approving_is_separate() {
    let objects = default_objects();
    let label = |role: &ClusterRole, key: &str| {
        role.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
            == Some("true")
    };
    let viewer: ClusterRole = one(&objects, "ClusterRole", "overseer-agents-viewer");
    assert!(label(
        &viewer,
        "rbac.authorization.k8s.io/aggregate-to-view"
    ));
    assert!(
        grants(&viewer)
            .iter()
            .all(|(_, _, verb)| ["get", "list", "watch"].contains(&verb.as_str()))
    );
    let editor: ClusterRole = one(&objects, "ClusterRole", "overseer-agents-editor");
    assert!(label(
        &editor,
        "rbac.authorization.k8s.io/aggregate-to-edit"
    ));
    assert!(!label(
        &editor,
        "rbac.authorization.k8s.io/aggregate-to-view"
    ));
    let approver: ClusterRole = one(&objects, "ClusterRole", "overseer-approver");
    assert!(grants(&approver).contains(&(
        "agents.overseer.dev".into(),
        "agentapprovals".into(),
        "patch".into()
    )));
    // Editors and viewers may not review approvals: that is the approver role's, which is not
    // aggregated into the built-in roles.
    for role in [&viewer, &editor] {
        assert!(
            !grants(role)
                .iter()
                .any(|(_, r, v)| r == "agentapprovals" && (v == "patch" || v == "update"))
        );
    }
    assert!(
        approver
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, _)| !k.starts_with("rbac.authorization.k8s.io/aggregate"))
    );
}

#[test]
fn admission_policy_trusts_the_operators_service_account() {
    let objects = default_objects();
    let policy: ValidatingAdmissionPolicy = one(
        &objects,
        "ValidatingAdmissionPolicy",
        "overseer-agentapproval-review",
    );
    let expressions: Vec<String> = policy
        .spec
        .and_then(|s| s.validations)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.expression)
        .collect();
    assert!(
        expressions
            .iter()
            .any(|e| e.contains(&format!("'{OPERATOR_SA}'")))
    );
    let _: ValidatingAdmissionPolicyBinding = one(
        &objects,
        "ValidatingAdmissionPolicyBinding",
        "overseer-agentapproval-review",
    );
    // The operator's token requests and Secret writes are narrowed to its own eid-* objects.
    let tokens: ValidatingAdmissionPolicy = one(
        &objects,
        "ValidatingAdmissionPolicy",
        "overseer-operator-tokens",
    );
    let conditions: Vec<String> = tokens
        .spec
        .and_then(|s| s.match_conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.expression)
        .collect();
    assert!(
        conditions
            .iter()
            .any(|e| e.contains(&format!("'{OPERATOR_SA}'"))),
        "{conditions:?}"
    );
    let _: ValidatingAdmissionPolicyBinding = one(
        &objects,
        "ValidatingAdmissionPolicyBinding",
        "overseer-operator-tokens",
    );
    let _: Namespace = one(&objects, "Namespace", NAMESPACE);
    let _: PodDisruptionBudget = one(&objects, "PodDisruptionBudget", "overseer");
}

/// The optional decision-service component: every object parses, its arguments are accepted by
/// `overseer serve` itself, and the Service reaches the container's port.
#[test]
fn decisions_component_runs_overseer_serve_with_valid_flags() {
    use clap::Parser;
    let objects = objects(&root().join("config/decisions"));
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["Deployment", "PersistentVolumeClaim", "Service"]);
    let (path, value) = objects
        .iter()
        .find(|(_, v)| v["kind"] == "Deployment")
        .expect("deployment");
    let deployment: Deployment = typed(path, value);
    let spec = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &spec.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let cli =
        operator::cli::Cli::try_parse_from(std::iter::once("overseer".to_owned()).chain(args))
            .unwrap_or_else(|e| panic!("config/decisions passes flags overseer rejects: {e}"));
    let operator::cli::Command::Serve(serve) = cli.command else {
        panic!("the container must run `overseer serve`")
    };
    assert!(
        !serve.insecure_no_auth,
        "the in-cluster decision service must authenticate callers"
    );
    assert_eq!(serve.listen.port(), 8181);
    let port = container
        .ports
        .as_ref()
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("decisions")))
        .expect("decisions port");
    assert_eq!(port.container_port, 8181);
    let (path, value) = objects
        .iter()
        .find(|(_, v)| v["kind"] == "Service")
        .expect("service");
    let service: Service = typed(path, value);
    let ports = service.spec.and_then(|s| s.ports).unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.port == 8181 && p.name.as_deref() == Some("decisions"))
    );
}

#[test]
fn the_runway_controller_gets_exactly_what_it_uses() {
    let objects = default_objects();
    let runway: ClusterRole = one(&objects, "ClusterRole", "overseer-manager-runway");
    let owned = ["get", "list", "watch", "create", "patch", "delete"];
    let expected: BTreeSet<(String, String, String)> = [
        // Revisions (ControllerRevisions) and the backend objects they own.
        triples("apps", "controllerrevisions", &owned),
        triples("apps", "deployments", &owned),
        triples("", "services", &owned),
        // The smoke test lists pods; the llm-d endpoint picker's Role grants the same.
        triples("", "pods", &["get", "list", "watch"]),
        // llm-d's endpoint picker identity (applied, checked, deleted; not watched).
        triples("", "serviceaccounts", &["get", "create", "patch", "delete"]),
        triples(
            "rbac.authorization.k8s.io",
            "roles",
            &["get", "create", "patch", "delete"],
        ),
        triples(
            "rbac.authorization.k8s.io",
            "rolebindings",
            &["get", "create", "patch", "delete"],
        ),
        triples(
            "inference.networking.x-k8s.io",
            "inferenceobjectives",
            &["get", "list", "watch"],
        ),
        triples(
            "inference.networking.x-k8s.io",
            "inferencemodelrewrites",
            &["get", "list", "watch"],
        ),
        triples("llm-d.ai", "inferenceobjectives", &["get", "list", "watch"]),
        triples(
            "llm-d.ai",
            "inferencemodelrewrites",
            &["get", "list", "watch"],
        ),
        triples("inference.networking.k8s.io", "inferencepools", &owned),
        triples("kaito.sh", "workspaces", &owned),
        triples("kaito.sh", "inferencesets", &owned),
        triples("nvidia.com", "dynamographdeployments", &owned),
        triples("serving.kserve.io", "inferenceservices", &owned),
        // The HTTPRoute is never deleted by the controller (garbage collection does it).
        triples(
            "gateway.networking.k8s.io",
            "httproutes",
            &["get", "list", "watch", "create", "patch"],
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(grants(&runway), expected);
    // Never more than the runway kinds' reads and status writes of the shared role.
    assert!(
        grants(&runway)
            .iter()
            .all(|(group, _, _)| !group.ends_with(".overseer.dev"))
    );
    cluster_role_bound_to_the_operator(&objects, "overseer-manager-runway");
}

#[test]
fn the_fleet_controllers_get_exactly_what_they_use() {
    let objects = default_objects();
    let fleet: ClusterRole = one(&objects, "ClusterRole", "overseer-manager-fleet");
    // Kubeconfig Secrets are read by name only: never listed, watched or written.
    let expected: BTreeSet<(String, String, String)> =
        triples("", "secrets", &["get"]).into_iter().collect();
    assert_eq!(grants(&fleet), expected);
    cluster_role_bound_to_the_operator(&objects, "overseer-manager-fleet");
}

#[test]
fn the_mcpserver_controller_gets_exactly_what_it_uses() {
    let objects = default_objects();
    let role: ClusterRole = one(&objects, "ClusterRole", "overseer-manager-mcpserver");
    // Credential Secrets are read by name only (does it exist, has it the key): never listed,
    // watched or written. Reading MCPServers and writing their status is role.yaml's.
    let expected: BTreeSet<(String, String, String)> =
        triples("", "secrets", &["get"]).into_iter().collect();
    assert_eq!(grants(&role), expected);
    cluster_role_bound_to_the_operator(&objects, "overseer-manager-mcpserver");
}

/// `config/gateway/{standalone,sidecar}`: the gateway container runs `overseer gateway` with flags
/// overseer accepts, asks the decision service, listens where its `mcp` port says, reads every
/// file from a mounted volume, and takes its upstreams from a ConfigMap holding a valid gateway
/// configuration (the sidecar: its pod's ServiceAccount is the agent's) or from MCPServer objects
/// it watches with RBAC of its own (standalone); no other container of the pod can get at an
/// upstream's credential.
#[test]
fn gateway_examples_run_overseer_gateway_with_valid_flags() {
    use clap::Parser;
    for (dir, loopback, watches) in [
        ("config/gateway/standalone", false, true),
        ("config/gateway/sidecar", true, false),
    ] {
        let objects = objects(&root().join(dir));
        let (path, value) = objects
            .iter()
            .find(|(_, v)| v["kind"] == "Deployment")
            .unwrap_or_else(|| panic!("{dir}: no Deployment"));
        let deployment: Deployment = typed(path, value);
        let spec = deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        let gateway = spec
            .containers
            .iter()
            .find(|c| c.name == "gateway")
            .unwrap_or_else(|| panic!("{dir}: no gateway container"));
        let args = gateway.args.clone().unwrap_or_default();
        let cli =
            operator::cli::Cli::try_parse_from(std::iter::once("overseer".to_owned()).chain(args))
                .unwrap_or_else(|e| panic!("{dir} passes flags overseer rejects: {e}"));
        let operator::cli::Command::Gateway(flags) = cli.command else {
            panic!("{dir}: the gateway container must run `overseer gateway`")
        };
        assert!(
            flags
                .decision_url
                .as_deref()
                .is_some_and(|u| u.contains("overseer-decisions.overseer-system.svc:8181")),
            "{dir}: decisions come from the decision service"
        );
        // tools/list is filtered by the same service (the cluster's AgentPolicy objects), not by
        // a local copy of policies that could drift from them.
        assert_eq!(flags.policies, None, "{dir}: no local policy copy");
        assert_eq!(
            flags.listen.ip().is_loopback(),
            loopback,
            "{dir}: listen address"
        );
        let port = gateway
            .ports
            .as_ref()
            .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("mcp")))
            .unwrap_or_else(|| panic!("{dir}: no mcp port"));
        assert_eq!(port.container_port, i32::from(flags.listen.port()));
        let mounts = gateway.volume_mounts.clone().unwrap_or_default();
        let mounted = |p: &Path| mounts.iter().any(|m| p.starts_with(&m.mount_path));
        let mut files = vec![flags.api_keys.clone(), flags.audit_file.clone()];
        files.extend(flags.config.clone());
        files.extend(flags.decision_api_key_file.clone());
        for file in &files {
            assert!(
                mounted(file),
                "{dir}: {} is on no mounted volume",
                file.display()
            );
        }
        audit_fits_its_volume(
            dir,
            &spec,
            gateway,
            &flags.audit_file,
            &flags.audit_rotation,
        );
        assert_eq!(
            flags.mcp_servers_namespace.is_some(),
            watches,
            "{dir}: --mcp-servers-namespace"
        );
        // The Secrets holding upstream credentials, which no other container may get at.
        let credential_secrets: BTreeSet<String> = match &flags.config {
            Some(config) => gateway_file_credentials(dir, &objects, &spec, &mounts, config),
            None => BTreeSet::new(),
        };
        let credential_secrets = match &flags.mcp_servers_namespace {
            Some(namespace) => {
                let from_objects = gateway_watch_rbac(dir, &objects, &spec, namespace);
                credential_secrets.union(&from_objects).cloned().collect()
            }
            None => credential_secrets,
        };
        assert!(
            !credential_secrets.is_empty(),
            "{dir}: shows an injected credential"
        );
        token_review_rbac(
            dir,
            &objects,
            &spec,
            value["metadata"]["namespace"].as_str().unwrap_or_default(),
            flags.tokens.token_review,
        );
        for other in spec.containers.iter().filter(|c| c.name != "gateway") {
            for m in other.volume_mounts.iter().flatten() {
                let secret = spec
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == m.name)
                    .and_then(|v| v.secret.as_ref()?.secret_name.clone());
                assert!(
                    secret.is_none_or(|s| !credential_secrets.contains(&s)),
                    "{dir}: container {} mounts the upstream credential {}",
                    other.name,
                    m.name
                );
            }
            for env in other.env.iter().flatten() {
                let secret = env
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .map(|s| s.name.clone());
                assert!(
                    secret.is_none_or(|s| !credential_secrets.contains(&s)),
                    "{dir}: container {} reads the upstream credential from the environment",
                    other.name
                );
            }
        }
    }
}

/// A gateway reading `--config`: the file is a ConfigMap of the kustomization holding a valid
/// gateway configuration whose credential files are mounted from Secrets. Returns those Secrets.
/// An audit file on an emptyDir cannot fill the node: the volume has a size limit, and the active
/// file with every rotated file kept fits inside it.
fn audit_fits_its_volume(
    dir: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    container: &k8s_openapi::api::core::v1::Container,
    audit_file: &Path,
    rotation: &operator::decision::standalone::AuditRotationArgs,
) {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| audit_file.starts_with(&m.mount_path))
        .unwrap_or_else(|| {
            panic!(
                "{dir}: the audit file {} is on no volume",
                audit_file.display()
            )
        });
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("{dir}: no volume {}", mount.name));
    let Some(empty_dir) = &volume.empty_dir else {
        return;
    };
    let limit = empty_dir
        .size_limit
        .as_ref()
        .unwrap_or_else(|| panic!("{dir}: the audit emptyDir {} has no sizeLimit", volume.name));
    let mib = match limit.0.strip_suffix("Gi") {
        Some(n) => n.parse::<u64>().map(|n| n * 1024),
        None => limit
            .0
            .strip_suffix("Mi")
            .unwrap_or(&limit.0)
            .parse::<u64>(),
    }
    .unwrap_or_else(|e| panic!("{dir}: sizeLimit {} is not NGi or NMi: {e}", limit.0));
    let keep = rotation.audit_keep_files.unwrap_or_else(|| {
        panic!(
            "{dir}: an audit log on an emptyDir must prune its rotated files (--audit-keep-files)"
        )
    });
    let most = (keep + 1) * rotation.audit_max_mib;
    assert!(
        most < mib,
        "{dir}: the audit log may grow to {most} MiB, past the {mib} MiB emptyDir"
    );
}

fn gateway_file_credentials(
    dir: &str,
    objects: &[(PathBuf, Value)],
    spec: &k8s_openapi::api::core::v1::PodSpec,
    mounts: &[k8s_openapi::api::core::v1::VolumeMount],
    config: &Path,
) -> BTreeSet<String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use operator::gateway::config::GatewayConfig;
    let volume_of = |file: &Path| {
        mounts
            .iter()
            .find(|m| file.starts_with(&m.mount_path))
            .map(|m| m.name.clone())
            .unwrap_or_else(|| panic!("{dir}: {} is not mounted", file.display()))
    };
    let config_volume = volume_of(config);
    let config_map_name = spec
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == config_volume))
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone())
        .unwrap_or_else(|| panic!("{dir}: the config volume is not a ConfigMap"));
    let (path, value) = objects
        .iter()
        .find(|(_, v)| {
            v["kind"] == "ConfigMap" && v["metadata"]["name"] == config_map_name.as_str()
        })
        .unwrap_or_else(|| {
            panic!("{dir}: ConfigMap {config_map_name} is not in the kustomization")
        });
    let config_map: ConfigMap = typed(path, value);
    let file_name = config
        .file_name()
        .and_then(|n| n.to_str())
        .expect("config file name");
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(file_name))
        .unwrap_or_else(|| panic!("{dir}: ConfigMap lacks {file_name}"));
    let config = GatewayConfig::from_yaml(text)
        .unwrap_or_else(|e| panic!("{dir}: invalid gateway configuration: {e}"));
    config
        .upstreams
        .iter()
        .filter_map(|u| u.credential.as_ref()?.from_file.clone())
        .map(|file| {
            let volume = volume_of(&file);
            spec.volumes
                .iter()
                .flatten()
                .find(|v| v.name == volume)
                .and_then(|v| v.secret.as_ref()?.secret_name.clone())
                .unwrap_or_else(|| panic!("{dir}: credential {} is not a Secret", file.display()))
        })
        .collect()
}

/// A gateway watching `MCPServer` objects of `namespace`: the objects of the kustomization are
/// valid (the CRD's schema and CEL rules, and what the gateway checks itself) and live there; the
/// pod runs as a ServiceAccount of its own with its token mounted, bound by a RoleBinding to a
/// Role granting exactly get/list/watch on mcpservers and get on the credential Secrets the
/// objects name, by name. Returns those Secrets.
fn gateway_watch_rbac(
    dir: &str,
    objects: &[(PathBuf, Value)],
    spec: &k8s_openapi::api::core::v1::PodSpec,
    namespace: &str,
) -> BTreeSet<String> {
    use kube::CustomResourceExt as _;
    use overseer_crds::agents::MCPServer;
    let validator = overseer_testing::CrdValidator::new(&MCPServer::crd(), None).expect("CRD");
    let mut secrets = BTreeSet::new();
    let mut servers = 0;
    for (path, value) in objects.iter().filter(|(_, v)| v["kind"] == "MCPServer") {
        servers += 1;
        let errors = validator.errors(value);
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        let server: MCPServer = typed(path, value);
        let name = server.metadata.name.clone().expect("name");
        assert_eq!(
            server.metadata.namespace.as_deref(),
            Some(namespace),
            "{dir}: MCPServer {name} is not in the watched namespace"
        );
        operator::gateway::mcpservers::upstream_of(namespace, &name, &server.spec, |_| {
            Ok("a-credential".to_owned())
        })
        .unwrap_or_else(|e| panic!("{dir}: MCPServer {name} cannot be served: {e}"));
        for reference in operator::gateway::mcpservers::secret_refs(&server.spec) {
            secrets.insert(reference.name.clone());
        }
    }
    assert!(servers > 0, "{dir}: watches MCPServers but defines none");

    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| panic!("{dir}: the gateway needs a ServiceAccount of its own"));
    assert_ne!(account, "default", "{dir}: a ServiceAccount of its own");
    assert_eq!(
        spec.automount_service_account_token,
        Some(true),
        "{dir}: the gateway needs its token to watch"
    );
    let of_kind = |kind: &'static str| {
        objects
            .iter()
            .filter(move |(_, v)| v["kind"] == kind && v["metadata"]["namespace"] == namespace)
    };
    let (path, value) = of_kind("ServiceAccount")
        .find(|(_, v)| v["metadata"]["name"] == account.as_str())
        .unwrap_or_else(|| panic!("{dir}: no ServiceAccount {account} in {namespace}"));
    let _: ServiceAccount = typed(path, value);
    let bindings: Vec<RoleBinding> = of_kind("RoleBinding")
        .map(|(path, value)| typed(path, value))
        .filter(|b: &RoleBinding| names_account(b.subjects.as_deref(), &account, namespace))
        .collect();
    let [binding] = bindings.as_slice() else {
        panic!(
            "{dir}: one RoleBinding for {account}, found {}",
            bindings.len()
        )
    };
    assert_eq!(
        binding.role_ref.kind, "Role",
        "{dir}: bound to a Role, not cluster-wide"
    );
    let (path, value) = of_kind("Role")
        .find(|(_, v)| v["metadata"]["name"] == binding.role_ref.name.as_str())
        .unwrap_or_else(|| panic!("{dir}: Role {} is missing", binding.role_ref.name));
    let role: Role = typed(path, value);
    let as_cluster_role = ClusterRole {
        rules: role.rules.clone(),
        ..ClusterRole::default()
    };
    let mut expected: BTreeSet<(String, String, String, String)> = triples(
        "agents.overseer.dev",
        "mcpservers",
        &["get", "list", "watch"],
    )
    .into_iter()
    .map(|(group, resource, verb)| (group, resource, verb, String::new()))
    .collect();
    for secret in &secrets {
        expected.insert((
            String::new(),
            "secrets".to_owned(),
            "get".to_owned(),
            secret.clone(),
        ));
    }
    assert_eq!(
        named_grants(&as_cluster_role),
        expected,
        "{dir}: the gateway's Role"
    );
    secrets
}

/// With `--token-review` (`token_review`), the pod runs as a ServiceAccount of its own, in
/// `namespace`, with its token mounted, bound cluster-wide to a ClusterRole granting exactly
/// `create` on tokenreviews and nothing else; without it, no binding reaches that account.
fn token_review_rbac(
    dir: &str,
    objects: &[(PathBuf, Value)],
    spec: &k8s_openapi::api::core::v1::PodSpec,
    namespace: &str,
    token_review: bool,
) {
    let Some(account) = spec.service_account_name.clone() else {
        assert!(
            !token_review,
            "{dir}: --token-review needs a ServiceAccount of its own"
        );
        return;
    };
    let bindings: Vec<ClusterRoleBinding> = objects
        .iter()
        .filter(|(_, v)| v["kind"] == "ClusterRoleBinding")
        .map(|(path, value)| typed(path, value))
        .filter(|b: &ClusterRoleBinding| names_account(b.subjects.as_deref(), &account, namespace))
        .collect();
    if !token_review {
        assert!(
            bindings.is_empty(),
            "{dir}: {account} is bound cluster-wide without --token-review"
        );
        return;
    }
    assert_ne!(account, "default", "{dir}: a ServiceAccount of its own");
    assert_eq!(
        spec.automount_service_account_token,
        Some(true),
        "{dir}: --token-review needs the pod's token"
    );
    assert!(
        objects.iter().any(|(_, v)| v["kind"] == "ServiceAccount"
            && v["metadata"]["name"] == account.as_str()
            && v["metadata"]["namespace"] == namespace),
        "{dir}: no ServiceAccount {account} in {namespace}"
    );
    let [binding] = bindings.as_slice() else {
        panic!(
            "{dir}: one ClusterRoleBinding for {account}, found {}",
            bindings.len()
        )
    };
    assert_eq!(
        binding.subjects.as_ref().map(Vec::len),
        Some(1),
        "{dir}: the binding names {account} only"
    );
    let (path, value) = objects
        .iter()
        .find(|(_, v)| {
            v["kind"] == "ClusterRole" && v["metadata"]["name"] == binding.role_ref.name.as_str()
        })
        .unwrap_or_else(|| panic!("{dir}: ClusterRole {} is missing", binding.role_ref.name));
    let role: ClusterRole = typed(path, value);
    assert_eq!(
        grants(&role),
        triples("authentication.k8s.io", "tokenreviews", &["create"])
            .into_iter()
            .collect(),
        "{dir}: cluster-wide it may only review tokens"
    );
}

#[test]
fn the_fleet_rollout_controller_gets_exactly_what_it_uses() {
    let objects = default_objects();
    let role: ClusterRole = one(&objects, "ClusterRole", "overseer-manager-fleetrollout");
    // Approvals by server-side apply (create or patch); snapshots and ConfigMap sources (read,
    // apply, list by label and delete old revisions); Flux sources read by name. Nothing is
    // watched here: the watches are covered by role.yaml's reads.
    let expected: BTreeSet<(String, String, String)> = [
        triples("fleet.overseer.dev", "fleetapprovals", &["create", "patch"]),
        triples(
            "",
            "configmaps",
            &["get", "list", "create", "patch", "delete"],
        ),
        triples("source.toolkit.fluxcd.io", "gitrepositories", &["get"]),
        triples("source.toolkit.fluxcd.io", "ocirepositories", &["get"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(grants(&role), expected);
    cluster_role_bound_to_the_operator(&objects, "overseer-manager-fleetrollout");
}

#[test]
fn ext_authz_component_runs_overseer_ext_authz_and_envoy_points_at_it() {
    use clap::Parser;
    let dir = root().join("config/extauthz");
    let found = objects(&dir);
    let mut kinds: Vec<String> = found
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            "ServiceAccount"
        ]
    );
    let (path, value) = found
        .iter()
        .find(|(_, v)| v["kind"] == "Deployment")
        .expect("deployment");
    let deployment: Deployment = typed(path, value);
    let spec = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let container = &spec.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let cli =
        operator::cli::Cli::try_parse_from(std::iter::once("overseer".to_owned()).chain(args))
            .unwrap_or_else(|e| panic!("config/extauthz passes flags overseer rejects: {e}"));
    let operator::cli::Command::ExtAuthz(ext) = cli.command else {
        panic!("the container must run `overseer ext-authz`")
    };
    assert!(
        ext.tokens.token_review,
        "agents may present their own tokens"
    );
    assert_eq!(ext.tokens.token_audiences, ["overseer-ext-authz"]);
    audit_fits_its_volume(
        "config/extauthz",
        &spec,
        container,
        &ext.audit_file,
        &ext.audit_rotation,
    );
    token_review_rbac("config/extauthz", &found, &spec, "overseer-system", true);
    assert_eq!(ext.listen.port(), 9191);
    let decision_url = ext.decision_url.clone().expect("asks the decision service");
    assert!(
        decision_url.starts_with("http://overseer-decisions.overseer-system.svc:8181"),
        "{decision_url}"
    );
    assert!(
        ext.decision_api_key_file.is_some(),
        "authenticates to the decision service"
    );
    // The decision service it asks is the one config/decisions serves.
    let decisions = objects(&root().join("config/decisions"));
    let (path, value) = decisions
        .iter()
        .find(|(_, v)| v["kind"] == "Service")
        .expect("decisions service");
    let decisions_service: Service = typed(path, value);
    assert_eq!(
        decisions_service.metadata.name.as_deref(),
        Some("overseer-decisions")
    );
    let port = container
        .ports
        .as_ref()
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("grpc")))
        .expect("grpc port");
    assert_eq!(port.container_port, 9191);
    // Every mounted volume exists and the key files sit under their mounts.
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    let volumes: BTreeSet<String> = spec
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    for mount in &mounts {
        assert!(
            volumes.contains(&mount.name),
            "volume {} is missing",
            mount.name
        );
    }
    for file in [
        ext.api_keys.as_ref().expect("agent keys"),
        ext.decision_api_key_file.as_ref().expect("key"),
    ] {
        assert!(
            mounts
                .iter()
                .any(|m| file.starts_with(&m.mount_path) && m.read_only == Some(true)),
            "{} is not on a read-only mount",
            file.display()
        );
    }
    let (path, value) = found
        .iter()
        .find(|(_, v)| v["kind"] == "Service")
        .expect("service");
    let service: Service = typed(path, value);
    let service_name = service.metadata.name.clone().expect("name");
    let ports = service.spec.and_then(|s| s.ports).unwrap_or_default();
    let grpc = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .expect("grpc service port");
    assert_eq!(grpc.target_port, Some(IntOrString::String("grpc".into())));
    assert_eq!(grpc.app_protocol.as_deref(), Some("grpc"));

    // The Envoy example: ext_authz before the router, the body forwarded, fail closed, HTTP/2
    // to this Service, and a timeout longer than ext-authz's own decision deadline.
    let envoy: Value = e2e::read_yaml(&dir.join("envoy.yaml")).unwrap_or_else(|e| panic!("{e:#}"));
    let manager = &envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = manager["http_filters"].as_array().expect("http_filters");
    let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    );
    let ext_authz = &filters[0]["typed_config"];
    assert_eq!(
        ext_authz["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
    );
    assert_eq!(ext_authz["transport_api_version"], "V3");
    assert_eq!(ext_authz["failure_mode_allow"], false, "fail closed");
    let body = &ext_authz["with_request_body"];
    assert_eq!(body["allow_partial_message"], false);
    let max_bytes = body["max_request_bytes"]
        .as_u64()
        .expect("max_request_bytes");
    assert!(
        max_bytes <= ext.max_body_kib * 1024,
        "Envoy forwards bodies ext-authz would refuse as too large"
    );
    let timeout = ext_authz["grpc_service"]["timeout"]
        .as_str()
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse::<f64>().ok())
        .expect("grpc_service timeout in seconds");
    assert!(
        timeout * 1000.0 > ext.decision_timeout_ms as f64,
        "Envoy must wait longer than ext-authz waits for a decision"
    );
    let cluster_name = ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .expect("cluster_name");
    let cluster = envoy["static_resources"]["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == cluster_name))
        .expect("the ext_authz cluster is defined");
    assert!(
        cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            .get("http2_protocol_options")
            .is_some(),
        "gRPC needs HTTP/2 to the ext_authz cluster"
    );
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(
        address["address"],
        format!("{service_name}.overseer-system.svc")
    );
    assert_eq!(address["port_value"], i64::from(grpc.port));
    // The MCP route names its server for policies and is below an --mcp-path.
    let route = &manager["route_config"]["virtual_hosts"][0]["routes"][0];
    let prefix = route["match"]["prefix"].as_str().expect("prefix");
    assert!(ext.mcp_paths.iter().any(|p| p == prefix), "{prefix}");
    assert!(
        route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]
            ["context_extensions"][operator::extauthz::SERVER_EXTENSION]
            .is_string()
    );
}

/// Whether a binding's `subjects` name the ServiceAccount `account` of `namespace`.
fn names_account(
    subjects: Option<&[k8s_openapi::api::rbac::v1::Subject]>,
    account: &str,
    namespace: &str,
) -> bool {
    subjects.into_iter().flatten().any(|s| {
        s.kind == "ServiceAccount" && s.name == account && s.namespace.as_deref() == Some(namespace)
    })
}

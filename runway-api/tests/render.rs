//! Renders every backend and checks every object: custom kinds against the real upstream CRD
//! schemas (OpenAPI v3 with unknown fields rejected, plus CEL rules), built-in kinds by a strict
//! round trip through the k8s-openapi types (which drop unknown fields, so a misspelled field
//! shows up as a difference).

mod fixtures;

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use overseer_crds::runway::{BackendKind, GatewayRef};
use overseer_testing::{CrdValidator, upstream};
use runway_api::{
    REVISION_LABEL, RUNTIME_LABEL, backend_for,
    endpoint::{self, WeightedBackend},
};
use serde_json::Value;

use fixtures::*;

struct Validators {
    by_kind: BTreeMap<&'static str, CrdValidator>,
}

impl Validators {
    fn load() -> Self {
        let by_kind = BTreeMap::from([
            (
                "Workspace",
                upstream("kaito/kaito.sh_workspaces.yaml", Some("v1beta1")),
            ),
            (
                "InferenceSet",
                upstream("kaito/kaito.sh_inferencesets.yaml", Some("v1beta1")),
            ),
            (
                "InferencePool",
                upstream(
                    "gateway-api-inference-extension/inference.networking.k8s.io_inferencepools.yaml",
                    Some("v1"),
                ),
            ),
            (
                "DynamoGraphDeployment",
                upstream(
                    "dynamo/nvidia.com_dynamographdeployments.yaml",
                    Some("v1beta1"),
                ),
            ),
            (
                "InferenceService",
                upstream(
                    "kserve/serving.kserve.io_inferenceservices.yaml",
                    Some("v1beta1"),
                ),
            ),
            (
                "HTTPRoute",
                upstream(
                    "gateway-api/gateway.networking.k8s.io_httproutes.yaml",
                    Some("v1"),
                ),
            ),
        ]);
        Self { by_kind }
    }

    /// Every problem with `obj`, empty when it is valid.
    fn check(&self, obj: &Value) -> Vec<String> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let mut errors = check_meta(obj);
        match kind {
            "Deployment" => errors.extend(round_trip::<Deployment>(obj)),
            "Service" => errors.extend(round_trip::<Service>(obj)),
            "ConfigMap" => errors.extend(round_trip::<ConfigMap>(obj)),
            "ServiceAccount" => errors.extend(round_trip::<ServiceAccount>(obj)),
            "Role" => errors.extend(round_trip::<Role>(obj)),
            "RoleBinding" => errors.extend(round_trip::<RoleBinding>(obj)),
            other => match self.by_kind.get(other) {
                Some(v) => errors.extend(v.errors(obj)),
                None => errors.push(format!("no validator for kind {other}")),
            },
        }
        errors
    }
}

/// apiVersion/kind/metadata are complete and carry the runway labels.
fn check_meta(obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for field in [
        "/apiVersion",
        "/kind",
        "/metadata/name",
        "/metadata/namespace",
    ] {
        if obj
            .pointer(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errors.push(format!("missing {field}"));
        }
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.len() > 63 {
        errors.push(format!("name {name} is longer than 63"));
    }
    let labels = obj.pointer("/metadata/labels");
    for (k, want) in [
        ("app.kubernetes.io/managed-by", Some("overseer")),
        (RUNTIME_LABEL, Some(RUNTIME)),
        (REVISION_LABEL, None),
    ] {
        let got = labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        if got.is_none() || want.is_some_and(|w| got != Some(w)) {
            errors.push(format!("label {k} is {got:?}"));
        }
    }
    if obj.pointer("/metadata/ownerReferences/0/controller") != Some(&Value::Bool(true)) {
        errors.push("no controller owner reference".into());
    }
    errors
}

/// Deserialize into the typed object and back; any field the type does not know is lost, and
/// the difference is reported.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(obj: &Value) -> Vec<String> {
    let typed: T = match serde_json::from_value(obj.clone()) {
        Ok(t) => t,
        Err(e) => return vec![format!("does not deserialize: {e}")],
    };
    let back = serde_json::to_value(&typed).unwrap_or(Value::Null);
    let mut diffs = Vec::new();
    diff("", obj, &back, &mut diffs);
    diffs
}

fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(&format!("{path}/{k}"), v, w, out),
                    None => out.push(format!(
                        "{path}/{k}: unknown field (dropped by the typed round trip)"
                    )),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}/{i}"), x, y, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: rendered {want} but reads back as {got}")),
    }
}

#[test]
fn every_backend_renders_valid_objects() {
    let validators = Validators::load();
    let owner = owner();
    let mut checked = BTreeMap::<String, usize>::new();
    for (label, spec, replicas) in cases() {
        let minted = mint(&spec);
        let input = input(&spec, &minted, replicas, &owner);
        let backend = backend_for(spec.engine.backend);
        let objects = backend
            .render(&input)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(!objects.is_empty(), "{label}");
        for obj in &objects {
            let errors = validators.check(obj);
            assert!(
                errors.is_empty(),
                "{label}: {} {} is invalid:\n{}",
                obj["kind"],
                obj["metadata"]["name"],
                errors.join("\n")
            );
            *checked
                .entry(obj["kind"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
        // The endpoint Service built from the backend's endpoint is valid too.
        let target = backend.endpoint(&input);
        let svc = endpoint::endpoint_service(RUNTIME, NAMESPACE, &spec, &target, Some(&owner))
            .expect("endpoint service");
        assert!(round_trip::<Service>(&svc).is_empty(), "{label}: {svc}");
    }
    for kind in [
        "Workspace",
        "InferenceSet",
        "InferencePool",
        "DynamoGraphDeployment",
        "InferenceService",
        "Deployment",
        "Service",
        "ConfigMap",
        "Role",
    ] {
        assert!(
            checked.contains_key(kind),
            "no {kind} was rendered: {checked:?}"
        );
    }
}

#[test]
fn the_validators_catch_a_misspelled_field() {
    let validators = Validators::load();
    let owner = owner();
    for (backend, pointer, wrong) in [
        (BackendKind::LlmD, "/spec", "endpointPickerReff"),
        (BackendKind::Dynamo, "/spec", "backendFrameworks"),
        (BackendKind::Kserve, "/spec/predictor", "minReplica"),
        (BackendKind::Kaito, "", "inferences"),
        (BackendKind::Vllm, "/spec/template/spec", "nodeSelectr"),
    ] {
        let spec = fixtures::gpu(backend);
        let minted = mint(&spec);
        let input = input(&spec, &minted, 1, &owner);
        let objects = backend_for(backend).render(&input).expect("renders");
        let mut obj = objects
            .into_iter()
            .find(|o| {
                matches!(
                    o["kind"].as_str(),
                    Some(
                        "InferencePool"
                            | "DynamoGraphDeployment"
                            | "InferenceService"
                            | "Workspace"
                            | "Deployment"
                    )
                )
            })
            .expect("primary object");
        obj.pointer_mut(pointer)
            .and_then(Value::as_object_mut)
            .expect("object")
            .insert(wrong.into(), Value::Bool(true));
        assert!(
            !validators.check(&obj).is_empty(),
            "{backend:?}: {wrong} was accepted"
        );
    }
}

#[test]
fn http_route_validates_for_blue_green_and_canary() {
    let validators = Validators::load();
    let owner = owner();
    let active_spec = fixtures::gpu(BackendKind::Kaito);
    let candidate_spec = fixtures::gpu(BackendKind::LlmD);
    let (a, c) = (mint(&active_spec), mint(&candidate_spec));
    let active = backend_for(BackendKind::Kaito).route_backend(&input(&active_spec, &a, 1, &owner));
    let candidate =
        backend_for(BackendKind::LlmD).route_backend(&input(&candidate_spec, &c, 1, &owner));
    let gateway = GatewayRef {
        name: "inference-gw".into(),
        namespace: Some("gw".into()),
        section_name: Some("http".into()),
        hostnames: vec!["models.example.com".into()],
    };
    for [wa, wc] in [
        endpoint::split(None, false),
        endpoint::split(Some(10), false),
        endpoint::split(None, true),
    ] {
        let route = endpoint::http_route(
            RUNTIME,
            NAMESPACE,
            &gateway,
            &[
                WeightedBackend {
                    backend: active.clone(),
                    weight: wa,
                },
                WeightedBackend {
                    backend: candidate.clone(),
                    weight: wc,
                },
            ],
            Some(&owner),
        )
        .expect("route");
        let errors = validators.by_kind["HTTPRoute"].errors(&route);
        assert!(errors.is_empty(), "{route}\n{}", errors.join("\n"));
        let refs = route
            .pointer("/spec/rules/0/backendRefs")
            .and_then(Value::as_array)
            .expect("refs");
        assert_eq!(refs[0]["weight"], wa);
        assert_eq!(refs[1]["weight"], wc);
        assert_eq!(refs[1]["kind"], "InferencePool");
        assert!(refs[1].get("port").is_none());
        assert_eq!(refs[0]["port"], 80);
    }
    // A Service backend without a port is refused rather than rendered invalid.
    let mut portless = active.clone();
    portless.port = None;
    assert!(
        endpoint::http_route(
            RUNTIME,
            NAMESPACE,
            &gateway,
            &[WeightedBackend {
                backend: portless,
                weight: 1
            }],
            None
        )
        .is_err()
    );
    assert!(endpoint::http_route(RUNTIME, NAMESPACE, &gateway, &[], None).is_err());
}

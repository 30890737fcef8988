//! `kaito`: a KAITO `Workspace` (one replica) or `InferenceSet` (any other count).

use std::collections::BTreeMap;

use overseer_crds::runway::{BackendKind, InferenceRuntimeSpec};
use serde_json::{Map, Value, json};

use crate::{
    Backend, EndpointTarget, RenderError, RenderInput, RequiredApi, RevisionReadiness,
    RouteBackend, ValidationIssue,
    backend::{finish, refuse_disaggregated, require_gpu, validate_spec},
    meta::{RUNTIME_LABEL, label_value, map, object, object_meta, selector_json},
    model::ModelSource,
    pod::{self, HF_TOKEN_ENV},
    readiness::{self, Part},
};

/// API version of KAITO's kinds.
const API_VERSION: &str = "kaito.sh/v1beta1";
/// Port KAITO's inference server listens on inside its pods.
const KAITO_PORT: i32 = 5000;
/// Port of the Service KAITO creates for a Workspace.
const KAITO_SERVICE_PORT: i32 = 80;
/// Label KAITO puts on a Workspace's pods.
const WORKSPACE_POD_LABEL: &str = "kaito.sh/workspace";
/// Label the InferenceSet controller puts on the Workspaces and pods it creates.
const INFERENCESET_POD_LABEL: &str = "inferenceset.kaito.sh/created-by";
/// Node label of NVIDIA GPU feature discovery naming the GPU product.
const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Key of the inference ConfigMap KAITO reads.
const CONFIG_KEY: &str = "inference_config.yaml";

/// The `kaito` backend.
///
/// One replica renders a `kaito.sh/v1beta1` `Workspace`; any other count (including 0, for a
/// revision kept for rollback, which a Workspace cannot express) renders an `InferenceSet` with
/// that many replicas. Both run a preset (`preset://name`) or — KAITO ≥ v0.9 — any
/// vLLM-compatible Hugging Face model (`hf://org/name`, passed as the preset name). Engine args
/// and the served name go into an inference ConfigMap (`vllm:` section) that `inference.config`
/// names. Nodes: `accelerator.instanceType` asks KAITO to provision that SKU;
/// `accelerator.product` (→ `nvidia.com/gpu.product`) and `placement.nodeSelector` select
/// existing GPU nodes. CPU and memory requests are KAITO's to decide from the SKU and are not
/// rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kaito;

fn uses_workspace(replicas: i32) -> bool {
    replicas == 1
}

fn config_name(revision: &str) -> String {
    format!("{revision}-inference-config")
}

/// Nodes the Workspace's pods may use: the placement's node selector, the GPU product for
/// existing nodes, and the runtime label for provisioned ones.
fn node_labels(spec: &InferenceRuntimeSpec, runtime_name: &str) -> BTreeMap<String, String> {
    let mut labels = spec
        .placement
        .as_ref()
        .map(|p| p.node_selector.clone())
        .unwrap_or_default();
    if let Some(acc) = &spec.resources.accelerator {
        match (&acc.instance_type, &acc.product) {
            (Some(_), _) => {
                labels.insert(RUNTIME_LABEL.into(), label_value(runtime_name));
            }
            (None, Some(product)) => {
                labels.insert(GPU_PRODUCT_LABEL.into(), product.clone());
            }
            (None, None) => {}
        }
    }
    labels
}

/// The `inference` section shared by both kinds.
fn inference(input: &RenderInput<'_>) -> Value {
    let spec = input.spec;
    let preset_name = match ModelSource::parse(&spec.model.uri) {
        Ok(ModelSource::Preset(name) | ModelSource::HuggingFace(name)) => name.to_string(),
        _ => spec.model.uri.clone(),
    };
    let mut preset = Map::new();
    preset.insert("name".into(), preset_name.into());
    if let Some(secret) = &spec.model.token_secret_ref {
        preset.insert(
            "presetOptions".into(),
            json!({"modelAccessSecret": secret.name}),
        );
    }
    json!({"preset": Value::Object(preset), "config": config_name(input.revision_name)})
}

/// The `resource` section shared by both kinds.
fn resource(input: &RenderInput<'_>) -> Value {
    let mut resource = Map::new();
    if let Some(instance_type) = input
        .spec
        .resources
        .accelerator
        .as_ref()
        .and_then(|a| a.instance_type.as_ref())
    {
        resource.insert("instanceType".into(), instance_type.clone().into());
    }
    resource.insert(
        "labelSelector".into(),
        json!({"matchLabels": selector_json(&node_labels(input.spec, input.runtime_name))}),
    );
    Value::Object(resource)
}

/// An InferenceSet's Workspace template: the instance type (its label selector is the set's) and
/// the inference section.
fn template(input: &RenderInput<'_>) -> Value {
    let mut template = Map::new();
    if let Some(instance_type) = input
        .spec
        .resources
        .accelerator
        .as_ref()
        .and_then(|a| a.instance_type.as_ref())
    {
        template.insert("resource".into(), json!({"instanceType": instance_type}));
    }
    template.insert("inference".into(), inference(input));
    Value::Object(template)
}

/// The inference ConfigMap: KAITO's `inference_config.yaml` with a `vllm:` section holding the
/// served name and the engine args (JSON is YAML; an empty value is a bare flag → `true`).
fn config_map(input: &RenderInput<'_>) -> Value {
    let mut vllm = Map::new();
    vllm.insert("served-model-name".into(), pod::served(input.spec).into());
    for (key, value) in &input.spec.engine.args {
        let v = if value.is_empty() {
            Value::Bool(true)
        } else {
            Value::String(value.clone())
        };
        vllm.insert(key.clone(), v);
    }
    let yaml = json!({"vllm": Value::Object(vllm)}).to_string();
    object(
        "v1",
        "ConfigMap",
        object_meta(input, &config_name(input.revision_name), Some("config")),
        [("data", json!({CONFIG_KEY: yaml}))],
    )
}

impl Backend for Kaito {
    fn kind(&self) -> BackendKind {
        BackendKind::Kaito
    }

    fn validate(&self, spec: &InferenceRuntimeSpec) -> Result<(), Vec<ValidationIssue>> {
        let mut own = Vec::new();
        require_gpu(spec, "kaito", &mut own);
        refuse_disaggregated(spec, "kaito", &mut own);
        if let Ok(ModelSource::Pvc { .. }) = ModelSource::parse(&spec.model.uri) {
            own.push(ValidationIssue::new(
                "spec.model.uri",
                "KAITO runs presets (preset://name) and Hugging Face models (hf://org/name), not pvc:// weights; use the vllm backend for those",
            ));
        }
        if let Some(acc) = &spec.resources.accelerator {
            let selects_nodes = spec
                .placement
                .as_ref()
                .is_some_and(|p| !p.node_selector.is_empty());
            if acc.instance_type.is_none() && acc.product.is_none() && !selects_nodes {
                own.push(ValidationIssue::new(
                    "spec.resources.accelerator",
                    "KAITO needs GPU nodes: set accelerator.instanceType (KAITO provisions that SKU), or accelerator.product or placement.nodeSelector (existing GPU nodes)",
                ));
            }
        }
        if let Some(secret) = &spec.model.token_secret_ref
            && secret.key != HF_TOKEN_ENV
        {
            own.push(ValidationIssue::new(
                "spec.model.tokenSecretRef.key",
                format!("KAITO reads the token from the key {HF_TOKEN_ENV} of the Secret; store it there"),
            ));
        }
        if spec.engine.image.is_some() {
            own.push(ValidationIssue::new(
                "spec.engine.image",
                "KAITO picks the image of its preset; remove engine.image (or use the vllm backend)",
            ));
        }
        if !spec.engine.env.is_empty() {
            own.push(ValidationIssue::new(
                "spec.engine.env",
                "KAITO presets take no extra environment; remove engine.env (or use the vllm backend)",
            ));
        }
        if spec
            .placement
            .as_ref()
            .is_some_and(|p| !p.tolerations.is_empty())
        {
            own.push(ValidationIssue::new(
                "spec.placement.tolerations",
                "KAITO manages the tolerations of its GPU nodes; remove placement.tolerations",
            ));
        }
        finish(validate_spec(spec), own)
    }

    fn render(&self, input: &RenderInput<'_>) -> Result<Vec<Value>, RenderError> {
        input.check_names()?;
        self.validate(input.spec).map_err(RenderError::Invalid)?;
        let main = if uses_workspace(input.replicas()) {
            object(
                API_VERSION,
                "Workspace",
                object_meta(input, input.revision_name, None),
                [
                    ("resource", resource(input)),
                    ("inference", inference(input)),
                ],
            )
        } else {
            let node_labels = node_labels(input.spec, input.runtime_name);
            object(
                API_VERSION,
                "InferenceSet",
                object_meta(input, input.revision_name, None),
                [(
                    "spec",
                    map([
                        ("replicas", input.replicas().into()),
                        (
                            "labelSelector",
                            map([("matchLabels", selector_json(&node_labels))]),
                        ),
                        ("template", template(input)),
                    ]),
                )],
            )
        };
        let mut objects = vec![config_map(input), main];
        if !uses_workspace(input.replicas()) {
            // An InferenceSet has no Service of its own that spans its Workspaces; route to one.
            let selector = BTreeMap::from([(
                INFERENCESET_POD_LABEL.to_string(),
                input.revision_name.to_string(),
            )]);
            objects.push(pod::service(
                input,
                input.revision_name,
                "server",
                &selector,
                json!([{"name": "http", "port": KAITO_SERVICE_PORT, "targetPort": KAITO_PORT, "protocol": "TCP"}]),
            ));
        }
        Ok(objects)
    }

    fn readiness(&self, input: &RenderInput<'_>, live: &[Value]) -> RevisionReadiness {
        let name = input.revision_name;
        let desired = input.replicas();
        let part = if uses_workspace(desired) {
            match readiness::find(live, "Workspace", name) {
                None => Part::missing("Workspace", name, desired),
                Some(ws) => {
                    let ready = readiness::condition_true_and_current(ws, "WorkspaceSucceeded")
                        && readiness::generation_observed(ws);
                    let message = if ready {
                        format!("Workspace {name} succeeded")
                    } else {
                        let why = ["ResourceReady", "InferenceReady", "WorkspaceSucceeded"]
                            .iter()
                            .find_map(|t| match readiness::condition(ws, t) {
                                Some((s, reason, msg)) if s != "True" => {
                                    Some(format!("{t}={s} {reason}: {msg}"))
                                }
                                _ => None,
                            })
                            .unwrap_or_else(|| {
                                "waiting for KAITO to report WorkspaceSucceeded".into()
                            });
                        format!("Workspace {name}: {why}")
                    };
                    Part {
                        ready,
                        failed: false,
                        desired,
                        ready_replicas: i32::from(ready),
                        message,
                    }
                }
            }
        } else {
            match readiness::find(live, "InferenceSet", name) {
                None => Part::missing("InferenceSet", name, desired),
                Some(set) => {
                    let ready_replicas = readiness::int32(set, "/status/readyReplicas");
                    let ready = desired > 0
                        && ready_replicas >= desired
                        && readiness::generation_observed(set);
                    let message = if desired == 0 {
                        format!("InferenceSet {name} is scaled to zero")
                    } else {
                        format!("InferenceSet {name}: {ready_replicas} of {desired} replicas ready")
                    };
                    Part {
                        ready,
                        failed: false,
                        desired,
                        ready_replicas,
                        message,
                    }
                }
            }
        };
        readiness::combine(vec![part], 0)
    }

    fn endpoint(&self, input: &RenderInput<'_>) -> EndpointTarget {
        let label = if uses_workspace(input.replicas()) {
            WORKSPACE_POD_LABEL
        } else {
            INFERENCESET_POD_LABEL
        };
        EndpointTarget {
            pod_selector: BTreeMap::from([(label.to_string(), input.revision_name.to_string())]),
            port: KAITO_PORT,
        }
    }

    fn route_backend(&self, input: &RenderInput<'_>) -> RouteBackend {
        // A Workspace's Service is KAITO's, named after it; an InferenceSet's is ours, same name.
        RouteBackend {
            group: String::new(),
            kind: "Service".into(),
            name: input.revision_name.to_string(),
            port: Some(KAITO_SERVICE_PORT),
        }
    }

    fn required_apis(&self) -> Vec<RequiredApi> {
        const HINT: &str = "install KAITO v0.9 or later (the kaito-workspace Helm chart from https://github.com/kaito-project/kaito), which serves kaito.sh/v1beta1 Workspace and InferenceSet";
        vec![
            RequiredApi {
                group: "kaito.sh",
                version: "v1beta1",
                kind: "Workspace",
                plural: "workspaces",
                install_hint: HINT,
            },
            RequiredApi {
                group: "kaito.sh",
                version: "v1beta1",
                kind: "InferenceSet",
                plural: "inferencesets",
                install_hint: HINT,
            },
        ]
    }
}

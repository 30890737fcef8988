//! Pod, container, Deployment and Service pieces shared by the backends that render workloads
//! directly (vllm, llm-d, and the containers of kserve and dynamo).

use std::collections::BTreeMap;

use overseer_crds::runway::{InferenceRuntimeSpec, Profile};
use serde_json::{Map, Value, json};

use crate::{
    RenderInput,
    meta::{map, object, object_meta, selector_json},
    model::{ModelSource, served_name},
};

/// The environment variable vLLM and the Hugging Face hub read a token from.
pub(crate) const HF_TOKEN_ENV: &str = "HF_TOKEN";
/// Where a `pvc://` model's claim is mounted.
pub(crate) const MODEL_MOUNT: &str = "/models";
/// vLLM's OpenAI server image for the `Gpu` profile (CUDA), pinned.
pub const VLLM_GPU_IMAGE: &str = "vllm/vllm-openai:v0.14.1";
/// vLLM's CPU release image for the `Cpu` profile (x86_64), pinned to the same vLLM version.
/// vLLM publishes its CPU builds to this public ECR repository; it needs no GPU and serves the
/// same OpenAI API.
pub const VLLM_CPU_IMAGE: &str = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.14.1";
/// Port vLLM's OpenAI server listens on in every pod this crate renders.
pub(crate) const VLLM_PORT: i32 = 8000;
/// Default accelerator resource.
pub(crate) const DEFAULT_ACCELERATOR: &str = "nvidia.com/gpu";

/// The served model name (validation guarantees one; `model` is the last resort).
pub(crate) fn served(spec: &InferenceRuntimeSpec) -> String {
    served_name(&spec.model).unwrap_or_else(|| "model".to_string())
}

/// The default vLLM image for the spec's profile, unless the spec names one.
pub(crate) fn vllm_image(spec: &InferenceRuntimeSpec) -> String {
    spec.engine.image.clone().unwrap_or_else(|| {
        match spec.profile {
            Profile::Gpu => VLLM_GPU_IMAGE,
            Profile::Cpu => VLLM_CPU_IMAGE,
        }
        .to_string()
    })
}

/// `spec.engine.args` as `--key value` (or a bare `--key` for an empty value), in key order.
pub(crate) fn user_args(spec: &InferenceRuntimeSpec) -> Vec<String> {
    let mut out = Vec::with_capacity(spec.engine.args.len() * 2);
    for (key, value) in &spec.engine.args {
        out.push(format!("--{key}"));
        if !value.is_empty() {
            out.push(value.clone());
        }
    }
    out
}

/// Arguments of vLLM's OpenAI server: the model, the served name, host and port, then the
/// renderer's `extra` flags, then the user's args in sorted order.
pub(crate) fn vllm_args(spec: &InferenceRuntimeSpec, port: i32, extra: &[&str]) -> Vec<String> {
    let model = ModelSource::parse(&spec.model.uri)
        .map(|m| m.server_model_arg(MODEL_MOUNT))
        .unwrap_or_else(|_| spec.model.uri.clone());
    let mut args = vec![
        "--model".to_string(),
        model,
        "--served-model-name".to_string(),
        served(spec),
        "--host".to_string(),
        "0.0.0.0".to_string(),
        "--port".to_string(),
        port.to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args.extend(user_args(spec));
    args
}

/// The container environment: `HF_TOKEN` from the token Secret, then `spec.engine.env` in order.
pub(crate) fn env(spec: &InferenceRuntimeSpec) -> Vec<Value> {
    let mut env = Vec::with_capacity(spec.engine.env.len() + 1);
    if let Some(secret) = &spec.model.token_secret_ref {
        env.push(json!({
            "name": HF_TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
        }));
    }
    env.extend(
        spec.engine
            .env
            .iter()
            .filter_map(|e| serde_json::to_value(e).ok()),
    );
    env
}

/// Container resources: CPU and memory requests (memory also as the limit), accelerators as
/// request and limit.
pub(crate) fn resources(spec: &InferenceRuntimeSpec) -> Value {
    resources_with(spec, spec.resources.accelerator.as_ref().map(|a| a.count))
}

/// [`resources`] with an explicit accelerator count (`None`: no accelerator).
pub(crate) fn resources_with(spec: &InferenceRuntimeSpec, accelerators: Option<i32>) -> Value {
    let mut requests = Map::new();
    let mut limits = Map::new();
    if let Some(cpu) = &spec.resources.cpu {
        requests.insert("cpu".into(), cpu.0.clone().into());
    }
    if let Some(memory) = &spec.resources.memory {
        requests.insert("memory".into(), memory.0.clone().into());
        limits.insert("memory".into(), memory.0.clone().into());
    }
    if let (Some(count), Some(acc)) = (accelerators, &spec.resources.accelerator) {
        let name = acc
            .resource
            .as_deref()
            .unwrap_or(DEFAULT_ACCELERATOR)
            .to_string();
        requests.insert(name.clone(), count.to_string().into());
        limits.insert(name, count.to_string().into());
    }
    let mut out = Map::new();
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    Value::Object(out)
}

/// Volumes and mounts: the model's claim (read-only) for `pvc://`, and a memory-backed
/// `/dev/shm` for GPU serving (tensor parallelism uses shared memory).
pub(crate) fn volumes(spec: &InferenceRuntimeSpec) -> (Vec<Value>, Vec<Value>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Ok(ModelSource::Pvc { claim, .. }) = ModelSource::parse(&spec.model.uri) {
        volumes.push(json!({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}));
        mounts.push(json!({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": true}));
    }
    if spec.profile == Profile::Gpu {
        volumes.push(json!({"name": "dshm", "emptyDir": {"medium": "Memory"}}));
        mounts.push(json!({"name": "dshm", "mountPath": "/dev/shm"}));
    }
    (volumes, mounts)
}

/// Adds the spec's placement (node selector, tolerations) to a pod spec.
pub(crate) fn add_placement(spec: &InferenceRuntimeSpec, pod_spec: &mut Map<String, Value>) {
    let Some(placement) = &spec.placement else {
        return;
    };
    if !placement.node_selector.is_empty() {
        pod_spec.insert(
            "nodeSelector".into(),
            selector_json(&placement.node_selector),
        );
    }
    if !placement.tolerations.is_empty() {
        let tolerations: Vec<Value> = placement
            .tolerations
            .iter()
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect();
        pod_spec.insert("tolerations".into(), Value::Array(tolerations));
    }
}

/// Probes for vLLM's `/health`: a startup probe patient enough for a model download (up to an
/// hour), then readiness every 5 s and liveness every 10 s.
pub(crate) fn vllm_probes(port: i32) -> [(&'static str, Value); 3] {
    let get = json!({"path": "/health", "port": port});
    [
        (
            "startupProbe",
            json!({"httpGet": get, "periodSeconds": 10, "failureThreshold": 360}),
        ),
        (
            "readinessProbe",
            json!({"httpGet": get, "periodSeconds": 5, "failureThreshold": 3}),
        ),
        (
            "livenessProbe",
            json!({"httpGet": get, "periodSeconds": 10, "failureThreshold": 3}),
        ),
    ]
}

/// A vLLM OpenAI server container.
pub(crate) fn vllm_container(
    spec: &InferenceRuntimeSpec,
    name: &str,
    image: &str,
    port: i32,
    args: Vec<String>,
    mounts: &[Value],
    probes: bool,
) -> Value {
    let mut c = Map::new();
    c.insert("name".into(), name.into());
    c.insert("image".into(), image.into());
    c.insert(
        "command".into(),
        json!(["python3", "-m", "vllm.entrypoints.openai.api_server"]),
    );
    c.insert("args".into(), json!(args));
    c.insert(
        "ports".into(),
        json!([{"name": "http", "containerPort": port, "protocol": "TCP"}]),
    );
    let env = env(spec);
    if !env.is_empty() {
        c.insert("env".into(), Value::Array(env));
    }
    c.insert("resources".into(), resources(spec));
    if !mounts.is_empty() {
        c.insert("volumeMounts".into(), Value::Array(mounts.to_vec()));
    }
    if probes {
        for (k, v) in vllm_probes(port) {
            c.insert(k.into(), v);
        }
    }
    Value::Object(c)
}

/// An `apps/v1` Deployment of the revision.
pub(crate) fn deployment(
    input: &RenderInput<'_>,
    name: &str,
    component: &str,
    replicas: i32,
    selector: &BTreeMap<String, String>,
    pod_labels: Value,
    pod_spec: Map<String, Value>,
) -> Value {
    object(
        "apps/v1",
        "Deployment",
        object_meta(input, name, Some(component)),
        [(
            "spec",
            map([
                ("replicas", replicas.into()),
                ("revisionHistoryLimit", 2.into()),
                ("selector", map([("matchLabels", selector_json(selector))])),
                (
                    "template",
                    map([
                        ("metadata", map([("labels", pod_labels)])),
                        ("spec", Value::Object(pod_spec)),
                    ]),
                ),
            ]),
        )],
    )
}

/// A ClusterIP `v1` Service of the revision.
pub(crate) fn service(
    input: &RenderInput<'_>,
    name: &str,
    component: &str,
    selector: &BTreeMap<String, String>,
    ports: Value,
) -> Value {
    object(
        "v1",
        "Service",
        object_meta(input, name, Some(component)),
        [(
            "spec",
            json!({"type": "ClusterIP", "selector": selector_json(selector), "ports": ports}),
        )],
    )
}

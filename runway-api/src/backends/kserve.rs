//! `kserve`: a KServe `InferenceService` (`serving.kserve.io/v1beta1`) running vLLM's OpenAI
//! server as its predictor, in raw-deployment mode.

use std::collections::BTreeMap;

use overseer_crds::runway::{BackendKind, InferenceRuntimeSpec, Profile};
use serde_json::{Map, Value, json};

use crate::{
    Backend, EndpointTarget, RenderError, RenderInput, RequiredApi, RevisionReadiness,
    RouteBackend, ValidationIssue,
    backend::{finish, refuse_disaggregated, refuse_preset, validate_spec},
    meta::{map, object, object_meta, pod_labels},
    pod::{self, VLLM_PORT},
    readiness::{self, Part},
};

/// API version of the InferenceService.
const API_VERSION: &str = "serving.kserve.io/v1beta1";
/// KServe's label naming the InferenceService of a pod.
const ISVC_LABEL: &str = "serving.kserve.io/inferenceservice";
/// KServe's label naming the component of a pod.
const ISVC_COMPONENT_LABEL: &str = "component";
/// Port of the `<isvc>-predictor` Service KServe creates.
const PREDICTOR_SERVICE_PORT: i32 = 80;

/// The `kserve` backend: an `InferenceService` whose predictor is a custom `kserve-container`
/// running vLLM's OpenAI server (the same image and arguments as the vllm backend, so `/v1/…` on
/// port 8000 and the `Cpu` profile both work), with `serving.kserve.io/deploymentMode:
/// RawDeployment` (a plain Deployment and Service, no Knative) and `autoscalerClass: none` so
/// `minReplicas` is the replica count.
///
/// Why not `predictor.model` with the Hugging Face `ServingRuntime`: that server exposes the
/// OpenAI API under `/openai/v1`, not `/v1`, so the endpoint would change shape on a switch.
/// Why not `LLMInferenceService`: it serves HTTPS with KServe-issued certificates and wires its
/// own Gateway and scheduler, which would make the stable plain-HTTP Service unusable; the llm-d
/// backend renders that stack directly instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kserve;

impl Backend for Kserve {
    fn kind(&self) -> BackendKind {
        BackendKind::Kserve
    }

    fn validate(&self, spec: &InferenceRuntimeSpec) -> Result<(), Vec<ValidationIssue>> {
        let mut own = Vec::new();
        refuse_disaggregated(spec, "kserve", &mut own);
        refuse_preset(spec, "kserve", &mut own);
        if spec.profile == Profile::Gpu && spec.resources.accelerator.is_none() {
            own.push(ValidationIssue::new(
                "spec.resources.accelerator",
                "the Gpu profile needs resources.accelerator (e.g. count 1); for a small model without accelerators use profile Cpu",
            ));
        }
        finish(validate_spec(spec), own)
    }

    fn render(&self, input: &RenderInput<'_>) -> Result<Vec<Value>, RenderError> {
        input.check_names()?;
        self.validate(input.spec).map_err(RenderError::Invalid)?;
        let spec = input.spec;
        let replicas = input.replicas();
        let (volumes, mounts) = pod::volumes(spec);
        let container = pod::vllm_container(
            spec,
            "kserve-container",
            &pod::vllm_image(spec),
            VLLM_PORT,
            pod::vllm_args(spec, VLLM_PORT, &[]),
            &mounts,
            true,
        );
        let mut predictor = Map::new();
        predictor.insert("minReplicas".into(), replicas.into());
        if replicas > 0 {
            predictor.insert("maxReplicas".into(), replicas.into());
        }
        predictor.insert("labels".into(), pod_labels(input, "server", &[]));
        predictor.insert("containers".into(), Value::Array(vec![container]));
        if !volumes.is_empty() {
            predictor.insert("volumes".into(), Value::Array(volumes));
        }
        pod::add_placement(spec, &mut predictor);
        let mut metadata = object_meta(input, input.revision_name, None);
        if let Some(meta) = metadata.as_object_mut() {
            meta.insert(
                "annotations".into(),
                json!({
                    "serving.kserve.io/deploymentMode": "RawDeployment",
                    "serving.kserve.io/autoscalerClass": "none",
                }),
            );
        }
        Ok(vec![object(
            API_VERSION,
            "InferenceService",
            metadata,
            [("spec", map([("predictor", Value::Object(predictor))]))],
        )])
    }

    fn readiness(&self, input: &RenderInput<'_>, live: &[Value]) -> RevisionReadiness {
        let name = input.revision_name;
        let desired = input.replicas();
        let part = match readiness::find(live, "InferenceService", name) {
            None => Part::missing("InferenceService", name, desired),
            Some(isvc) => {
                let ready_cond = readiness::condition(isvc, "Ready");
                let ready = readiness::condition_true_and_current(isvc, "Ready")
                    && readiness::generation_observed(isvc)
                    && desired > 0;
                let failed_to_load = isvc
                    .pointer("/status/modelStatus/states/targetModelState")
                    .and_then(Value::as_str)
                    == Some("FailedToLoad");
                let message = match ready_cond {
                    _ if desired == 0 => format!("InferenceService {name} is scaled to zero"),
                    Some(("True", _, _)) if ready => format!("InferenceService {name} is Ready"),
                    Some((status, reason, msg)) => {
                        format!("InferenceService {name}: Ready={status} {reason}: {msg}")
                    }
                    None => format!("InferenceService {name}: waiting for KServe to report Ready"),
                };
                Part {
                    ready,
                    failed: failed_to_load,
                    desired,
                    ready_replicas: if ready { desired } else { 0 },
                    message,
                }
            }
        };
        readiness::combine(vec![part], 0)
    }

    fn endpoint(&self, input: &RenderInput<'_>) -> EndpointTarget {
        EndpointTarget {
            pod_selector: BTreeMap::from([
                (ISVC_LABEL.to_string(), input.revision_name.to_string()),
                (ISVC_COMPONENT_LABEL.to_string(), "predictor".to_string()),
            ]),
            port: VLLM_PORT,
        }
    }

    fn route_backend(&self, input: &RenderInput<'_>) -> RouteBackend {
        RouteBackend {
            group: String::new(),
            kind: "Service".into(),
            name: format!("{}-predictor", input.revision_name),
            port: Some(PREDICTOR_SERVICE_PORT),
        }
    }

    fn required_apis(&self) -> Vec<RequiredApi> {
        vec![RequiredApi {
            group: "serving.kserve.io",
            version: "v1beta1",
            kind: "InferenceService",
            plural: "inferenceservices",
            install_hint: "install KServe v0.15 or later with raw deployment support (https://kserve.github.io/website/), which serves serving.kserve.io/v1beta1 InferenceService",
        }]
    }
}

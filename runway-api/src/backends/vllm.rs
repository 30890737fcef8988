//! `vllm`: vLLM's OpenAI server as a Deployment and a per-revision Service.

use overseer_crds::runway::{BackendKind, InferenceRuntimeSpec};
use serde_json::{Map, Value, json};

use crate::{
    Backend, EndpointTarget, RenderError, RenderInput, RequiredApi, RevisionReadiness,
    RouteBackend, ValidationIssue,
    backend::{finish, refuse_disaggregated, refuse_preset, validate_spec},
    meta::{pod_labels, revision_labels},
    pod::{self, VLLM_PORT},
    readiness,
};

/// Component label of the vLLM server pods.
const COMPONENT: &str = "server";

/// The `vllm` backend: a `Deployment` running `vllm/vllm-openai` (or vLLM's CPU release image
/// for the `Cpu` profile) and a ClusterIP `Service` named after the revision, port 8000.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vllm;

impl Backend for Vllm {
    fn kind(&self) -> BackendKind {
        BackendKind::Vllm
    }

    fn validate(&self, spec: &InferenceRuntimeSpec) -> Result<(), Vec<ValidationIssue>> {
        let mut own = Vec::new();
        refuse_disaggregated(spec, "vllm", &mut own);
        refuse_preset(spec, "vllm", &mut own);
        if spec.profile == overseer_crds::runway::Profile::Gpu
            && spec.resources.accelerator.is_none()
        {
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
        let selector = revision_labels(input.runtime_name, input.revision_name, COMPONENT);
        let (volumes, mounts) = pod::volumes(spec);
        let container = pod::vllm_container(
            spec,
            "vllm",
            &pod::vllm_image(spec),
            VLLM_PORT,
            pod::vllm_args(spec, VLLM_PORT, &[]),
            &mounts,
            true,
        );
        let mut pod_spec = Map::new();
        pod_spec.insert("containers".into(), Value::Array(vec![container]));
        if !volumes.is_empty() {
            pod_spec.insert("volumes".into(), Value::Array(volumes));
        }
        pod::add_placement(spec, &mut pod_spec);
        Ok(vec![
            pod::deployment(
                input,
                input.revision_name,
                COMPONENT,
                input.replicas(),
                &selector,
                pod_labels(input, COMPONENT, &[]),
                pod_spec,
            ),
            pod::service(
                input,
                input.revision_name,
                COMPONENT,
                &selector,
                json!([{"name": "http", "port": VLLM_PORT, "targetPort": VLLM_PORT, "protocol": "TCP"}]),
            ),
        ])
    }

    fn readiness(&self, input: &RenderInput<'_>, live: &[Value]) -> RevisionReadiness {
        readiness::combine(
            vec![readiness::deployment(
                live,
                input.revision_name,
                input.replicas(),
            )],
            0,
        )
    }

    fn endpoint(&self, input: &RenderInput<'_>) -> EndpointTarget {
        EndpointTarget {
            pod_selector: revision_labels(input.runtime_name, input.revision_name, COMPONENT),
            port: VLLM_PORT,
        }
    }

    fn route_backend(&self, input: &RenderInput<'_>) -> RouteBackend {
        RouteBackend {
            group: String::new(),
            kind: "Service".into(),
            name: input.revision_name.to_string(),
            port: Some(VLLM_PORT),
        }
    }

    fn required_apis(&self) -> Vec<RequiredApi> {
        Vec::new()
    }
}

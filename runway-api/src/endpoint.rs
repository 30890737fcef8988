//! The stable endpoint the application talks to: a ClusterIP Service named after the runtime
//! (its name and port never change across switches; only its selector moves to the active
//! revision) and, when `spec.endpoint.gateway` is set, a Gateway API `HTTPRoute` that splits
//! traffic between revisions by weight.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use overseer_crds::{
    common::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    runway::{GatewayRef, InferenceRuntimeSpec, SwitchStrategy, SwitchType},
};
use serde_json::{Map, Value, json};

use crate::{
    EndpointTarget, RenderError, RequiredApi, RouteBackend,
    meta::{RUNTIME_LABEL, is_dns1123_subdomain, label_value, owner_json, selector_json},
    revision::is_dns1035_label,
};

/// Port of the stable Service when `spec.endpoint.port` is unset.
pub const DEFAULT_PORT: i32 = 8000;
/// Largest weight the Gateway API accepts on a backendRef.
pub const MAX_WEIGHT: i32 = 1_000_000;
/// Most backendRefs one HTTPRoute rule may hold.
pub const MAX_BACKENDS: usize = 16;

/// The stable Service's port.
pub fn endpoint_port(spec: &InferenceRuntimeSpec) -> i32 {
    spec.endpoint.port.unwrap_or(DEFAULT_PORT)
}

/// The in-cluster base URL of the OpenAI-compatible API: `http://<name>.<ns>.svc:<port>/v1`.
pub fn endpoint_url(runtime_name: &str, namespace: &str, spec: &InferenceRuntimeSpec) -> String {
    format!(
        "http://{runtime_name}.{namespace}.svc:{}/v1",
        endpoint_port(spec)
    )
}

fn metadata(runtime_name: &str, namespace: &str, owner: Option<&OwnerReference>) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), runtime_name.into());
    meta.insert("namespace".into(), namespace.into());
    meta.insert(
        "labels".into(),
        json!({MANAGED_BY_LABEL: MANAGED_BY_VALUE, RUNTIME_LABEL: label_value(runtime_name)}),
    );
    if let Some(owner) = owner_json(owner) {
        meta.insert("ownerReferences".into(), Value::Array(vec![owner]));
    }
    Value::Object(meta)
}

/// The stable ClusterIP Service `<runtime>`: port `spec.endpoint.port` (default 8000, named
/// `http`) to the active revision's pods (`target`, from [`crate::Backend::endpoint`]).
pub fn endpoint_service(
    runtime_name: &str,
    namespace: &str,
    spec: &InferenceRuntimeSpec,
    target: &EndpointTarget,
    owner: Option<&OwnerReference>,
) -> Result<Value, RenderError> {
    if !is_dns1035_label(runtime_name, 63) {
        return Err(RenderError::InvalidName {
            name: runtime_name.to_string(),
            reason: "the endpoint Service is named after the runtime, so the runtime name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, at most 63 characters)".into(),
        });
    }
    let port = endpoint_port(spec);
    if !(1..=65535).contains(&port) || !(1..=65535).contains(&target.port) {
        return Err(RenderError::InvalidName {
            name: port.to_string(),
            reason: "ports are 1 to 65535".into(),
        });
    }
    if target.pod_selector.is_empty() {
        return Err(RenderError::InvalidName {
            name: runtime_name.to_string(),
            reason: "the endpoint Service needs a non-empty pod selector".into(),
        });
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(runtime_name, namespace, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_json(&target.pod_selector),
            "ports": [{"name": "http", "port": port, "targetPort": target.port, "protocol": "TCP"}],
        },
    }))
}

/// One revision's share of the route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedBackend {
    /// The revision's backend ([`crate::Backend::route_backend`]).
    pub backend: RouteBackend,
    /// Its weight (0 to [`MAX_WEIGHT`]; weights are relative, e.g. 90 and 10).
    pub weight: i32,
}

/// The `HTTPRoute` `<runtime>` (`gateway.networking.k8s.io/v1`) attaching to the configured
/// Gateway and splitting every request path between `backends` by weight. BlueGreen renders the
/// active revision at 100 and a candidate at 0; Canary renders the step's weights.
pub fn http_route(
    runtime_name: &str,
    namespace: &str,
    gateway: &GatewayRef,
    backends: &[WeightedBackend],
    owner: Option<&OwnerReference>,
) -> Result<Value, RenderError> {
    let invalid = |name: &str, reason: &str| RenderError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if !is_dns1123_subdomain(runtime_name) {
        return Err(invalid(
            runtime_name,
            "an HTTPRoute name must be a DNS-1123 subdomain",
        ));
    }
    if backends.is_empty() || backends.len() > MAX_BACKENDS {
        return Err(invalid(runtime_name, "an HTTPRoute needs 1 to 16 backends"));
    }
    if gateway
        .namespace
        .as_deref()
        .is_some_and(|ns| !crate::meta::is_dns1123_label(ns))
    {
        return Err(invalid(
            gateway.namespace.as_deref().unwrap_or_default(),
            "a Gateway namespace must be a DNS-1123 label",
        ));
    }
    if gateway
        .section_name
        .as_deref()
        .is_some_and(|s| !is_dns1123_subdomain(s))
    {
        return Err(invalid(
            gateway.section_name.as_deref().unwrap_or_default(),
            "a listener name must be a DNS-1123 subdomain",
        ));
    }
    let mut parent = Map::new();
    parent.insert("group".into(), "gateway.networking.k8s.io".into());
    parent.insert("kind".into(), "Gateway".into());
    parent.insert("name".into(), gateway.name.clone().into());
    if let Some(ns) = &gateway.namespace {
        parent.insert("namespace".into(), ns.clone().into());
    }
    if let Some(section) = &gateway.section_name {
        parent.insert("sectionName".into(), section.clone().into());
    }
    let mut refs = Vec::with_capacity(backends.len());
    for b in backends {
        if !(0..=MAX_WEIGHT).contains(&b.weight) {
            return Err(invalid(&b.backend.name, "backend weights are 0 to 1000000"));
        }
        let mut r = Map::new();
        r.insert("group".into(), b.backend.group.clone().into());
        r.insert("kind".into(), b.backend.kind.clone().into());
        r.insert("name".into(), b.backend.name.clone().into());
        if let Some(port) = b.backend.port {
            r.insert("port".into(), port.into());
        } else if b.backend.group.is_empty() && b.backend.kind == "Service" {
            return Err(invalid(&b.backend.name, "a Service backend needs a port"));
        }
        r.insert("weight".into(), b.weight.into());
        refs.push(Value::Object(r));
    }
    let mut spec = Map::new();
    spec.insert(
        "parentRefs".into(),
        Value::Array(vec![Value::Object(parent)]),
    );
    if !gateway.hostnames.is_empty() {
        spec.insert("hostnames".into(), json!(gateway.hostnames));
    }
    spec.insert(
        "rules".into(),
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": refs}]),
    );
    Ok(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(runtime_name, namespace, owner),
        "spec": spec,
    }))
}

/// The candidate's traffic percentage at canary `step` (0-based) of `strategy`: the step's
/// weight for `Canary`, `None` past the last step or for other strategies (which move all
/// traffic at once).
pub fn canary_weight(strategy: &SwitchStrategy, step: usize) -> Option<i32> {
    if strategy.type_ != SwitchType::Canary {
        return None;
    }
    strategy
        .canary_steps
        .as_ref()?
        .get(step)
        .map(|s| s.weight.clamp(0, 100))
}

/// `[active, candidate]` weights (percent) for a route during a switch: the candidate's canary
/// weight, or all-or-nothing (`promoted`) otherwise.
pub fn split(candidate_weight: Option<i32>, promoted: bool) -> [i32; 2] {
    match (promoted, candidate_weight) {
        (true, _) => [0, 100],
        (false, Some(w)) => [100 - w.clamp(0, 100), w.clamp(0, 100)],
        (false, None) => [100, 0],
    }
}

/// The Gateway API kind the route needs (when `spec.endpoint.gateway` is set).
pub fn gateway_required_api() -> RequiredApi {
    RequiredApi {
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "HTTPRoute",
        plural: "httproutes",
        install_hint: "install the Gateway API standard CRDs (the standard-install.yaml of a release of https://github.com/kubernetes-sigs/gateway-api) and a Gateway controller, or remove spec.endpoint.gateway",
    }
}

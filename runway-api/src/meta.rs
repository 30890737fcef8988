//! Labels and object metadata shared by every renderer.

use std::collections::BTreeMap;

use overseer_crds::{
    common::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    runway::BackendKind,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::RenderInput;

/// Label naming the `InferenceRuntime` an object belongs to.
pub const RUNTIME_LABEL: &str = "runway.overseer.dev/runtime";
/// Label naming the revision an object belongs to.
pub const REVISION_LABEL: &str = "runway.overseer.dev/revision";
/// Label naming the backend that rendered an object.
pub const BACKEND_LABEL: &str = "runway.overseer.dev/backend";
/// Label naming the role of a workload inside a revision (`server`, `decode`, `prefill`, `epp`).
pub const COMPONENT_LABEL: &str = "runway.overseer.dev/component";

/// `name` as a label value: unchanged when it is one (≤ 63 characters, alphanumeric at both
/// ends, `-`, `_`, `.` inside), else cut to 52 characters plus `-` and 10 hex characters of its
/// SHA-256, so long runtime names still label their objects uniquely.
pub fn label_value(name: &str) -> String {
    let valid = name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        return name.to_string();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let mut prefix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(52)
        .collect();
    while prefix.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        prefix.pop();
    }
    while prefix.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        prefix.remove(0);
    }
    if prefix.is_empty() {
        format!("h{}", &digest[..10])
    } else {
        format!("{prefix}-{}", &digest[..10])
    }
}

/// Whether `s` is a DNS-1123 label (≤ 63 characters, lower-case alphanumerics and `-`,
/// alphanumeric at both ends).
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Whether `s` is a DNS-1123 subdomain (≤ 253 characters, dot-separated labels).
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// The labels that identify one revision's pods of one component: runtime, revision, component.
pub fn revision_labels(
    runtime_name: &str,
    revision_name: &str,
    component: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUNTIME_LABEL.to_string(), label_value(runtime_name)),
        (REVISION_LABEL.to_string(), revision_name.to_string()),
        (COMPONENT_LABEL.to_string(), component.to_string()),
    ])
}

/// The backend's label value.
pub(crate) fn backend_label(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Vllm => "vllm",
        BackendKind::Kaito => "kaito",
        BackendKind::LlmD => "llm-d",
        BackendKind::Dynamo => "dynamo",
        BackendKind::Kserve => "kserve",
    }
}

/// Labels of every object of a revision (and of its pods, with a component).
pub(crate) fn object_labels(
    input: &RenderInput<'_>,
    component: Option<&str>,
) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(RUNTIME_LABEL.into(), label_value(input.runtime_name).into());
    labels.insert(REVISION_LABEL.into(), input.revision_name.into());
    labels.insert(
        BACKEND_LABEL.into(),
        backend_label(input.spec.engine.backend).into(),
    );
    if let Some(component) = component {
        labels.insert(COMPONENT_LABEL.into(), component.into());
    }
    labels
}

/// Pod labels: the revision selector of `component` plus managed-by and backend, and `extra`.
pub(crate) fn pod_labels(
    input: &RenderInput<'_>,
    component: &str,
    extra: &[(&str, &str)],
) -> Value {
    let mut labels = object_labels(input, Some(component));
    for (k, v) in extra {
        labels.insert((*k).into(), (*v).into());
    }
    Value::Object(labels)
}

/// A selector as a JSON map.
pub(crate) fn selector_json(labels: &BTreeMap<String, String>) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// `metadata` for an object of the revision.
pub(crate) fn object_meta(input: &RenderInput<'_>, name: &str, component: Option<&str>) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), name.into());
    meta.insert("namespace".into(), input.namespace.into());
    meta.insert(
        "labels".into(),
        Value::Object(object_labels(input, component)),
    );
    if let Some(owner) = owner_json(input.owner) {
        meta.insert("ownerReferences".into(), Value::Array(vec![owner]));
    }
    Value::Object(meta)
}

/// An owner reference as JSON.
pub(crate) fn owner_json(
    owner: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Option<Value> {
    owner.and_then(|o| serde_json::to_value(o).ok())
}

/// A JSON object from owned entries. Unlike `json!`, which re-serializes every interpolated
/// `Value` (a deep copy), this moves them: rendering nests pod specs several levels deep.
pub(crate) fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// A complete object.
pub(crate) fn object<const N: usize>(
    api_version: &str,
    kind: &str,
    metadata: Value,
    body: [(&str, Value); N],
) -> Value {
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), api_version.into());
    obj.insert("kind".into(), kind.into());
    obj.insert("metadata".into(), metadata);
    for (k, v) in body {
        obj.insert(k.into(), v);
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_stay_valid() {
        assert_eq!(label_value("qwen3"), "qwen3");
        let long = format!("{}.example", "a".repeat(80));
        let v = label_value(&long);
        assert!(v.len() <= 63, "{v}");
        assert_ne!(label_value(&format!("{long}x")), v);
        assert!(v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()));
        assert_eq!(label_value("-").len(), 11);
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label("a-"));
        assert!(is_dns1123_subdomain("models.team-a"));
        assert!(!is_dns1123_subdomain("models..a"));
    }
}

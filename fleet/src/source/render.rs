//! Parsing documents into objects, ordering them and computing the revision.

use std::collections::HashMap;

use kube::api::DynamicObject;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{RenderedSource, SourceError};

/// One text holding manifests (one or more YAML or JSON documents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Where it came from, used in error messages (`inline[0]`, a file path, a ConfigMap key).
    pub origin: String,
    /// The text.
    pub content: String,
}

/// Renders `docs` into a [`RenderedSource`]: every document parsed, every object checked, the
/// set ordered and digested. `source_name` names the whole source in errors about it (empty).
/// Any failure rejects the whole set.
pub fn render_documents(
    source_name: &str,
    docs: impl IntoIterator<Item = Document>,
) -> Result<RenderedSource, SourceError> {
    let mut objects = Vec::new();
    for doc in docs {
        for (i, de) in serde_yaml::Deserializer::from_str(&doc.content).enumerate() {
            let origin = format!("{} document {i}", doc.origin);
            let value = Value::deserialize(de).map_err(|e| SourceError::Manifest {
                document: origin.clone(),
                object: None,
                message: format!("does not parse: {e}"),
            })?;
            collect(value, origin, &mut objects)?;
        }
    }
    finish(source_name, objects)
}

/// Renders `spec.source.inline`: each item is one object (or a `v1` `List`), named `inline[i]`.
pub fn render_inline(items: &[Value]) -> Result<RenderedSource, SourceError> {
    let mut objects = Vec::new();
    for (i, item) in items.iter().enumerate() {
        collect(item.clone(), format!("inline[{i}]"), &mut objects)?;
    }
    finish("spec.source.inline", objects)
}

/// Adds the object(s) in `value` to `out`, checking each.
fn collect(
    value: Value,
    origin: String,
    out: &mut Vec<(String, DynamicObject)>,
) -> Result<(), SourceError> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for (j, item) in items.into_iter().enumerate() {
                collect(item, format!("{origin} item {j}"), out)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            let is_list = map.get("apiVersion").and_then(Value::as_str) == Some("v1")
                && map.get("kind").and_then(Value::as_str) == Some("List");
            if is_list {
                let items = match map.get("items") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items.clone(),
                    Some(_) => {
                        return Err(SourceError::Manifest {
                            document: origin,
                            object: Some("List".into()),
                            message: "items must be a list".into(),
                        });
                    }
                };
                for (j, item) in items.into_iter().enumerate() {
                    collect(item, format!("{origin} items[{j}]"), out)?;
                }
                return Ok(());
            }
            let obj = to_object(Value::Object(map), &origin)?;
            out.push((origin, obj));
            Ok(())
        }
        other => Err(SourceError::Manifest {
            document: origin,
            object: None,
            message: format!("expected an object, found {}", type_name(&other)),
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn to_object(value: Value, origin: &str) -> Result<DynamicObject, SourceError> {
    let text = |p: &str| {
        value
            .pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let kind = text("/kind");
    let name = text("/metadata/name");
    let object = match (&kind, &name) {
        (None, None) => None,
        (k, n) => Some(format!(
            "{} {}",
            k.as_deref().unwrap_or("<no kind>"),
            n.as_deref().unwrap_or("<no name>")
        )),
    };
    let fail = |message: String| SourceError::Manifest {
        document: origin.to_owned(),
        object: object.clone(),
        message,
    };
    let mut missing = Vec::new();
    if text("/apiVersion").is_none() {
        missing.push("apiVersion");
    }
    if kind.is_none() {
        missing.push("kind");
    }
    if name.is_none() {
        missing.push("metadata.name");
    }
    if !missing.is_empty() {
        let hint = if kind.as_deref() == Some("Kustomization")
            && text("/apiVersion").is_some_and(|v| v.starts_with("kustomize.config.k8s.io/"))
        {
            " (kustomize is not supported: commit the rendered manifests)"
        } else {
            ""
        };
        return Err(fail(format!(
            "not a Kubernetes object: missing {}{hint}",
            missing.join(", ")
        )));
    }
    serde_json::from_value(value).map_err(|e| fail(format!("invalid object: {e}")))
}

/// Sort key: group, kind, namespace, name, apiVersion.
fn sort_key(o: &DynamicObject) -> (String, String, String, String, String) {
    let (api_version, kind) = o
        .types
        .as_ref()
        .map(|t| (t.api_version.clone(), t.kind.clone()))
        .unwrap_or_default();
    let group = api_version
        .rsplit_once('/')
        .map_or("", |(g, _)| g)
        .to_owned();
    (
        group,
        kind,
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
        api_version,
    )
}

fn finish(
    source_name: &str,
    mut objects: Vec<(String, DynamicObject)>,
) -> Result<RenderedSource, SourceError> {
    if objects.is_empty() {
        return Err(SourceError::Empty(source_name.to_owned()));
    }
    let mut seen: HashMap<(String, String, String, String), String> = HashMap::new();
    for (origin, o) in &objects {
        let (group, kind, ns, name, _) = sort_key(o);
        let key = (group, kind, ns, name);
        if let Some(first) = seen.get(&key) {
            let (group, kind, ns, name) = key;
            let group = if group.is_empty() { "core" } else { &group };
            let at = if ns.is_empty() {
                name
            } else {
                format!("{ns}/{name}")
            };
            return Err(SourceError::Duplicate {
                object: format!("{group} {kind} {at}"),
                first: first.clone(),
                second: origin.clone(),
            });
        }
        seen.insert(key, origin.clone());
    }
    objects.sort_by_cached_key(|(_, o)| sort_key(o));
    let objects: Vec<DynamicObject> = objects.into_iter().map(|(_, o)| o).collect();
    let revision = revision_of(&objects);
    Ok(RenderedSource {
        revision,
        objects,
        origin: None,
    })
}

/// `sha256:<hex>` of the objects in their order, each in canonical JSON (keys sorted at every
/// level) followed by a newline.
pub(crate) fn revision_of(objects: &[DynamicObject]) -> String {
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    for o in objects {
        buf.clear();
        // A DynamicObject always serializes to JSON (string keys, finite numbers).
        let value = serde_json::to_value(o).unwrap_or(Value::Null);
        write_canonical(&value, &mut buf);
        buf.push(b'\n');
        hasher.update(&buf);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// `v` as canonical JSON: object keys sorted at every level, no whitespace.
pub(crate) fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Scalars (strings, numbers, booleans, null) always serialize.
    if let Ok(s) = serde_json::to_vec(v) {
        out.extend_from_slice(&s);
    }
}

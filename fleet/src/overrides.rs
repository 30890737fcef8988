//! Per-cluster overrides: a rollout's `overrides[]` applied to its rendered objects for one member
//! cluster. Pure: no IO.
//!
//! # Semantics
//! - Overrides are applied in list order. An override applies to a cluster when its
//!   `clusterSelector` matches the cluster's `FleetCluster` labels (an empty selector matches every
//!   cluster).
//! - It patches every rendered object its `target` selects: `kind` must be equal; `group`, when
//!   set, must equal the object's API group (`""` for the core group); `name` and `namespace`,
//!   when set, must be equal. An override that applies to the cluster but selects no object is an
//!   error (a typo would otherwise silently change nothing).
//! - `jsonPatch` is an RFC 6902 patch applied atomically per object (the `json-patch` crate). A
//!   patch that does not apply, or that leaves the object without `apiVersion`, `kind` or
//!   `metadata.name`, is an error naming the override, the object and the operation.
//! - Operations are applied one at a time, and an object whose JSON serialization grows past
//!   [`MAX_PATCHED_OBJECT_BYTES`] is refused: a `copy` of a value into its own child doubles the
//!   document at each operation, so a few dozen operations would otherwise exhaust memory.
//!
//! # Revision
//! The revision a rollout rolls out is [`revision_with_overrides`]: the source's revision when
//! there are no overrides, otherwise a digest of the source's revision and the overrides. Editing
//! `spec.overrides` is thus a new revision, which goes through the stages, gates and approvals
//! like a source change, and whose snapshot keeps the overrides it was rendered with.
//!
//! # Variables
//! String values anywhere inside an operation's `value` may use:
//! - `${CLUSTER_NAME}`: the member cluster's `FleetCluster` name;
//! - `${CLUSTER_LABEL[key]}`: the value of the cluster's label `key` (e.g.
//!   `${CLUSTER_LABEL[topology.kubernetes.io/region]}`). A label the cluster does not carry is an
//!   error.
//! - `$${` writes a literal `${`.
//!
//! Any other `${...}` (or an unterminated `${`) is an error naming the variable. Variables are
//! replaced in values only, never in `path` or `from`.

use std::collections::BTreeMap;

use kube::{
    api::DynamicObject,
    core::{Selector, SelectorExt},
};
use overseer_crds::fleet::{JsonPatchOp, JsonPatchOpKind, Override, OverrideTarget};
use serde_json::Value;

/// The largest JSON serialization (in bytes) an object may reach while overrides are applied to
/// it: 1 MiB. The Kubernetes API server refuses requests over about 1.5 MiB (etcd's default
/// request limit), so a patched object over 1 MiB could not be applied anyway; stopping there
/// keeps a hostile or mistaken patch (e.g. `copy` of `/spec` into `/spec/a`, doubling the object
/// at each operation) from exhausting the operator's memory.
pub const MAX_PATCHED_OBJECT_BYTES: usize = 1024 * 1024;

/// Why the overrides could not be applied for a cluster. Every message names the override (by
/// index and name) and, where there is one, the object and the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// The override's cluster selector does not parse.
    #[error("overrides[{index}] ({name:?}): invalid clusterSelector: {message}")]
    Selector {
        /// Index in `spec.overrides`.
        index: usize,
        /// Override name.
        name: String,
        /// Why.
        message: String,
    },
    /// An operation is not a valid RFC 6902 operation (e.g. `path` is not a JSON pointer).
    #[error("overrides[{index}] ({name:?}): jsonPatch[{op}] ({op_desc}): {message}")]
    InvalidOperation {
        /// Index in `spec.overrides`.
        index: usize,
        /// Override name.
        name: String,
        /// Index in `jsonPatch`.
        op: usize,
        /// `op path`, e.g. `replace /spec/replicas`.
        op_desc: String,
        /// Why.
        message: String,
    },
    /// A `${...}` variable is unknown, malformed or has no value for this cluster.
    #[error("overrides[{index}] ({name:?}): jsonPatch[{op}] ({op_desc}): {message}")]
    Variable {
        /// Index in `spec.overrides`.
        index: usize,
        /// Override name.
        name: String,
        /// Index in `jsonPatch`.
        op: usize,
        /// `op path`.
        op_desc: String,
        /// Which variable and why.
        message: String,
    },
    /// The override applies to the cluster but its target selects no rendered object.
    #[error("overrides[{index}] ({name:?}): target {target} matches no object of the source")]
    NoMatchingObject {
        /// Index in `spec.overrides`.
        index: usize,
        /// Override name.
        name: String,
        /// The target, e.g. `apps/Deployment web (namespace any)`.
        target: String,
    },
    /// The patch does not apply to an object.
    #[error(
        "overrides[{index}] ({name:?}): jsonPatch[{op}] ({op_desc}) does not apply to {object}: {message}"
    )]
    Patch {
        /// Index in `spec.overrides`.
        index: usize,
        /// Override name.
        name: String,
        /// Index in `jsonPatch` of the failing operation.
        op: usize,
        /// `op path` of the failing operation.
        op_desc: String,
        /// `apiVersion/kind namespace/name` of the object.
        object: String,
        /// Why.
        message: String,
    },
    /// Patching made the object larger than [`MAX_PATCHED_OBJECT_BYTES`].
    #[error(
        "overrides[{index}] ({name:?}): jsonPatch[{op}] ({op_desc}) makes {object} larger than {limit} bytes serialized; Kubernetes could not store it, check the patch (e.g. a copy of a value into its own child)"
    )]
    TooLarge {
        /// Index in `spec.overrides`.
        index: usize,
        /// Override name.
        name: String,
        /// Index in `jsonPatch` of the operation that crossed the limit.
        op: usize,
        /// `op path` of that operation.
        op_desc: String,
        /// `apiVersion/kind namespace/name` of the object.
        object: String,
        /// The limit, [`MAX_PATCHED_OBJECT_BYTES`].
        limit: usize,
    },
    /// The patched object is no longer a Kubernetes object.
    #[error("overrides[{index}] ({name:?}): patching {object} left an invalid object: {message}")]
    InvalidResult {
        /// Index in `spec.overrides`.
        index: usize,
        /// Override name.
        name: String,
        /// The object before patching.
        object: String,
        /// Why.
        message: String,
    },
}

impl OverrideError {
    /// A short label for metrics and condition/Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            OverrideError::Selector { .. } => "InvalidSelector",
            OverrideError::InvalidOperation { .. } => "InvalidPatch",
            OverrideError::Variable { .. } => "InvalidVariable",
            OverrideError::NoMatchingObject { .. } => "OverrideTargetNotFound",
            OverrideError::Patch { .. } => "PatchFailed",
            OverrideError::InvalidResult { .. } => "PatchFailed",
            OverrideError::TooLarge { .. } => "PatchTooLarge",
        }
    }
}

/// The revision of a source revision rendered with `overrides`: `source_revision` itself when
/// `overrides` is empty (so rollouts without overrides keep their revisions), otherwise
/// `sha256:<hex>` of the source revision, a newline and the overrides in canonical JSON (keys
/// sorted at every level). Any change to the overrides (their order included, which matters)
/// changes it.
pub fn revision_with_overrides(source_revision: &str, overrides: &[Override]) -> String {
    use sha2::{Digest, Sha256};
    if overrides.is_empty() {
        return source_revision.to_owned();
    }
    let mut buf = Vec::with_capacity(source_revision.len() + 1);
    buf.extend_from_slice(source_revision.as_bytes());
    buf.push(b'\n');
    // Overrides are plain data (string keys, finite numbers): they always serialize.
    let value = serde_json::to_value(overrides).unwrap_or(Value::Null);
    crate::source::render::write_canonical(&value, &mut buf);
    format!("sha256:{}", hex::encode(Sha256::digest(&buf)))
}

/// Applies the `overrides` whose cluster selector matches `cluster_labels` to `objects`, for the
/// member cluster `cluster_name`. Returns the objects in the same order, patched where selected.
/// See the [module documentation](self) for the rules and the variables.
pub fn render_for_cluster(
    objects: &[DynamicObject],
    overrides: &[Override],
    cluster_name: &str,
    cluster_labels: &BTreeMap<String, String>,
) -> Result<Vec<DynamicObject>, OverrideError> {
    let mut out = objects.to_vec();
    for (index, ov) in overrides.iter().enumerate() {
        let selector = Selector::try_from(ov.cluster_selector.clone()).map_err(|e| {
            OverrideError::Selector {
                index,
                name: ov.name.clone(),
                message: e.to_string(),
            }
        })?;
        if !selector.matches(cluster_labels) {
            continue;
        }
        let patch = compile_patch(index, ov, cluster_name, cluster_labels)?;
        let mut matched = false;
        for obj in out.iter_mut() {
            if !target_matches(&ov.target, obj) {
                continue;
            }
            matched = true;
            *obj = apply_one(index, ov, &patch, obj)?;
        }
        if !matched {
            return Err(OverrideError::NoMatchingObject {
                index,
                name: ov.name.clone(),
                target: describe_target(&ov.target),
            });
        }
    }
    Ok(out)
}

fn op_desc(op: &JsonPatchOp) -> String {
    let kind = match op.op {
        JsonPatchOpKind::Add => "add",
        JsonPatchOpKind::Remove => "remove",
        JsonPatchOpKind::Replace => "replace",
        JsonPatchOpKind::Move => "move",
        JsonPatchOpKind::Copy => "copy",
        JsonPatchOpKind::Test => "test",
    };
    match &op.from {
        Some(from) => format!("{kind} {from} -> {}", op.path),
        None => format!("{kind} {}", op.path),
    }
}

fn compile_patch(
    index: usize,
    ov: &Override,
    cluster_name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<json_patch::Patch, OverrideError> {
    let mut ops = Vec::with_capacity(ov.json_patch.len());
    for (i, op) in ov.json_patch.iter().enumerate() {
        let mut op = op.clone();
        if let Some(value) = op.value.as_mut() {
            substitute_value(value, cluster_name, labels).map_err(|message| {
                OverrideError::Variable {
                    index,
                    name: ov.name.clone(),
                    op: i,
                    op_desc: op_desc(&op),
                    message,
                }
            })?;
        }
        let invalid = |message: String| OverrideError::InvalidOperation {
            index,
            name: ov.name.clone(),
            op: i,
            op_desc: op_desc(&op),
            message,
        };
        let needs_value = matches!(
            op.op,
            JsonPatchOpKind::Add | JsonPatchOpKind::Replace | JsonPatchOpKind::Test
        );
        if needs_value && op.value.is_none() {
            return Err(invalid("the operation needs a value".into()));
        }
        let needs_from = matches!(op.op, JsonPatchOpKind::Move | JsonPatchOpKind::Copy);
        if needs_from && op.from.is_none() {
            return Err(invalid("the operation needs from".into()));
        }
        let json = serde_json::to_value(&op).map_err(|e| invalid(e.to_string()))?;
        let parsed: json_patch::PatchOperation =
            serde_json::from_value(json).map_err(|e| invalid(e.to_string()))?;
        ops.push(parsed);
    }
    Ok(json_patch::Patch(ops))
}

fn apply_one(
    index: usize,
    ov: &Override,
    patch: &json_patch::Patch,
    obj: &DynamicObject,
) -> Result<DynamicObject, OverrideError> {
    let object = describe_object(obj);
    let invalid_result = |message: String| OverrideError::InvalidResult {
        index,
        name: ov.name.clone(),
        object: object.clone(),
        message,
    };
    let mut doc = serde_json::to_value(obj).map_err(|e| invalid_result(e.to_string()))?;
    // One operation at a time, measuring the document after each: a single operation can at most
    // double it, so memory stays within a small multiple of the limit. `doc` is a copy, so a
    // failure part-way leaves the rendered object untouched (the patch stays atomic).
    for (i, operation) in patch.0.iter().enumerate() {
        let desc = || ov.json_patch.get(i).map(op_desc).unwrap_or_default();
        json_patch::patch(&mut doc, std::slice::from_ref(operation)).map_err(|e| {
            OverrideError::Patch {
                index,
                name: ov.name.clone(),
                op: i,
                op_desc: desc(),
                object: object.clone(),
                message: format!("{} ({})", e.kind, e.path),
            }
        })?;
        if serialized_len_exceeds(&doc, MAX_PATCHED_OBJECT_BYTES) {
            return Err(OverrideError::TooLarge {
                index,
                name: ov.name.clone(),
                op: i,
                op_desc: desc(),
                object: object.clone(),
                limit: MAX_PATCHED_OBJECT_BYTES,
            });
        }
    }
    for (pointer, what) in [
        ("/apiVersion", "apiVersion"),
        ("/kind", "kind"),
        ("/metadata/name", "metadata.name"),
    ] {
        if doc
            .pointer(pointer)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(invalid_result(format!("{what} is missing or not a string")));
        }
    }
    serde_json::from_value(doc).map_err(|e| invalid_result(e.to_string()))
}

/// Whether `doc`'s compact JSON serialization is longer than `limit` bytes. Counts without
/// allocating, and stops writing as soon as the limit is crossed.
fn serialized_len_exceeds(doc: &Value, limit: usize) -> bool {
    struct Counter {
        len: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.len = self.len.saturating_add(buf.len());
            if self.len > self.limit {
                return Err(std::io::Error::other("limit exceeded"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { len: 0, limit };
    serde_json::to_writer(&mut counter, doc).is_err()
}

/// The API group of an `apiVersion` (`""` for the core group).
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn target_matches(t: &OverrideTarget, obj: &DynamicObject) -> bool {
    let Some(types) = obj.types.as_ref() else {
        return false;
    };
    types.kind == t.kind
        && t.group
            .as_deref()
            .is_none_or(|g| g == group_of(&types.api_version))
        && t.name
            .as_deref()
            .is_none_or(|n| obj.metadata.name.as_deref() == Some(n))
        && t.namespace
            .as_deref()
            .is_none_or(|ns| obj.metadata.namespace.as_deref() == Some(ns))
}

fn describe_target(t: &OverrideTarget) -> String {
    let group = match t.group.as_deref() {
        None => "*".to_string(),
        Some("") => "core".to_string(),
        Some(g) => g.to_string(),
    };
    format!(
        "{group}/{} name {} namespace {}",
        t.kind,
        t.name.as_deref().unwrap_or("*"),
        t.namespace.as_deref().unwrap_or("*"),
    )
}

/// `apiVersion/kind namespace/name` (or `apiVersion/kind name` when cluster-scoped).
pub(crate) fn describe_object(obj: &DynamicObject) -> String {
    let (api_version, kind) = obj
        .types
        .as_ref()
        .map_or(("?", "?"), |t| (t.api_version.as_str(), t.kind.as_str()));
    let name = obj.metadata.name.as_deref().unwrap_or("?");
    match obj.metadata.namespace.as_deref() {
        Some(ns) => format!("{api_version} {kind} {ns}/{name}"),
        None => format!("{api_version} {kind} {name}"),
    }
}

fn substitute_value(
    value: &mut Value,
    cluster_name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), String> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                *s = substitute(s, cluster_name, labels)?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| substitute_value(v, cluster_name, labels)),
        Value::Object(map) => map
            .values_mut()
            .try_for_each(|v| substitute_value(v, cluster_name, labels)),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Replaces the variables in one string (see the module documentation).
pub fn substitute(
    input: &str,
    cluster_name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(format!("unterminated variable {after:?}"));
            };
            let var = &tail[..end];
            if var == "CLUSTER_NAME" {
                out.push_str(cluster_name);
            } else if let Some(key) = var
                .strip_prefix("CLUSTER_LABEL[")
                .and_then(|k| k.strip_suffix(']'))
            {
                match labels.get(key) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(format!(
                            "variable ${{{var}}}: cluster {cluster_name:?} has no label {key:?}"
                        ));
                    }
                }
            } else {
                return Err(format!(
                    "unknown variable ${{{var}}} (known: ${{CLUSTER_NAME}}, ${{CLUSTER_LABEL[key]}}; write $${{ for a literal ${{)"
                ));
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

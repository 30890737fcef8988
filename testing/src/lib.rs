//! Test support: validate objects the way an API server would, against a CRD's OpenAPI v3 schema
//! (structure, types, enums, patterns, bounds, unknown fields) and its CEL rules.
//!
//! The OpenAPI v3 dialect of CRDs is not JSON Schema: `nullable`, `x-kubernetes-int-or-string` and
//! `x-kubernetes-preserve-unknown-fields` are translated here, and objects that declare
//! `properties` without preserving unknown fields reject unknown fields (the API server prunes or,
//! with `fieldValidation=Strict`, rejects them — either way a misspelled field is a bug).

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

/// Translate a CRD's OpenAPI v3 schema into JSON Schema (draft 2020-12) the `jsonschema` crate
/// validates with.
pub fn openapi_to_json_schema(schema: &Value) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let nullable = obj.get("nullable") == Some(&Value::Bool(true));
    for (key, value) in obj {
        match key.as_str() {
            "properties" => {
                let props = value
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), openapi_to_json_schema(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" | "not" if value.is_object() => {
                out.insert(key.clone(), openapi_to_json_schema(value));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let branches = value
                    .as_array()
                    .map(|b| b.iter().map(openapi_to_json_schema).collect())
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Array(branches));
            }
            // Keywords JSON Schema does not know, or that this translation replaces.
            "nullable"
            | "x-kubernetes-int-or-string"
            | "x-kubernetes-preserve-unknown-fields"
            | "format"
            | "x-kubernetes-validations"
            | "x-kubernetes-list-type"
            | "x-kubernetes-list-map-keys"
            | "x-kubernetes-map-type"
            | "x-kubernetes-embedded-resource"
            | "default"
            | "example" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.remove("anyOf");
        out.insert("type".into(), serde_json::json!(["integer", "string"]));
    }
    if obj.contains_key("properties") && !preserve && !obj.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if nullable {
        match out.get("type").cloned() {
            Some(Value::String(t)) => {
                out.insert("type".into(), serde_json::json!([t, "null"]));
            }
            Some(Value::Array(mut types)) => {
                types.push(Value::String("null".into()));
                out.insert("type".into(), Value::Array(types));
            }
            _ => {}
        }
        if let Some(Value::Array(values)) = out.get_mut("enum") {
            values.push(Value::Null);
        }
    }
    Value::Object(out)
}

/// Validates objects against one version of a CRD.
pub struct CrdValidator {
    kind: String,
    openapi: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CrdValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdValidator")
            .field("kind", &self.kind)
            .finish()
    }
}

impl CrdValidator {
    /// A validator for `version` of `crd` (the storage version when `None`).
    pub fn new(crd: &CustomResourceDefinition, version: Option<&str>) -> Result<Self, String> {
        let v = crd
            .spec
            .versions
            .iter()
            .find(|v| version.map_or(v.storage, |want| v.name == want))
            .ok_or_else(|| format!("{} has no version {version:?}", crd.spec.names.kind))?;
        let openapi = serde_json::to_value(
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .ok_or_else(|| format!("{} {} has no schema", crd.spec.names.kind, v.name))?,
        )
        .map_err(|e| e.to_string())?;
        let mut json_schema = openapi_to_json_schema(&openapi);
        // apiVersion/kind/metadata are validated by the API server itself, not the CRD schema.
        if let Some(Value::Object(props)) = json_schema.get_mut("properties") {
            for meta in ["apiVersion", "kind", "metadata"] {
                props.entry(meta).or_insert_with(|| serde_json::json!({}));
            }
        }
        let validator = jsonschema::validator_for(&json_schema).map_err(|e| e.to_string())?;
        Ok(Self {
            kind: crd.spec.names.kind.clone(),
            openapi,
            validator,
        })
    }

    /// A validator for a CRD stored as YAML (one document).
    pub fn from_yaml_file(path: &Path, version: Option<&str>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::new(&crd, version)
    }

    /// The kind this validator checks.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Every schema violation of `object`, as `path: message`.
    pub fn schema_errors(&self, object: &Value) -> Vec<String> {
        self.validator
            .iter_errors(object)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Every CEL rule `object` breaks (after schema defaults are applied, as the API server does),
    /// with the rule's message. `old` evaluates transition rules.
    pub fn cel_errors(&self, object: &Value, old: Option<&Value>) -> Vec<String> {
        match kube::core::cel::Validator::new().validate(&self.openapi, object, old) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .into_vec()
                .into_iter()
                .map(|e| e.to_string())
                .collect(),
        }
    }

    /// Schema and CEL errors together; empty when the object is valid.
    pub fn errors(&self, object: &Value) -> Vec<String> {
        let mut errors = self.schema_errors(object);
        errors.extend(self.cel_errors(object, None));
        errors
    }
}

/// The directory of the shared upstream CRDs: `$OVERSEER_SHARED_DIR/upstream-crds`, else
/// `../shared/upstream-crds` beside the checkout.
pub fn upstream_crds_dir() -> PathBuf {
    let shared = std::env::var_os("OVERSEER_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared.join("upstream-crds")
}

/// A validator for an upstream CRD file, given relative to [`upstream_crds_dir`]
/// (e.g. `kaito/kaito.sh_workspaces.yaml`).
pub fn upstream(relative: &str, version: Option<&str>) -> CrdValidator {
    let path = upstream_crds_dir().join(relative);
    CrdValidator::from_yaml_file(&path, version)
        .unwrap_or_else(|e| panic!("upstream CRD {relative}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nullable_and_int_or_string_are_translated() {
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "string", "nullable": true},
            "b": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        }});
        let v = jsonschema::validator_for(&openapi_to_json_schema(&schema)).expect("compiles");
        assert!(v.is_valid(&json!({"a": null, "b": 3})));
        assert!(v.is_valid(&json!({"a": "x", "b": "50%"})));
        assert!(!v.is_valid(&json!({"a": 1})));
        assert!(!v.is_valid(&json!({"b": true})));
    }

    #[test]
    fn unknown_fields_fail_unless_preserved() {
        let schema = json!({"type": "object", "properties": {
            "strict": {"type": "object", "properties": {"x": {"type": "string"}}},
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"x": {"type": "string"}}}
        }});
        let v = jsonschema::validator_for(&openapi_to_json_schema(&schema)).expect("compiles");
        assert!(!v.is_valid(&json!({"strict": {"y": 1}})));
        assert!(v.is_valid(&json!({"open": {"y": 1}})));
    }
}

//! Revision identity: what a revision runs, hashed, and the name minted from that hash.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use overseer_crds::runway::{
    BackendKind, InferenceRuntimeSpec, ModelSpec, Placement, Profile, RuntimeResources, ServingSpec,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex characters of the SHA-256 kept in a revision hash.
pub const HASH_LEN: usize = 10;

/// Longest revision name this crate mints. Backends derive object names from the revision name
/// with suffixes of up to 16 characters (`-predictor` for KServe's Service, `-frontend` for
/// Dynamo's, `-prefill`, `-epp`), and those names must stay DNS-1035 labels (≤ 63 characters).
pub const MAX_REVISION_NAME_LEN: usize = 47;

/// Exactly the parts of a spec that decide what a revision runs. Replicas, the endpoint, the
/// switch strategy and the history limit are left out: changing them never mints a revision.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RevisionIdentity<'a> {
    backend: BackendKind,
    image: Option<&'a str>,
    args: &'a BTreeMap<String, String>,
    env: &'a [EnvVar],
    model: &'a ModelSpec,
    profile: Profile,
    serving: &'a ServingSpec,
    resources: &'a RuntimeResources,
    placement: Option<&'a Placement>,
}

/// The hash of what a revision runs: the first [`HASH_LEN`] hex characters of the SHA-256 of the
/// canonical JSON (object keys sorted at every level, no whitespace) of the backend, the engine
/// image, args and env, the model, the profile, the serving topology, the resources and the
/// placement. Replicas, the endpoint and the switch strategy do not take part.
pub fn revision_hash(spec: &InferenceRuntimeSpec) -> String {
    let identity = RevisionIdentity {
        backend: spec.engine.backend,
        image: spec.engine.image.as_deref(),
        args: &spec.engine.args,
        env: &spec.engine.env,
        model: &spec.model,
        profile: spec.profile,
        serving: &spec.serving,
        resources: &spec.resources,
        placement: spec.placement.as_ref(),
    };
    // Serializing these plain data types cannot fail (string keys, no non-finite floats); should
    // it ever, hashing `null` still yields a stable (if coarse) identity instead of a panic.
    let value = serde_json::to_value(&identity).unwrap_or(Value::Null);
    let mut canonical = String::with_capacity(512);
    write_canonical(&value, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    let mut hash = hex::encode(digest);
    hash.truncate(HASH_LEN);
    hash
}

/// Canonical JSON: keys sorted explicitly (so the hash does not depend on whether some crate in
/// the build enables serde_json's `preserve_order`), no whitespace.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The revision name `<runtime>-<hash>`: a DNS-1035 label of at most
/// [`MAX_REVISION_NAME_LEN`] characters. The runtime name is lower-cased, characters a label
/// cannot hold (`.` of a DNS subdomain, anything else) become `-`, a leading non-letter gets an
/// `r` prefix, and the name is cut so the hash always survives whole.
pub fn revision_name(runtime_name: &str, hash: &str) -> String {
    let hash: String = hash
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(HASH_LEN)
        .collect();
    let budget = MAX_REVISION_NAME_LEN.saturating_sub(hash.len() + 1);
    let mut prefix = String::with_capacity(budget);
    for c in runtime_name.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if prefix.is_empty() && !c.is_ascii_lowercase() {
            prefix.push('r');
            if c == '-' {
                continue;
            }
        }
        prefix.push(c);
    }
    prefix.truncate(budget);
    while prefix.ends_with('-') {
        prefix.pop();
    }
    // Where the prefix lost part of the runtime name (cut, or characters replaced), two runtimes
    // of one namespace could get the same prefix — and, with the same spec, the same revision
    // name. The hash part then also covers the full runtime name, so their names differ.
    let hash = if prefix == runtime_name || hash.is_empty() {
        hash
    } else {
        let mut mixed = hex::encode(Sha256::digest(format!("{hash}/{runtime_name}").as_bytes()));
        mixed.truncate(hash.len());
        mixed
    };
    match (prefix.is_empty(), hash.is_empty()) {
        (true, true) => "r".to_string(),
        (true, false) => format!("r-{hash}"),
        (false, true) => prefix,
        (false, false) => format!("{prefix}-{hash}"),
    }
}

/// Whether `s` is a DNS-1035 label of at most `max` characters: lower-case letters, digits and
/// `-`, starting with a letter and ending with a letter or digit.
pub fn is_dns1035_label(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_crds::runway::{EngineSpec, SwitchType};

    fn spec() -> InferenceRuntimeSpec {
        InferenceRuntimeSpec {
            model: ModelSpec {
                uri: "hf://Qwen/Qwen3-0.6B".into(),
                ..Default::default()
            },
            engine: EngineSpec {
                backend: BackendKind::Vllm,
                ..Default::default()
            },
            replicas: 1,
            ..Default::default()
        }
    }

    #[test]
    fn hash_is_ten_hex_and_stable() {
        let h = revision_hash(&spec());
        assert_eq!(h.len(), HASH_LEN);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(h, revision_hash(&spec()));
    }

    #[test]
    fn hash_ignores_replicas_endpoint_and_strategy() {
        let base = revision_hash(&spec());
        let mut s = spec();
        s.replicas = 7;
        s.endpoint.port = Some(9000);
        s.switch_strategy.type_ = SwitchType::Recreate;
        s.revision_history_limit = 5;
        assert_eq!(revision_hash(&s), base);
    }

    #[test]
    fn hash_changes_with_what_runs() {
        let base = revision_hash(&spec());
        let mut changes: Vec<InferenceRuntimeSpec> = Vec::new();
        let mut s = spec();
        s.engine.backend = BackendKind::Kaito;
        changes.push(s);
        let mut s = spec();
        s.engine.image = Some("vllm/vllm-openai:v0.1".into());
        changes.push(s);
        let mut s = spec();
        s.engine.args.insert("max-model-len".into(), "4096".into());
        changes.push(s);
        let mut s = spec();
        s.model.uri = "hf://Qwen/Qwen3-8B".into();
        changes.push(s);
        let mut s = spec();
        s.profile = Profile::Cpu;
        changes.push(s);
        let mut s = spec();
        s.placement = Some(Placement {
            node_selector: [("pool".to_string(), "gpu".to_string())].into(),
            ..Default::default()
        });
        changes.push(s);
        for changed in changes {
            assert_ne!(revision_hash(&changed), base, "{changed:?}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let mut out = String::new();
        write_canonical(
            &serde_json::json!({"b": 1, "a": {"d": [1, "x"], "c": null}}),
            &mut out,
        );
        assert_eq!(out, r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn revision_names_are_dns1035_labels() {
        assert_eq!(revision_name("qwen3", "0123456789"), "qwen3-0123456789");
        let long = "a".repeat(100);
        let name = revision_name(&long, "0123456789");
        assert_eq!(name.len(), MAX_REVISION_NAME_LEN);
        assert!(
            !name.ends_with("-0123456789"),
            "a cut name's hash also covers the full name: {name}"
        );
        assert_eq!(
            revision_name("my-model-v2", "abcdef0123"),
            "my-model-v2-abcdef0123"
        );
        for (runtime, prefix) in [
            ("my.model.v2", "my-model-v2-"),
            ("9lives", "r9lives-"),
            ("Qwen", "qwen-"),
            ("", "r-"),
        ] {
            let name = revision_name(runtime, "abcdef0123");
            assert!(name.starts_with(prefix), "{name}");
            assert_eq!(name.len(), prefix.len() + HASH_LEN, "{name}");
            assert!(is_dns1035_label(&name, MAX_REVISION_NAME_LEN), "{name}");
        }
        // Runtime names that only differ past the cut, or in a replaced character, get
        // different revision names for the same spec.
        let a = format!("{}-prod-a", "qwen3-8b-instruct-customer-support");
        let b = format!("{}-prod-b", "qwen3-8b-instruct-customer-support");
        assert_ne!(
            revision_name(&a, "abcdef0123"),
            revision_name(&b, "abcdef0123")
        );
        assert_ne!(
            revision_name("a.b", "abcdef0123"),
            revision_name("a-b", "abcdef0123")
        );
        // A name kept whole keeps the spec's hash as it is.
        assert_eq!(revision_name("a-b", "abcdef0123"), "a-b-abcdef0123");
        // A cut that lands on a dash does not leave `--`.
        let name = revision_name(&format!("{}-b", "a".repeat(35)), "abcdef0123");
        assert!(is_dns1035_label(&name, 63), "{name}");
        assert!(!name.contains("--"), "{name}");
    }
}

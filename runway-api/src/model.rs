//! Model locations and served names.

use overseer_crds::runway::ModelSpec;

use crate::meta::is_dns1123_subdomain;

/// Where a model comes from, parsed from `spec.model.uri`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource<'a> {
    /// `hf://org/name`: a Hugging Face repository id (`org/name`, or a bare `name`).
    HuggingFace(&'a str),
    /// `pvc://claim/path`: weights on a PersistentVolumeClaim of the runtime's namespace.
    Pvc {
        /// Claim name.
        claim: &'a str,
        /// Path of the model directory inside the claim (may be empty: the claim's root).
        path: &'a str,
    },
    /// `preset://name`: a KAITO preset.
    Preset(&'a str),
}

impl<'a> ModelSource<'a> {
    /// Parses a model URI, saying what is wrong with a bad one.
    pub fn parse(uri: &'a str) -> Result<Self, String> {
        let bad_chars = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
        if let Some(id) = uri.strip_prefix("hf://") {
            let id = id.trim_end_matches('/');
            let parts: Vec<&str> = id.split('/').collect();
            if id.is_empty()
                || bad_chars(id)
                || parts.len() > 2
                || parts.iter().any(|p| p.is_empty())
            {
                return Err(format!(
                    "{uri:?} is not a Hugging Face model: use hf://org/name (or hf://name)"
                ));
            }
            Ok(Self::HuggingFace(id))
        } else if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
            let path = path.trim_matches('/');
            if !is_dns1123_subdomain(claim) {
                return Err(format!(
                    "{uri:?}: {claim:?} is not a PersistentVolumeClaim name; use pvc://claim/path"
                ));
            }
            if bad_chars(path) || path.split('/').any(|seg| seg == "..") {
                return Err(format!(
                    "{uri:?}: the path inside the claim cannot hold whitespace or `..`"
                ));
            }
            Ok(Self::Pvc { claim, path })
        } else if let Some(name) = uri.strip_prefix("preset://") {
            if name.is_empty() || bad_chars(name) || name.contains('/') {
                return Err(format!(
                    "{uri:?} is not a KAITO preset name: use preset://name"
                ));
            }
            Ok(Self::Preset(name))
        } else {
            Err(format!(
                "{uri:?} has no known scheme: use hf://, pvc:// or preset://"
            ))
        }
    }

    /// The path the model server loads the model from, given where a PVC is mounted.
    pub(crate) fn server_model_arg(&self, mount: &str) -> String {
        match self {
            Self::HuggingFace(id) | Self::Preset(id) => (*id).to_string(),
            Self::Pvc { path: "", .. } => mount.to_string(),
            Self::Pvc { path, .. } => format!("{mount}/{path}"),
        }
    }
}

/// The name the model is served under: `spec.model.servedName`, else the last path segment of
/// the URI (`hf://Qwen/Qwen3-8B` → `Qwen3-8B`, `pvc://models/llama/8b` → `8b`,
/// `preset://phi-4` → `phi-4`). `None` when neither gives a name.
pub fn served_name(model: &ModelSpec) -> Option<String> {
    if let Some(name) = &model.served_name {
        return (!name.is_empty()).then(|| name.clone());
    }
    let rest = model
        .uri
        .split_once("://")
        .map_or(model.uri.as_str(), |(_, r)| r);
    rest.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_whitespace))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(uri: &str) -> ModelSpec {
        ModelSpec {
            uri: uri.into(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("hf://Qwen/Qwen3-8B"),
            Ok(ModelSource::HuggingFace("Qwen/Qwen3-8B"))
        );
        assert_eq!(
            ModelSource::parse("hf://gpt2"),
            Ok(ModelSource::HuggingFace("gpt2"))
        );
        assert_eq!(
            ModelSource::parse("pvc://models/llama/8b"),
            Ok(ModelSource::Pvc {
                claim: "models",
                path: "llama/8b"
            })
        );
        assert_eq!(
            ModelSource::parse("pvc://models"),
            Ok(ModelSource::Pvc {
                claim: "models",
                path: ""
            })
        );
        assert_eq!(
            ModelSource::parse("preset://phi-4"),
            Ok(ModelSource::Preset("phi-4"))
        );
        for bad in [
            "s3://x",
            "hf://",
            "hf://a/b/c",
            "hf://a//b",
            "pvc://Bad_Claim/x",
            "pvc://m/../etc",
            "preset://",
            "hf://a b",
        ] {
            assert!(ModelSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn served_names() {
        assert_eq!(
            served_name(&model("hf://Qwen/Qwen3-8B")).as_deref(),
            Some("Qwen3-8B")
        );
        assert_eq!(
            served_name(&model("pvc://models/llama/8b/")).as_deref(),
            Some("8b")
        );
        assert_eq!(
            served_name(&model("preset://phi-4")).as_deref(),
            Some("phi-4")
        );
        assert_eq!(served_name(&model("hf://")), None);
        let mut m = model("hf://Qwen/Qwen3-8B");
        m.served_name = Some("qwen".into());
        assert_eq!(served_name(&m).as_deref(), Some("qwen"));
    }
}

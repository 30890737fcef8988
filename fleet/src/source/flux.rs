//! Flux sources: the artifact of a `GitRepository` or `OCIRepository`
//! (`source.toolkit.fluxcd.io`), downloaded from `status.artifact.url` and checked against
//! `status.artifact.digest` before anything in it is read.
//!
//! `GitRepository` is read at `v1`; `OCIRepository` at `v1`, then `v1beta2` when the API server
//! does not serve `v1` (Flux before 2.6). The digest must be `sha256:`, `sha384:` or `sha512:`
//! followed by hex; an artifact without a digest is refused. The artifact is a gzip-compressed
//! tarball (what Flux's source-controller serves); it is read in memory, never unpacked to disk.

use std::io::Read;

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use overseer_crds::fleet::{FluxSource, FluxSourceKind};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::{Document, Limits, RenderedSource, SourceError, git::is_manifest, render_documents};

/// Flux's source API group.
pub const FLUX_SOURCE_GROUP: &str = "source.toolkit.fluxcd.io";

/// The artifact a Flux source advertises in its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// Where to download it.
    pub url: String,
    /// `algo:hex`.
    pub digest: String,
    /// Flux's revision string (e.g. `main@sha1:…`), when given.
    pub revision: Option<String>,
}

/// Reads `status.artifact` from a Flux source object.
pub fn artifact_of(obj: &DynamicObject) -> Result<Artifact, String> {
    let artifact = obj
        .data
        .pointer("/status/artifact")
        .filter(|a| !a.is_null())
        .ok_or("has no artifact yet (status.artifact is empty): is the source ready?")?;
    let text = |k: &str| {
        artifact
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let url = text("url").ok_or("status.artifact.url is missing")?;
    let digest = text("digest")
        .ok_or("status.artifact.digest is missing: an unverifiable artifact is not used")?;
    Ok(Artifact {
        url,
        digest,
        revision: text("revision"),
    })
}

/// The namespace where Flux itself keeps the sources cluster admins define, which every rollout
/// may use: only admins write there, so reading it deputizes no one.
pub const FLUX_SYSTEM_NAMESPACE: &str = "flux-system";

/// The namespace of the Flux source `spec` names for a rollout in `namespace`: the rollout's own
/// (named or left out) or [`FLUX_SYSTEM_NAMESPACE`]; any other is refused — the operator reads
/// every namespace, and following such a reference would let a rollout's author deploy (and
/// snapshot into their own namespace) another team's artifact.
pub fn own_namespace<'a>(
    namespace: &'a str,
    spec: &'a FluxSource,
    kind: &str,
) -> Result<&'a str, SourceError> {
    match spec.namespace.as_deref() {
        None => Ok(namespace),
        Some(ns) if ns == namespace || ns == FLUX_SYSTEM_NAMESPACE => Ok(ns),
        Some(ns) => Err(SourceError::CrossNamespace {
            kind: kind.into(),
            namespace: ns.into(),
            own: namespace.into(),
        }),
    }
}

/// Reads the Flux source object named in `spec`, in the rollout's namespace `namespace`.
pub async fn read_source(
    client: &Client,
    namespace: &str,
    spec: &FluxSource,
) -> Result<DynamicObject, SourceError> {
    let (kind, versions): (&str, &[&str]) = match spec.kind {
        FluxSourceKind::GitRepository => ("GitRepository", &["v1"]),
        FluxSourceKind::OCIRepository => ("OCIRepository", &["v1", "v1beta2"]),
    };
    let ns = own_namespace(namespace, spec, kind)?;
    for version in versions {
        let gvk = GroupVersionKind::gvk(FLUX_SOURCE_GROUP, version, kind);
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        match api.get_opt(&spec.name).await {
            Ok(Some(obj)) => return Ok(obj),
            Ok(None) => continue,
            Err(source) => {
                return Err(SourceError::Kube {
                    kind: kind.into(),
                    namespace: ns.into(),
                    name: spec.name.clone(),
                    source: Box::new(source),
                });
            }
        }
    }
    Err(SourceError::NotFound {
        kind: format!("{kind}.{FLUX_SOURCE_GROUP}"),
        namespace: ns.into(),
        name: spec.name.clone(),
    })
}

/// Resolves a Flux source: reads the object, downloads and verifies its artifact, renders it.
pub(crate) async fn resolve(
    client: &Client,
    http: &reqwest::Client,
    limits: &Limits,
    namespace: &str,
    spec: &FluxSource,
) -> Result<RenderedSource, SourceError> {
    let obj = read_source(client, namespace, spec).await?;
    let kind = match spec.kind {
        FluxSourceKind::GitRepository => "GitRepository",
        FluxSourceKind::OCIRepository => "OCIRepository",
    };
    let ns = own_namespace(namespace, spec, kind)?;
    let artifact = artifact_of(&obj).map_err(|message| SourceError::FluxArtifact {
        kind: kind.into(),
        namespace: ns.into(),
        name: spec.name.clone(),
        message,
    })?;
    let bytes = download(http, &artifact.url, limits.max_artifact_bytes).await?;
    verify_digest(&artifact.url, &artifact.digest, &bytes)?;
    let source_name = format!("{kind} {ns}/{}", spec.name);
    let mut rendered = render_tarball(
        &source_name,
        &artifact.url,
        &bytes,
        spec.path.as_deref(),
        limits,
    )?;
    rendered.origin = Some(format!(
        "{source_name} artifact {}",
        artifact.revision.as_deref().unwrap_or(&artifact.digest)
    ));
    Ok(rendered)
}

/// Downloads `url`, refusing bodies larger than `max_bytes`.
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, SourceError> {
    let fail = |message: String| SourceError::ArtifactFetch {
        url: url.to_owned(),
        message,
    };
    let mut response = http
        .get(url)
        .send()
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    if response.content_length().is_some_and(|l| l > max_bytes) {
        return Err(SourceError::TooLarge {
            what: format!("artifact {url}"),
            limit: max_bytes,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(error_chain(&e)))? {
        if (body.len() + chunk.len()) as u64 > max_bytes {
            return Err(SourceError::TooLarge {
                what: format!("artifact {url}"),
                limit: max_bytes,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Checks `bytes` against `expected` (`sha256:<hex>`, `sha384:<hex>` or `sha512:<hex>`).
pub fn verify_digest(url: &str, expected: &str, bytes: &[u8]) -> Result<(), SourceError> {
    let (algo, hex_digest) = expected.split_once(':').unwrap_or(("", expected));
    let actual = match algo {
        "sha256" => hex::encode(Sha256::digest(bytes)),
        "sha384" => hex::encode(Sha384::digest(bytes)),
        "sha512" => hex::encode(Sha512::digest(bytes)),
        _ => {
            return Err(SourceError::DigestMismatch {
                url: url.to_owned(),
                expected: expected.to_owned(),
                actual: "unsupported digest algorithm (sha256, sha384 or sha512 expected)".into(),
            });
        }
    };
    if actual.eq_ignore_ascii_case(hex_digest) {
        Ok(())
    } else {
        Err(SourceError::DigestMismatch {
            url: url.to_owned(),
            expected: expected.to_owned(),
            actual: format!("{algo}:{actual}"),
        })
    }
}

/// Normalizes a tar entry path: strips `./`, refuses `..`; `None` for paths to skip.
fn clean_path(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Renders the manifests under `path` in a gzip-compressed tarball, in path order. Hidden files
/// and directories, links and other non-regular entries are skipped.
pub fn render_tarball(
    source_name: &str,
    url: &str,
    bytes: &[u8],
    path: Option<&str>,
    limits: &Limits,
) -> Result<RenderedSource, SourceError> {
    let archive_err = |message: String| SourceError::Archive {
        url: url.to_owned(),
        message,
    };
    let prefix = path
        .and_then(clean_path)
        .map(|p| format!("{p}/"))
        .unwrap_or_default();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = archive
        .entries()
        .map_err(|e| archive_err(format!("not a gzip-compressed tarball: {e}")))?;
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut dir_seen = prefix.is_empty();
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_err(format!("not a gzip-compressed tarball: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(clean) = clean_path(&raw) else {
            continue;
        };
        let Some(rel) = clean.strip_prefix(&prefix).or_else(|| {
            // The directory entry of `path` itself.
            (format!("{clean}/") == prefix).then_some("")
        }) else {
            continue;
        };
        dir_seen = true;
        let kind = entry.header().entry_type();
        if rel.is_empty() || !kind.is_file() {
            continue;
        }
        if rel.split('/').any(|c| c.starts_with('.')) {
            continue;
        }
        let name = clean.rsplit('/').next().unwrap_or_default();
        if !is_manifest(name) {
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        total = total.saturating_add(size);
        if total > limits.max_manifest_bytes {
            return Err(SourceError::TooLarge {
                what: format!("{source_name}: manifest files"),
                limit: limits.max_manifest_bytes,
            });
        }
        let mut content = String::new();
        entry
            .by_ref()
            .take(limits.max_manifest_bytes)
            .read_to_string(&mut content)
            .map_err(|e| SourceError::Manifest {
                document: clean.clone(),
                object: None,
                message: format!("cannot be read as UTF-8 text: {e}"),
            })?;
        files.push(Document {
            origin: clean,
            content,
        });
    }
    if !dir_seen {
        return Err(SourceError::PathNotFound {
            source_name: source_name.to_owned(),
            path: path.unwrap_or_default().to_owned(),
            revision: format!("artifact {url}"),
        });
    }
    files.sort_by(|a, b| a.origin.cmp(&b.origin));
    render_documents(source_name, files)
}

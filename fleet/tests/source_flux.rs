//! Flux sources: the artifact is served by a local HTTP server (axum on 127.0.0.1), the Flux
//! object by a mock API server; the digest is verified before the tarball is read.

#[path = "source_support/mod.rs"]
mod support;

use axum::{Router, http::StatusCode, routing::get};
use fleet::source::{
    Document, Limits, SourceError, SourceResolver,
    flux::{render_tarball, verify_digest},
    render_documents,
};
use overseer_crds::fleet::{FluxSource, FluxSourceKind, RolloutSource};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Expected, mock_client, not_found, within};

const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec: {replicas: 1}\n";
const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: shop}\n";

/// A gzip-compressed tarball of `files` (path, content), as Flux's source-controller serves.
fn tarball(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.as_bytes())
            .expect("append");
    }
    let gz = builder.into_inner().expect("tar");
    gz.finish().expect("gzip")
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Serves `body` at `/artifact.tar.gz` on 127.0.0.1; returns the URL.
async fn serve(body: Vec<u8>) -> String {
    let app = Router::new()
        .route("/artifact.tar.gz", get(move || async move { body.clone() }))
        .route(
            "/missing.tar.gz",
            get(|| async { (StatusCode::NOT_FOUND, "gone") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    format!("http://{addr}/artifact.tar.gz")
}

fn git_repository(url: &str, digest: &str) -> Value {
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "app", "namespace": "flux-system"},
        "spec": {"url": "https://example.invalid/app.git", "interval": "1m"},
        "status": {"artifact": {
            "url": url, "digest": digest, "revision": "main@sha1:0123456789abcdef",
            "path": "gitrepository/flux-system/app/0123.tar.gz",
            "lastUpdateTime": "2026-01-01T00:00:00Z"
        }}
    })
}

fn flux_source(kind: FluxSourceKind, path: Option<&str>) -> RolloutSource {
    RolloutSource {
        flux: Some(FluxSource {
            kind,
            name: "app".into(),
            namespace: Some("flux-system".into()),
            path: path.map(Into::into),
        }),
        ..Default::default()
    }
}

const GIT_REPO_PATH: &str =
    "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/app";

#[tokio::test]
async fn git_repository_artifact_is_fetched_verified_and_rendered() {
    let bytes = tarball(&[
        ("./deploy/web.yaml", WEB),
        ("./deploy/base/settings.yaml", CM),
        ("./deploy/.ci/pipeline.yaml", "not: [a manifest"),
        ("./README.md", "# app"),
        ("./other/x.yaml", "junk: ["),
    ]);
    let url = serve(bytes.clone()).await;
    let (client, server) = mock_client(vec![Expected::get(
        GIT_REPO_PATH,
        200,
        git_repository(&url, &sha256(&bytes)),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let r = within(resolver.resolve(
        "fleet",
        &flux_source(FluxSourceKind::GitRepository, Some("deploy")),
    ))
    .await
    .expect("renders");
    let want = render_documents(
        "t",
        [(WEB, "a"), (CM, "b")].map(|(c, o)| Document {
            origin: o.into(),
            content: c.into(),
        }),
    )
    .unwrap();
    assert_eq!(r.revision, want.revision);
    assert_eq!(r.objects, want.objects);
    assert!(
        r.origin.unwrap().contains("main@sha1:0123456789abcdef"),
        "origin names Flux's revision"
    );
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn digest_mismatch_is_refused_before_reading() {
    let bytes = tarball(&[("web.yaml", WEB)]);
    let url = serve(bytes.clone()).await;
    let wrong = sha256(b"something else");
    let (client, server) = mock_client(vec![Expected::get(
        GIT_REPO_PATH,
        200,
        git_repository(&url, &wrong),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let err = within(resolver.resolve("fleet", &flux_source(FluxSourceKind::GitRepository, None)))
        .await
        .unwrap_err();
    match &err {
        SourceError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha256(&bytes));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_eq!(err.category(), "DigestMismatch");
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn oci_repository_falls_back_to_v1beta2_and_missing_sources_are_named() {
    let bytes = tarball(&[("web.yaml", WEB)]);
    let url = serve(bytes.clone()).await;
    let mut oci = git_repository(&url, &sha256(&bytes));
    oci["apiVersion"] = json!("source.toolkit.fluxcd.io/v1beta2");
    oci["kind"] = json!("OCIRepository");
    let (client, server) = mock_client(vec![
        Expected::get(
            "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/ocirepositories/app",
            404,
            not_found("ocirepositories", "app"),
        ),
        Expected::get(
            "/apis/source.toolkit.fluxcd.io/v1beta2/namespaces/flux-system/ocirepositories/app",
            200,
            oci,
        ),
        Expected::get(GIT_REPO_PATH, 404, not_found("gitrepositories", "app")),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let r = within(resolver.resolve("fleet", &flux_source(FluxSourceKind::OCIRepository, None)))
        .await
        .expect("renders");
    assert_eq!(r.objects.len(), 1);

    let err = within(resolver.resolve("fleet", &flux_source(FluxSourceKind::GitRepository, None)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "GitRepository.source.toolkit.fluxcd.io flux-system/app not found"
    );
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn source_without_artifact_or_digest_is_not_used() {
    let mut no_artifact = git_repository("http://127.0.0.1:1/x", "sha256:00");
    no_artifact["status"] = json!({"conditions": []});
    let mut no_digest = git_repository("http://127.0.0.1:1/x", "sha256:00");
    no_digest["status"]["artifact"]
        .as_object_mut()
        .unwrap()
        .remove("digest");
    let (client, server) = mock_client(vec![
        Expected::get(GIT_REPO_PATH, 200, no_artifact),
        Expected::get(GIT_REPO_PATH, 200, no_digest),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let source = flux_source(FluxSourceKind::GitRepository, None);
    let err = within(resolver.resolve("fleet", &source))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::FluxArtifact { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("GitRepository flux-system/app: has no artifact"),
        "{err}"
    );
    let err = within(resolver.resolve("fleet", &source))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("digest is missing"), "{err}");
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn unreachable_artifact_is_reported() {
    let url = serve(Vec::new())
        .await
        .replace("artifact.tar.gz", "missing.tar.gz");
    let (client, server) = mock_client(vec![Expected::get(
        GIT_REPO_PATH,
        200,
        git_repository(&url, "sha256:00"),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let err = within(resolver.resolve("fleet", &flux_source(FluxSourceKind::GitRepository, None)))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::ArtifactFetch { .. }), "{err:?}");
    assert!(err.to_string().contains("404"), "{err}");
    assert!(err.is_transient());
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn oversized_artifact_is_refused() {
    let bytes = tarball(&[("web.yaml", WEB)]);
    let url = serve(bytes.clone()).await;
    let (client, server) = mock_client(vec![Expected::get(
        GIT_REPO_PATH,
        200,
        git_repository(&url, &sha256(&bytes)),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_artifact_bytes: 16,
        ..Limits::default()
    };
    let resolver = SourceResolver::with_limits(client, cache.path(), limits).unwrap();
    let err = within(resolver.resolve("fleet", &flux_source(FluxSourceKind::GitRepository, None)))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::TooLarge { .. }), "{err:?}");
    drop(resolver);
    within(server).await.unwrap();
}

#[test]
fn tarball_errors_name_the_file_and_bad_archives_are_refused() {
    let bytes = tarball(&[("a/web.yaml", WEB), ("a/bad.yaml", "kind: [\n")]);
    let err = render_tarball(
        "GitRepository x/y",
        "http://h/a.tgz",
        &bytes,
        None,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("a/bad.yaml document 0"),
        "{err}"
    );

    let err = render_tarball(
        "GitRepository x/y",
        "http://h/a.tgz",
        b"not gzip",
        None,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::Archive { .. }), "{err:?}");

    let ok = tarball(&[("a/web.yaml", WEB)]);
    let err = render_tarball(
        "GitRepository x/y",
        "http://h/a.tgz",
        &ok,
        Some("b"),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::PathNotFound { .. }), "{err:?}");
    // `./a/` is the same directory as `a`.
    let r = render_tarball(
        "GitRepository x/y",
        "u",
        &ok,
        Some("./a/"),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(r.objects.len(), 1);
}

#[test]
fn digests_of_every_supported_algorithm_are_checked() {
    let data = b"artifact";
    verify_digest("u", &sha256(data), data).expect("sha256 matches");
    verify_digest(
        "u",
        &sha256(data).to_uppercase().replace("SHA256", "sha256"),
        data,
    )
    .expect("hex case does not matter");
    let sha512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)));
    verify_digest("u", &sha512, data).expect("sha512 matches");
    let err = verify_digest("u", "md5:abc", data).unwrap_err();
    assert!(
        err.to_string().contains("unsupported digest algorithm"),
        "{err}"
    );
    assert!(verify_digest("u", "sha256:abc", data).is_err());
}

#[tokio::test]
async fn a_flux_source_of_another_teams_namespace_is_refused_without_reading_it() {
    // No request may reach the API server: the reference is refused before it is followed.
    let (client, server) = mock_client(vec![]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let mut source = flux_source(FluxSourceKind::GitRepository, None);
    if let Some(flux) = source.flux.as_mut() {
        flux.namespace = Some("team-b".into());
    }
    let err = within(resolver.resolve("team-a", &source))
        .await
        .expect_err("another team's source");
    assert_eq!(err.category(), "CrossNamespaceSource");
    let message = err.to_string();
    assert!(
        message
            .contains("\"team-b\" is neither the rollout's namespace \"team-a\" nor flux-system"),
        "{message}"
    );
    assert!(!err.is_transient(), "the rollout's source must change");
    drop(resolver);
    within(server).await.unwrap();
}

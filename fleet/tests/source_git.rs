//! Git sources against a local repository built with gitoxide in a temporary directory and
//! fetched over a `file://` URL: branches, tags, commits, `HEAD`, paths, updates and errors.

use std::{collections::BTreeMap, path::Path};

use fleet::source::{
    Document, Limits, RenderedSource, SourceError,
    git::{self, Credentials},
    render_documents,
};
use gix::{ObjectId, refs::transaction::PreviousValue};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use overseer_crds::fleet::{GitRef, GitSource};

const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec: {replicas: 1}\n";
const WEB_V2: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec: {replicas: 2}\n";
const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: shop}\ndata: {a: '1'}\n";
const OTHER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n";
const CI: &str = "on: push\njobs: {}\n";

fn signature() -> gix::actor::Signature {
    gix::actor::Signature {
        name: "Overseer Test".into(),
        email: "test@example.invalid".into(),
        time: gix::date::Time::new(1_700_000_000, 0),
    }
}

/// A bare repository acting as the remote.
struct Remote {
    _dir: tempfile::TempDir,
    repo: gix::Repository,
    url: String,
}

impl Remote {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = gix::init_bare(dir.path()).expect("init");
        std::fs::write(dir.path().join("HEAD"), "ref: refs/heads/main\n").expect("HEAD");
        let url = format!("file://{}", dir.path().display());
        Self {
            _dir: dir,
            repo,
            url,
        }
    }

    /// Commits `files` (path, content) on `branch` with `parents`.
    fn commit(&self, branch: &str, files: &[(&str, &str)], parents: &[ObjectId]) -> ObjectId {
        let empty = ObjectId::empty_tree(gix::hash::Kind::Sha1);
        let mut editor = self.repo.edit_tree(empty).expect("editor");
        for (path, content) in files {
            let blob = self.repo.write_blob(content.as_bytes()).expect("blob");
            editor
                .upsert(*path, gix::object::tree::EntryKind::Blob, blob)
                .expect("upsert");
        }
        let tree = editor.write().expect("tree");
        let commit = gix::objs::Commit {
            tree: tree.detach(),
            parents: parents.iter().copied().collect(),
            author: signature(),
            committer: signature(),
            encoding: None,
            message: "test commit\n".into(),
            extra_headers: Vec::new(),
        };
        let id = self.repo.write_object(&commit).expect("commit").detach();
        self.repo
            .reference(
                format!("refs/heads/{branch}").as_str(),
                id,
                PreviousValue::Any,
                "test",
            )
            .expect("ref");
        id
    }

    fn spec(&self, git_ref: GitRef, path: Option<&str>) -> GitSource {
        GitSource {
            url: self.url.clone(),
            ref_: git_ref,
            path: path.map(Into::into),
            ..Default::default()
        }
    }
}

fn branch(b: &str) -> GitRef {
    GitRef {
        branch: Some(b.into()),
        ..Default::default()
    }
}

fn render(cache: &Path, spec: &GitSource) -> Result<RenderedSource, SourceError> {
    let dir = git::cache_dir(cache, &spec.url);
    git::render(&dir, spec, None, &Limits::default())
}

fn first_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("deploy/web.yaml", WEB),
        ("deploy/nested/settings.yml", CM),
        ("deploy/README.md", "not a manifest"),
        ("deploy/.github/workflows/ci.yml", CI),
        ("deploy/.hidden.yaml", CI),
        ("other/ns.yaml", OTHER),
    ]
}

fn expected(files: &[(&str, &str)]) -> String {
    render_documents(
        "expected",
        files.iter().map(|(o, c)| Document {
            origin: (*o).into(),
            content: (*c).into(),
        }),
    )
    .expect("renders")
    .revision
}

#[test]
fn branch_renders_path_recursively_skipping_hidden_and_other_files() {
    let remote = Remote::new();
    let c1 = remote.commit("main", &first_files(), &[]);
    let cache = tempfile::tempdir().unwrap();
    let r = render(cache.path(), &remote.spec(branch("main"), Some("deploy"))).expect("renders");
    assert_eq!(r.objects.len(), 2);
    assert_eq!(r.revision, expected(&[("a", WEB), ("b", CM)]));
    let origin = r.origin.as_deref().unwrap();
    assert!(origin.contains(&c1.to_string()), "{origin}");
    assert!(origin.contains("branch \"main\""), "{origin}");

    // Whole repository: the Namespace outside deploy/ too.
    let all = render(cache.path(), &remote.spec(branch("main"), None)).expect("renders");
    assert_eq!(all.objects.len(), 3);
    // A path given with slashes around it is the same directory.
    let slashes = render(cache.path(), &remote.spec(branch("main"), Some("/deploy/"))).unwrap();
    assert_eq!(slashes.revision, r.revision);
}

#[test]
fn branch_update_is_fetched_into_the_same_cache() {
    let remote = Remote::new();
    let c1 = remote.commit("main", &[("web.yaml", WEB)], &[]);
    let cache = tempfile::tempdir().unwrap();
    let spec = remote.spec(branch("main"), None);
    let before = render(cache.path(), &spec).unwrap();
    assert_eq!(before.revision, expected(&[("a", WEB)]));

    remote.commit("main", &[("web.yaml", WEB_V2), ("cm.yaml", CM)], &[c1]);
    let after = render(cache.path(), &spec).unwrap();
    assert_eq!(after.revision, expected(&[("a", WEB_V2), ("b", CM)]));
    assert_ne!(before.revision, after.revision);
}

#[test]
fn tag_and_commit_pin_older_content_and_head_follows_default_branch() {
    let remote = Remote::new();
    let c1 = remote.commit("main", &[("web.yaml", WEB)], &[]);
    remote
        .repo
        .tag(
            "v1",
            c1,
            gix::objs::Kind::Commit,
            Some(signature().to_ref(&mut Default::default())),
            "release v1",
            PreviousValue::MustNotExist,
        )
        .expect("annotated tag");
    remote
        .repo
        .tag_reference("light", c1, PreviousValue::MustNotExist)
        .expect("lightweight tag");
    let c2 = remote.commit("main", &[("web.yaml", WEB_V2)], &[c1]);
    remote.commit("feature", &[("cm.yaml", CM)], &[c2]);

    let cache = tempfile::tempdir().unwrap();
    let v1 = expected(&[("a", WEB)]);
    let v2 = expected(&[("a", WEB_V2)]);

    for tag in ["v1", "light"] {
        let spec = remote.spec(
            GitRef {
                tag: Some(tag.into()),
                ..Default::default()
            },
            None,
        );
        let r = render(cache.path(), &spec).unwrap_or_else(|e| panic!("tag {tag}: {e}"));
        assert_eq!(r.revision, v1, "tag {tag}");
        assert!(r.origin.unwrap().contains(&c1.to_string()));
    }

    let pinned = remote.spec(
        GitRef {
            commit: Some(c1.to_string()),
            ..Default::default()
        },
        None,
    );
    assert_eq!(render(cache.path(), &pinned).unwrap().revision, v1);

    let head = remote.spec(GitRef::default(), None);
    assert_eq!(render(cache.path(), &head).unwrap().revision, v2);

    let feature = render(cache.path(), &remote.spec(branch("feature"), None)).unwrap();
    assert_eq!(feature.revision, expected(&[("a", CM)]));
}

#[test]
fn missing_refs_and_paths_are_named() {
    let remote = Remote::new();
    remote.commit("main", &[("web.yaml", WEB)], &[]);
    let cache = tempfile::tempdir().unwrap();

    let err = render(cache.path(), &remote.spec(branch("nope"), None)).unwrap_err();
    assert!(matches!(err, SourceError::GitRefNotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("branch \"nope\" not found"),
        "{err}"
    );

    let err = render(
        cache.path(),
        &remote.spec(
            GitRef {
                tag: Some("v9".into()),
                ..Default::default()
            },
            None,
        ),
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::GitRefNotFound { .. }), "{err:?}");

    let err = render(
        cache.path(),
        &remote.spec(
            GitRef {
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                ..Default::default()
            },
            None,
        ),
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::GitRefNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("commit 0123456789abcdef"), "{err}");

    let err = render(cache.path(), &remote.spec(branch("main"), Some("deploy"))).unwrap_err();
    assert!(matches!(err, SourceError::PathNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("\"deploy\""), "{err}");
    // A file is not a directory.
    let err = render(cache.path(), &remote.spec(branch("main"), Some("web.yaml"))).unwrap_err();
    assert!(matches!(err, SourceError::PathNotFound { .. }), "{err:?}");
}

#[test]
fn a_bad_file_rejects_the_whole_commit() {
    let remote = Remote::new();
    remote.commit(
        "main",
        &[
            ("a/web.yaml", WEB),
            (
                "a/z-broken.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: [\n",
            ),
        ],
        &[],
    );
    let cache = tempfile::tempdir().unwrap();
    let err = render(cache.path(), &remote.spec(branch("main"), None)).unwrap_err();
    assert!(matches!(err, SourceError::Manifest { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("a/z-broken.yaml document 0"),
        "{err}"
    );
}

#[test]
fn unreachable_and_unsupported_sources_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let gone = GitSource {
        url: format!("file://{}/does-not-exist", cache.path().display()),
        ref_: branch("main"),
        ..Default::default()
    };
    let err = render(cache.path(), &gone).unwrap_err();
    assert!(matches!(err, SourceError::GitUnreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("is unreachable"), "{err}");
    assert!(err.is_transient());

    let ssh = GitSource {
        url: "ssh://git@example.invalid/repo.git".into(),
        ..Default::default()
    };
    let err = render(cache.path(), &ssh).unwrap_err();
    assert!(matches!(err, SourceError::GitUnsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("SSH is not supported"), "{err}");

    let creds = Credentials {
        username: "git".into(),
        password: "token".into(),
    };
    let plain = GitSource {
        url: "http://example.invalid/repo.git".into(),
        ..Default::default()
    };
    let dir = git::cache_dir(cache.path(), &plain.url);
    let err = git::render(&dir, &plain, Some(&creds), &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("only sent over https://"), "{err}");

    let bad_ref = GitSource {
        url: "https://example.invalid/repo.git".into(),
        ref_: branch("main..x"),
        ..Default::default()
    };
    let err = render(cache.path(), &bad_ref).unwrap_err();
    assert!(err.to_string().contains("not a valid ref name"), "{err}");
}

#[test]
fn too_large_sources_are_refused() {
    let remote = Remote::new();
    remote.commit("main", &[("web.yaml", WEB), ("cm.yaml", CM)], &[]);
    let cache = tempfile::tempdir().unwrap();
    let spec = remote.spec(branch("main"), None);
    let limits = Limits {
        max_manifest_bytes: 64,
        ..Limits::default()
    };
    let err = git::render(
        &git::cache_dir(cache.path(), &spec.url),
        &spec,
        None,
        &limits,
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::TooLarge { .. }), "{err:?}");
}

fn secret(pairs: &[(&str, &str)]) -> Secret {
    Secret {
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[test]
fn credentials_come_from_username_and_password() {
    let c =
        Credentials::from_secret(&secret(&[("username", "bot"), ("password", "s3cret")])).unwrap();
    assert_eq!(c.username, "bot");
    assert_eq!(c.password, "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"), "password is redacted");

    let err = Credentials::from_secret(&secret(&[("identity", "KEY"), ("known_hosts", "x")]))
        .unwrap_err();
    assert!(err.contains("SSH keys"), "{err}");
    let err = Credentials::from_secret(&secret(&[("username", "bot")])).unwrap_err();
    assert!(err.contains("username and password"), "{err}");
}

#[test]
fn cache_dirs_differ_per_url() {
    let root = Path::new("/cache");
    assert_ne!(
        git::cache_dir(root, "https://a.example/x.git"),
        git::cache_dir(root, "https://b.example/x.git")
    );
    assert_eq!(
        git::cache_dir(root, "https://a.example/x.git"),
        git::cache_dir(root, "https://a.example/x.git")
    );
}

// ---------------------------------------------------------------------------------------------
// Through the resolver (blocking fetch off the runtime, Secrets read through the API)
// ---------------------------------------------------------------------------------------------

#[path = "source_support/mod.rs"]
mod support;

use fleet::source::SourceResolver;
use overseer_crds::fleet::RolloutSource;
use support::{Expected, mock_client, not_found, within};

fn git_source(spec: GitSource) -> RolloutSource {
    RolloutSource {
        git: Some(spec),
        ..Default::default()
    }
}

#[tokio::test]
async fn resolver_fetches_git_concurrently_into_one_cache() {
    let remote = Remote::new();
    remote.commit("main", &[("web.yaml", WEB), ("cm.yaml", CM)], &[]);
    let (client, server) = mock_client(vec![]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let source = git_source(remote.spec(branch("main"), None));
    // Two reconciles of rollouts sharing a repository at once: serialized on the cache.
    let (a, b) = within(async {
        tokio::join!(
            resolver.resolve("fleet", &source),
            resolver.resolve("fleet", &source)
        )
    })
    .await;
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.revision, expected(&[("a", WEB), ("b", CM)]));
    assert_eq!(a, b);
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn credentials_secret_is_read_and_checked() {
    let mut ssh_secret = serde_json::to_value(secret(&[("identity", "KEY")])).unwrap();
    ssh_secret["metadata"] = serde_json::json!({"name": "ssh", "namespace": "fleet"});
    let (client, server) = mock_client(vec![
        Expected::get(
            "/api/v1/namespaces/fleet/secrets/missing",
            404,
            not_found("secrets", "missing"),
        ),
        Expected::get("/api/v1/namespaces/fleet/secrets/ssh", 200, ssh_secret),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let with_secret = |name: &str| {
        git_source(GitSource {
            url: "https://example.invalid/repo.git".into(),
            secret_ref: Some(name.into()),
            ..Default::default()
        })
    };
    let err = within(resolver.resolve("fleet", &with_secret("missing")))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Secret fleet/missing not found");
    let err = within(resolver.resolve("fleet", &with_secret("ssh")))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Credentials { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("Secret fleet/ssh: SSH keys"),
        "{err}"
    );
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn http_remote_asking_for_credentials_without_secret_is_unreachable() {
    use axum::{Router, http::StatusCode, routing::any};
    let app = Router::new().fallback(any(|| async {
        (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"git\"")],
            "authentication required",
        )
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    let (client, server) = mock_client(vec![]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    let source = git_source(GitSource {
        url: format!("http://{addr}/repo.git"),
        ref_: branch("main"),
        ..Default::default()
    });
    let err = within(resolver.resolve("fleet", &source))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::GitUnreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("http://{addr}/repo.git")),
        "{err}"
    );
    assert!(err.to_string().contains("no secretRef"), "{err}");
    drop(resolver);
    within(server).await.unwrap();
}

#[tokio::test]
async fn a_url_carrying_credentials_is_refused_and_never_shown() {
    // Nothing is read or fetched: no Secret request reaches the API server.
    let (client, server) = mock_client(vec![]);
    let cache = tempfile::tempdir().unwrap();
    let resolver = SourceResolver::new(client, cache.path()).unwrap();
    for url in [
        "https://deploy-bot:ghp_s3cretT0ken@git.example.invalid/platform/manifests.git",
        "https://ghp_s3cretT0ken@git.example.invalid/platform/manifests.git",
    ] {
        let source = git_source(GitSource {
            url: url.into(),
            secret_ref: Some("git-credentials".into()),
            ..Default::default()
        });
        let err = within(resolver.resolve("fleet", &source))
            .await
            .expect_err("credentials in the URL");
        let message = err.to_string();
        assert_eq!(err.category(), "GitUnsupported", "{message}");
        assert!(
            message.contains("put the credentials in the Secret"),
            "{message}"
        );
        assert!(
            message.contains("https://git.example.invalid/platform/manifests.git"),
            "{message}"
        );
        assert!(
            !message.contains("s3cret"),
            "the token is never shown: {message}"
        );
        assert!(!message.contains("deploy-bot"), "{message}");
    }
    drop(resolver);
    within(server).await.unwrap();
}

//! Git sources through gitoxide (`gix`, pure Rust; HTTP(S) through its reqwest transport on
//! rustls).
//!
//! Each repository URL has its own bare repository under the cache directory
//! ([`cache_dir`]); every resolve fetches the wanted ref into it (only what is new is
//! transferred) and reads the manifests straight from the commit's tree, so no worktree is
//! checked out and nothing stale is left behind.
//!
//! - `ref.branch`: the branch's tip; `ref.tag`: the tag, peeled to its commit; `ref.commit`: all
//!   branches and tags are fetched and the commit must be among the fetched objects; no ref: the
//!   remote's `HEAD`.
//! - Credentials: a Secret with `username` and `password` (for a token, the token as `password`
//!   and any non-empty username, e.g. `git`), sent as HTTP basic authentication, over `https://`
//!   only. SSH (`ssh://` URLs, `identity`/`known_hosts` keys) is not supported.
//! - `file://` URLs are accepted by this module (tests use them; gitoxide serves them through
//!   `git-upload-pack`), although the CRD admits only `http(s)://` and `ssh://`.

use std::{
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

use k8s_openapi::api::core::v1::Secret;
use overseer_crds::fleet::GitSource;
use sha2::{Digest, Sha256};

use super::{Document, Limits, RenderedSource, SourceError, render_documents};

/// HTTPS credentials for a Git remote.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Reads `username` and `password` from a Secret's `data` (or `stringData`). SSH keys
    /// (`identity`) are refused as unsupported.
    pub fn from_secret(secret: &Secret) -> Result<Self, String> {
        let get = |key: &str| -> Result<Option<String>, String> {
            if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
                return String::from_utf8(v.0.clone())
                    .map(Some)
                    .map_err(|_| format!("key {key:?} is not UTF-8"));
            }
            Ok(secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned())
        };
        if get("identity")?.is_some() {
            return Err(
                "SSH keys (identity) are not supported: use an https:// URL with \
                        username and password (or a token as password)"
                    .into(),
            );
        }
        match (get("username")?, get("password")?) {
            (Some(username), Some(password)) if !username.is_empty() && !password.is_empty() => {
                Ok(Self { username, password })
            }
            _ => Err("needs non-empty keys username and password \
                      (for a token: the token as password and any username)"
                .into()),
        }
    }
}

/// `url` without its user name and password, when it carries either: credentials belong in the
/// Secret `secretRef` names, not in the URL, which everyone who can read the rollout sees (and
/// status, Events and logs would repeat). `None` when it carries neither (or does not parse).
pub(crate) fn with_userinfo(url: &str) -> Option<String> {
    let mut parsed = url::Url::parse(url).ok()?;
    if parsed.username().is_empty() && parsed.password().is_none() {
        return None;
    }
    // Both succeed for the URLs that can carry userinfo (those with a host).
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Some(parsed.to_string())
}

/// The cache directory of `url` under `root`: `root/<first 32 hex digits of sha256(url)>`.
pub fn cache_dir(root: &Path, url: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    root.join(&digest[..32])
}

/// What `ref` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wanted {
    Branch(String),
    Tag(String),
    Commit(String),
    Head,
}

impl Wanted {
    fn of(spec: &GitSource) -> Result<Self, SourceError> {
        let r = &spec.ref_;
        match (&r.branch, &r.tag, &r.commit) {
            (Some(b), None, None) => Ok(Wanted::Branch(b.clone())),
            (None, Some(t), None) => Ok(Wanted::Tag(t.clone())),
            (None, None, Some(c)) => Ok(Wanted::Commit(c.to_ascii_lowercase())),
            (None, None, None) => Ok(Wanted::Head),
            _ => Err(SourceError::GitUnsupported {
                url: spec.url.clone(),
                message: "set at most one of ref.branch, ref.tag or ref.commit".into(),
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Wanted::Branch(b) => format!("branch {b:?}"),
            Wanted::Tag(t) => format!("tag {t:?}"),
            Wanted::Commit(c) => format!("commit {c}"),
            Wanted::Head => "HEAD".into(),
        }
    }

    /// Fetch refspecs, and the remote ref name whose tip is the wanted commit.
    fn refspecs(&self) -> (Vec<String>, Option<String>) {
        match self {
            Wanted::Branch(b) => (
                vec![format!("+refs/heads/{b}:refs/overseer/branch")],
                Some(format!("refs/heads/{b}")),
            ),
            Wanted::Tag(t) => (
                vec![format!("+refs/tags/{t}:refs/overseer/tag")],
                Some(format!("refs/tags/{t}")),
            ),
            Wanted::Head => (vec!["+HEAD:refs/overseer/head".into()], Some("HEAD".into())),
            Wanted::Commit(_) => (
                vec![
                    "+refs/heads/*:refs/overseer/heads/*".into(),
                    "+refs/tags/*:refs/overseer/tags/*".into(),
                ],
                None,
            ),
        }
    }
}

fn valid_ref_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '/'])
        && !name.ends_with(['/', '.'])
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
}

/// Fetches `spec` into the bare repository `dir` (created when missing) and renders the manifests
/// of the wanted commit under `spec.path`. Blocking: run it off the async runtime.
pub fn render(
    dir: &Path,
    spec: &GitSource,
    credentials: Option<&Credentials>,
    limits: &Limits,
) -> Result<RenderedSource, SourceError> {
    let url = spec.url.as_str();
    let unsupported = |message: &str| SourceError::GitUnsupported {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    if url.starts_with("ssh://") || (!url.contains("://") && url.contains('@')) {
        return Err(unsupported(
            "SSH is not supported: use an https:// URL (with a secretRef holding username and \
             password or token)",
        ));
    }
    if !["https://", "http://", "file://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return Err(unsupported("the URL must start with https:// or http://"));
    }
    if credentials.is_some() && !url.starts_with("https://") {
        return Err(unsupported(
            "credentials are only sent over https://, never in clear text",
        ));
    }
    let wanted = Wanted::of(spec)?;
    if let Wanted::Branch(n) | Wanted::Tag(n) = &wanted
        && !valid_ref_name(n)
    {
        return Err(unsupported(&format!("{n:?} is not a valid ref name")));
    }
    if let Wanted::Commit(c) = &wanted
        && (c.len() != 40 && c.len() != 64 || !c.chars().all(|ch| ch.is_ascii_hexdigit()))
    {
        return Err(unsupported(&format!("{c:?} is not a full commit SHA")));
    }

    let repo_err = |what: &str, e: gix::Error| SourceError::GitRepository {
        url: url.to_owned(),
        message: format!("{what}: {e:#}"),
    };
    super::ensure_crypto_provider();
    let repo = open_cache(dir).map_err(|e| repo_err("opening the cache repository", e))?;
    let (specs, tip_ref) = wanted.refspecs();
    let remote = repo
        .remote_at(url)
        .and_then(|r| {
            r.with_refspecs(
                specs.iter().map(String::as_str),
                gix::remote::Direction::Fetch,
            )
        })
        .map_err(|e| unsupported(&format!("{e:#}")))?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let unreachable = |e: gix::Error| SourceError::GitUnreachable {
        url: url.to_owned(),
        message: format!("{e:#}"),
    };
    let creds = credentials.cloned();
    let connection = remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(unreachable)?
        .with_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(ctx) => match &creds {
                Some(c) => Ok(Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: c.username.clone(),
                        password: c.password.clone(),
                        oauth_refresh_token: None,
                    },
                    next: ctx.into(),
                })),
                None => Err(gix::Error::from_error(std::io::Error::other(
                    "the remote asks for credentials and the source has no secretRef",
                ))),
            },
            gix::credentials::helper::Action::Store(_)
            | gix::credentials::helper::Action::Erase(_) => Ok(None),
        });
    let prepare = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(unreachable)?;
    let tip_from_map = tip_ref.as_ref().and_then(|name| {
        prepare.ref_map().mappings.iter().find_map(|m| {
            let (remote_name, target, peeled) = match &m.remote {
                gix::protocol::fetch::refmap::Source::Ref(r) => r.unpack(),
                gix::protocol::fetch::refmap::Source::ObjectId(_) => return None,
            };
            (remote_name == name.as_str())
                .then(|| peeled.or(target).map(ToOwned::to_owned))
                .flatten()
        })
    });
    if tip_ref.is_some() && tip_from_map.is_none() {
        return Err(SourceError::GitRefNotFound {
            url: url.to_owned(),
            reference: wanted.describe(),
        });
    }
    let interrupt = AtomicBool::new(false);
    prepare
        .receive(gix::progress::Discard, &interrupt)
        .map_err(unreachable)?;

    let commit_id = match (&wanted, tip_from_map) {
        (_, Some(id)) => id,
        (Wanted::Commit(c), None) => {
            gix::ObjectId::from_hex(c.as_bytes()).map_err(|_| unsupported("invalid commit SHA"))?
        }
        _ => {
            return Err(SourceError::GitRefNotFound {
                url: url.to_owned(),
                reference: wanted.describe(),
            });
        }
    };
    let not_found = || SourceError::GitRefNotFound {
        url: url.to_owned(),
        reference: wanted.describe(),
    };
    let object = repo
        .try_find_object(commit_id)
        .map_err(|e| repo_err("reading objects", e))?
        .ok_or_else(not_found)?;
    let commit = object.peel_to_commit().map_err(|_| not_found())?;
    let commit_hex = commit.id.to_hex().to_string();
    let tree = commit
        .tree()
        .map_err(|e| repo_err("reading the commit's tree", e))?;

    let path = spec
        .path
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty() && *p != ".");
    let source_name = format!(
        "Git source {url} ({}, commit {commit_hex})",
        wanted.describe()
    );
    let root = match path {
        None => tree,
        Some(p) => {
            let missing = || SourceError::PathNotFound {
                source_name: format!("Git source {url}"),
                path: p.to_owned(),
                revision: format!("commit {commit_hex}"),
            };
            if p.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(missing());
            }
            let entry = tree
                .lookup_entry_by_path(p)
                .map_err(|e| repo_err("reading the tree", e))?
                .ok_or_else(missing)?;
            if !entry.mode().is_tree() {
                return Err(missing());
            }
            entry
                .object()
                .map_err(|e| repo_err("reading the tree", e))?
                .into_tree()
        }
    };
    let mut files = Vec::new();
    let mut total = 0u64;
    walk(
        &repo,
        root,
        String::new(),
        &mut files,
        &mut total,
        limits,
        url,
    )?;
    files.sort_by(|a, b| a.origin.cmp(&b.origin));
    let mut rendered = render_documents(&source_name, files)?;
    rendered.origin = Some(format!("{} commit {commit_hex}", wanted.describe()));
    Ok(rendered)
}

/// Opens the cache repository at `dir`, creating it (bare) when missing; a cache that cannot be
/// opened is removed and created anew. Opened isolated from the host's Git configuration.
fn open_cache(dir: &Path) -> Result<gix::Repository, gix::Error> {
    let open = |dir: &Path| {
        gix::open_opts(dir, gix::open::Options::isolated()).map_err(gix::Error::from_error)
    };
    if dir.exists() {
        if let Ok(repo) = open(dir) {
            return Ok(repo);
        }
        std::fs::remove_dir_all(dir).map_err(gix::Error::from_error)?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(gix::Error::from_error)?;
    }
    drop(gix::init_bare(dir)?);
    open(dir)
}

/// Whether a file name is a manifest (`*.yaml`, `*.yml`, `*.json`).
pub(crate) fn is_manifest(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

fn walk(
    repo: &gix::Repository,
    tree: gix::Tree<'_>,
    prefix: String,
    files: &mut Vec<Document>,
    total: &mut u64,
    limits: &Limits,
    url: &str,
) -> Result<(), SourceError> {
    let repo_err = |e: gix::Error| SourceError::GitRepository {
        url: url.to_owned(),
        message: format!("reading the tree: {e:#}"),
    };
    let mut entries = Vec::new();
    for entry in tree.iter() {
        let entry = entry.map_err(|e| repo_err(gix::Error::from_error(e)))?;
        entries.push((
            entry.filename().to_string(),
            entry.mode(),
            entry.object_id(),
        ));
    }
    for (name, mode, id) in entries {
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{prefix}{name}");
        if mode.is_tree() {
            let sub = repo.find_object(id).map_err(repo_err)?.into_tree();
            walk(repo, sub, format!("{path}/"), files, total, limits, url)?;
        } else if mode.is_blob() && is_manifest(&name) {
            let blob = repo.find_object(id).map_err(repo_err)?;
            *total += blob.data.len() as u64;
            if *total > limits.max_manifest_bytes {
                return Err(SourceError::TooLarge {
                    what: format!("Git source {url}: manifest files"),
                    limit: limits.max_manifest_bytes,
                });
            }
            let content =
                String::from_utf8(blob.data.clone()).map_err(|_| SourceError::Manifest {
                    document: path.clone(),
                    object: None,
                    message: "is not UTF-8 text".into(),
                })?;
            files.push(Document {
                origin: path,
                content,
            });
        }
    }
    Ok(())
}

//! Reloading the configuration file without a restart.
//!
//! Every `--config-reload-seconds` the gateway reads the file and every file it names
//! (`credential.fromFile`, `tls.caFile`/`certFile`/`keyFile`) again. When a byte of any of them
//! changed, the new configuration is checked exactly as at start-up and its upstreams are
//! served; when it is invalid, the gateway keeps serving the last valid configuration and logs,
//! once per broken content, what to fix. Kubernetes updates a mounted Secret or ConfigMap by
//! swapping a symlink, so reading the content (rather than watching inodes) sees every update,
//! including a certificate rotated by cert-manager. An unchanged TLS material keeps its client
//! and its pooled connections ([`ClientCache`]).
//!
//! Environment variables (`credential.fromEnv`) and `agentNamespace` are read at start-up only.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use sha2::Digest as _;

use super::{
    config::{GatewayConfig, Upstream},
    metrics::GatewayMetrics,
    tls::ClientCache,
};

/// A configuration file and what was last read from it.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    /// Whether no upstream at all is valid (the gateway also serves `MCPServer` objects).
    allow_empty: bool,
    clients: ClientCache,
    /// The digest of what was last loaded successfully.
    loaded: Option<[u8; 32]>,
    /// The digest of the last content found invalid (reported once).
    refused: Option<[u8; 32]>,
    agent_namespace: Option<String>,
}

/// The outcome of reading the configuration again.
#[derive(Debug)]
pub enum Reload {
    /// Nothing changed since the last read (or it is the invalid content reported before).
    Unchanged,
    /// A valid configuration: serve these upstreams.
    Changed(HashMap<String, Upstream>),
    /// The content changed and is invalid: what to fix (never a credential or key).
    Invalid(String),
}

impl ConfigFile {
    /// The file at `path`; `allow_empty` when the gateway serves `MCPServer` objects too (the
    /// file may then hold no upstream).
    pub fn new(path: impl Into<PathBuf>, allow_empty: bool) -> Self {
        Self {
            path: path.into(),
            allow_empty,
            clients: ClientCache::default(),
            loaded: None,
            refused: None,
            agent_namespace: None,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The `agentNamespace` of the first valid load.
    pub fn agent_namespace(&self) -> Option<&str> {
        self.agent_namespace.as_deref()
    }

    /// Read the file and the files it names (`env` looks up environment variables) and say
    /// whether to serve something new.
    pub fn reload(&mut self, env: impl Fn(&str) -> Option<String>) -> Reload {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let why = format!("cannot read {}: {e}", self.path.display());
                return self.refuse(digest_of(&[b"unreadable", why.as_bytes()]), why);
            }
        };
        let config = std::str::from_utf8(&text)
            .map_err(|e| e.to_string())
            .and_then(GatewayConfig::from_yaml);
        let config = match config {
            Ok(c) => c,
            Err(e) => {
                let why = format!("{} is invalid: {e}", self.path.display());
                return self.refuse(digest_of(&[&text]), why);
            }
        };
        // What the configuration consists of, read before it is resolved: a file changing
        // after this point changes the next digest, so no update is missed.
        let mut parts: Vec<Vec<u8>> = vec![text];
        for file in config.files() {
            parts.push(file.as_os_str().as_encoded_bytes().to_vec());
            parts.push(match std::fs::read(file) {
                Ok(content) => content,
                Err(e) => format!("\0unreadable: {e}").into_bytes(),
            });
        }
        let digest = digest_of(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        drop(parts);
        if self.loaded == Some(digest) || self.refused == Some(digest) {
            return Reload::Unchanged;
        }
        let resolved = if config.upstreams.is_empty() && self.allow_empty {
            Ok(HashMap::new())
        } else {
            // Tried on a copy (cheap handles): an invalid configuration leaves the clients of
            // the one still served in place for the next.
            let mut clients = self.clients.clone();
            clients.next_round();
            config
                .resolve(env, &mut clients)
                .inspect(|_| self.clients = clients)
        };
        match resolved {
            Ok(upstreams) => {
                if self.loaded.is_none() {
                    self.agent_namespace = config.agent_namespace.clone();
                } else if config.agent_namespace != self.agent_namespace {
                    tracing::warn!(
                        file = %self.path.display(),
                        "agentNamespace changed; it applies after a restart"
                    );
                }
                self.loaded = Some(digest);
                self.refused = None;
                Reload::Changed(upstreams)
            }
            Err(e) => {
                let why = format!("{}: {e}", self.path.display());
                self.refuse(digest, why)
            }
        }
    }

    fn refuse(&mut self, digest: [u8; 32], why: String) -> Reload {
        if self.refused == Some(digest) {
            return Reload::Unchanged;
        }
        self.refused = Some(digest);
        Reload::Invalid(why)
    }

    /// Read the configuration again every `period` until `shutdown` resolves, handing every
    /// valid change to `publish`; an invalid one is logged and the last valid one kept. Both are
    /// counted in `metrics`.
    pub async fn watch(
        mut self,
        period: Duration,
        mut publish: impl FnMut(HashMap<String, Arc<Upstream>>) + Send,
        metrics: Option<GatewayMetrics>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            // File reads block: off the threads serving requests.
            let read = tokio::task::spawn_blocking(move || {
                let outcome = self.reload(|v| std::env::var(v).ok());
                (self, outcome)
            })
            .await;
            let outcome;
            (self, outcome) = match read {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "reading the configuration failed; not reloaded again");
                    return;
                }
            };
            match outcome {
                Reload::Unchanged => {}
                Reload::Changed(upstreams) => {
                    if let Some(m) = &metrics {
                        m.reloaded(true);
                    }
                    let mut names: Vec<&String> = upstreams.keys().collect();
                    names.sort();
                    tracing::info!(file = %self.path.display(), upstreams = ?names, "configuration reloaded");
                    publish(
                        upstreams
                            .into_iter()
                            .map(|(name, u)| (name, Arc::new(u)))
                            .collect(),
                    );
                }
                Reload::Invalid(why) => {
                    if let Some(m) = &metrics {
                        m.reloaded(false);
                    }
                    tracing::error!(
                        error = %why,
                        "the changed configuration is invalid; still serving the last valid one"
                    );
                }
            }
        }
    }
}

fn digest_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut digest = sha2::Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }

    fn credential(upstreams: &HashMap<String, Upstream>, name: &str) -> String {
        let (_, value) = upstreams[name].credential.clone().expect("credential");
        value.to_str().expect("text").to_owned()
    }

    #[test]
    fn a_changed_credential_file_is_served_and_an_unchanged_one_is_not_read_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        write(&token, "first\n");
        let path = dir.path().join("gateway.yaml");
        write(
            &path,
            &format!(
                "agentNamespace: agents\nupstreams:\n  - name: gh\n    url: http://127.0.0.1:1/mcp\n    \
                 credential: {{prefix: \"Bearer \", fromFile: \"{}\"}}\n",
                token.display()
            ),
        );
        let mut file = ConfigFile::new(&path, false);
        let Reload::Changed(first) = file.reload(|_| None) else {
            panic!("the first read loads")
        };
        assert_eq!(credential(&first, "gh"), "Bearer first");
        assert_eq!(file.agent_namespace(), Some("agents"));
        assert!(matches!(file.reload(|_| None), Reload::Unchanged));
        // A mounted Secret is rotated: the new value is served.
        write(&token, "second\n");
        let Reload::Changed(second) = file.reload(|_| None) else {
            panic!("the rotated credential is loaded")
        };
        assert_eq!(credential(&second, "gh"), "Bearer second");
        assert!(matches!(file.reload(|_| None), Reload::Unchanged));
    }

    #[test]
    fn an_invalid_change_is_reported_once_and_a_fixed_one_is_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.yaml");
        let valid = "upstreams:\n  - name: a\n    url: http://127.0.0.1:1/mcp\n";
        write(&path, valid);
        let mut file = ConfigFile::new(&path, false);
        assert!(matches!(file.reload(|_| None), Reload::Changed(_)));
        for (broken, want) in [
            ("upstreams: [", "is invalid"),
            (
                "upstreams:\n  - name: a\n    url: ftp://x/mcp\n",
                "must be an absolute http:// or https:// URL",
            ),
            ("upstreams: []\n", "`upstreams` is empty"),
            (
                "upstreams:\n  - name: a\n    url: http://x/mcp\n    credential: {fromFile: /nonexistent/token}\n",
                "cannot read credential file /nonexistent/token",
            ),
        ] {
            write(&path, broken);
            match file.reload(|_| None) {
                Reload::Invalid(why) => assert!(
                    why.contains(want) && why.contains(&path.display().to_string()),
                    "{why}"
                ),
                other => panic!("{broken:?}: {other:?}"),
            }
            // Reported once, not every period.
            assert!(matches!(file.reload(|_| None), Reload::Unchanged));
        }
        std::fs::remove_file(&path).expect("remove");
        assert!(
            matches!(file.reload(|_| None), Reload::Invalid(why) if why.contains("cannot read"))
        );
        write(
            &path,
            "upstreams:\n  - name: b\n    url: http://127.0.0.1:2/mcp\n",
        );
        let Reload::Changed(fixed) = file.reload(|_| None) else {
            panic!("the fixed configuration is loaded")
        };
        assert!(fixed.contains_key("b") && !fixed.contains_key("a"));
    }

    #[test]
    fn unchanged_tls_material_keeps_its_client_and_a_rotated_certificate_gets_a_new_one() {
        use crate::controller::test_support::{ca_pem, client_certificate};
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name);
        write(&at("ca.crt"), &ca_pem());
        let (cert, key) = client_certificate();
        write(&at("tls.crt"), &cert);
        write(&at("tls.key"), &key);
        write(&at("token"), "one");
        let path = at("gateway.yaml");
        write(
            &path,
            &format!(
                "upstreams:\n  - name: a\n    url: https://127.0.0.1:1/mcp\n    \
                 credential: {{fromFile: \"{}\"}}\n    \
                 tls: {{caFile: \"{}\", certFile: \"{}\", keyFile: \"{}\"}}\n",
                at("token").display(),
                at("ca.crt").display(),
                at("tls.crt").display(),
                at("tls.key").display(),
            ),
        );
        let mut file = ConfigFile::new(&path, false);
        assert!(matches!(file.reload(|_| None), Reload::Changed(_)));
        assert_eq!(file.clients.len(), 1);
        // Only the credential changes: the same client (and its connections) serves on.
        write(&at("token"), "two");
        assert!(matches!(file.reload(|_| None), Reload::Changed(_)));
        assert_eq!(file.clients.len(), 1);
        // cert-manager rotates the pair: a new client; the old one goes a reload later.
        let (cert, key) = client_certificate();
        write(&at("tls.crt"), &cert);
        write(&at("tls.key"), &key);
        assert!(matches!(file.reload(|_| None), Reload::Changed(_)));
        assert_eq!(file.clients.len(), 2);
        write(&at("token"), "three");
        assert!(matches!(file.reload(|_| None), Reload::Changed(_)));
        assert_eq!(file.clients.len(), 1);
        assert_eq!(file.clients.made(), 2);
        // Half a rotation (a new key, the old certificate) is refused: the last pair serves on.
        write(&at("tls.key"), &client_certificate().1);
        assert!(matches!(
            file.reload(|_| None),
            Reload::Invalid(why) if why.contains("tls.certFile/keyFile") && !why.contains("PRIVATE KEY")
        ));
        // Another invalid change, then the fix: the client of the pair still served is kept.
        write(&at("tls.key"), &key);
        std::fs::remove_file(at("token")).expect("remove");
        assert!(matches!(file.reload(|_| None), Reload::Invalid(_)));
        write(&at("token"), "four");
        assert!(matches!(file.reload(|_| None), Reload::Changed(_)));
        assert_eq!(file.clients.made(), 2, "no new client for the same pair");
        assert_eq!(file.clients.len(), 1);
    }

    #[test]
    fn with_mcpservers_the_file_may_hold_no_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.yaml");
        write(&path, "agentNamespace: agents\n");
        let mut file = ConfigFile::new(&path, true);
        assert!(matches!(file.reload(|_| None), Reload::Changed(u) if u.is_empty()));
        let mut alone = ConfigFile::new(&path, false);
        assert!(matches!(alone.reload(|_| None), Reload::Invalid(_)));
    }
}

//! The gateway's configuration file: the upstream MCP servers, the credential injected into each,
//! and which agents may reach them.
//!
//! ```yaml
//! agentNamespace: default          # namespace of agents authenticated by API key
//! upstreams:
//!   - name: github                 # the MCP server name policies match (`tools[].server`)
//!     url: http://127.0.0.1:3001/mcp
//!     agents: ["support-bot-*"]    # principal id globs; omitted: every authenticated agent
//!     timeoutSeconds: 30           # time to the upstream's response headers
//!     credential:                  # injected; agents never hold it
//!       header: Authorization
//!       prefix: "Bearer "
//!       fromEnv: GITHUB_MCP_TOKEN  # or fromFile: /var/run/secrets/github/token
//!     tls:                         # https:// only; omitted: the system's root certificates
//!       caFile: /etc/overseer/ca/ca.crt   # PEM; the server's certificate must chain to it
//!       certFile: /etc/overseer/client/tls.crt   # mutual TLS: the certificate presented
//!       keyFile: /etc/overseer/client/tls.key    # and its private key
//! ```
//!
//! The checks and the credential header are shared with `MCPServer` objects
//! ([`super::mcpservers`]), so an upstream means the same wherever it is configured.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use globset::{Glob, GlobSet, GlobSetBuilder};
use hyper::{
    Uri,
    header::{HeaderName, HeaderValue},
};
use serde::Deserialize;

use super::tls::{ClientCache, TlsError, TlsMaterial, UpstreamClient};

/// The configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// Namespace given to agents authenticated by API key (namespaced `AgentPolicy` objects only
    /// govern principals of their namespace). Omitted: `$POD_NAMESPACE`, else none.
    #[serde(default)]
    pub agent_namespace: Option<String>,
    /// The upstream MCP servers (at least one, unless the gateway also watches `MCPServer`
    /// objects).
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

/// One upstream MCP server.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name: the path segment agents connect to (`/mcp/{name}`) and the `server` of decision
    /// requests.
    pub name: String,
    /// Streamable HTTP endpoint of the server (`http://host:port/mcp`, or `https://`).
    pub url: String,
    /// Globs of the principal ids that may reach it; omitted or empty: every authenticated agent
    /// (policies still decide every tool call).
    #[serde(default)]
    pub agents: Vec<String>,
    /// Seconds to wait for the upstream's response headers. Default 30.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// The credential injected into every request to the upstream.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// TLS to an `https://` upstream. Omitted: the system's root certificates.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// How an `https://` upstream is verified.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the upstream's certificate must chain to — instead of
    /// the system's roots (a private CA, e.g. a mounted Secret's `ca.crt`). Omitted: the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) presented to an upstream that requires mutual
    /// TLS, e.g. a mounted `kubernetes.io/tls` Secret's `tls.crt`. Needs `keyFile`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (`tls.key`). Needs `certFile`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The client these files describe, from `clients` when the same material was read before;
    /// `Err` says which file is wrong and how.
    fn client(&self, clients: &mut ClientCache) -> Result<UpstreamClient, String> {
        let read = |path: &PathBuf, field: &str| {
            super::tls::read_file(path).map_err(|e| format!("tls.{field}: {e}"))
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read(cert, "certFile")?,
                read(key, "keyFile")?,
                format!("tls.certFile/keyFile ({})", cert.display()),
            )),
            (Some(_), None) => {
                return Err("tls.certFile needs tls.keyFile (its private key)".into());
            }
            (None, Some(_)) => {
                return Err("tls.keyFile needs tls.certFile (its certificate)".into());
            }
        };
        let ca = match &self.ca_file {
            None if identity.is_none() => {
                return Err(
                    "tls needs caFile (a private CA) and/or certFile with keyFile (a \
                            client certificate)"
                        .into(),
                );
            }
            None => None,
            Some(path) => Some((read(path, "caFile")?, path.display().to_string())),
        };
        clients
            .client(TlsMaterial::of(ca.as_ref(), identity.as_ref()))
            .map_err(|e| match e {
                TlsError::Ca(m) => format!("tls.caFile: {m}"),
                TlsError::Identity(m) => format!("tls.certFile/keyFile: {m}"),
            })
    }
}

/// Where the upstream's credential comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialConfig {
    /// Header to set. Default `Authorization`.
    #[serde(default)]
    pub header: Option<String>,
    /// Put before the secret (e.g. `"Bearer "`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub from_env: Option<String>,
    /// File holding the secret (trailing whitespace is trimmed), e.g. a mounted Secret.
    #[serde(default)]
    pub from_file: Option<PathBuf>,
}

/// A resolved upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name.
    pub name: String,
    /// Endpoint.
    pub uri: Uri,
    /// Who may reach it (`None`: every authenticated agent).
    pub agents: Option<GlobSet>,
    /// Time to response headers.
    pub timeout: Duration,
    /// Injected header.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// A client of its own, verifying the upstream against its own CA and/or presenting a
    /// client certificate (`tls`); `None`: the gateway's shared client (system roots).
    pub client: Option<UpstreamClient>,
}

impl Upstream {
    /// Whether `principal_id` may reach this upstream.
    pub fn admits(&self, principal_id: &str) -> bool {
        self.agents
            .as_ref()
            .is_none_or(|g| g.is_match(principal_id))
    }
}

/// Default time to an upstream's response headers.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

impl GatewayConfig {
    /// Parse YAML.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// Every file the configuration names (credentials, TLS material), in order: what a
    /// reload reads again.
    pub fn files(&self) -> Vec<&std::path::Path> {
        let mut files = Vec::new();
        for u in &self.upstreams {
            files.extend(u.credential.iter().filter_map(|c| c.from_file.as_deref()));
            if let Some(tls) = &u.tls {
                files.extend(
                    [&tls.ca_file, &tls.cert_file, &tls.key_file]
                        .into_iter()
                        .filter_map(|f| f.as_deref()),
                );
            }
        }
        files
    }

    /// Check every upstream and read its credential (`env` looks up environment variables) and
    /// TLS material (`clients` keeps the HTTPS clients made from it).
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
        clients: &mut ClientCache,
    ) -> Result<HashMap<String, Upstream>, String> {
        if self.upstreams.is_empty() {
            return Err("`upstreams` is empty: configure at least one MCP server".into());
        }
        let mut out = HashMap::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}] ({})", u.name);
            check_name(&u.name).map_err(|e| format!("{at}: {e}"))?;
            let uri = parse_url(&u.url).map_err(|e| format!("{at}: {e}"))?;
            let agents = agent_globs(&u.agents).map_err(|e| format!("{at}: {e}"))?;
            let credential = match &u.credential {
                None => None,
                Some(c) => Some(resolve_credential(c, &env).map_err(|e| format!("{at}: {e}"))?),
            };
            let timeout = match u.timeout_seconds {
                None => DEFAULT_UPSTREAM_TIMEOUT,
                Some(0) => return Err(format!("{at}: timeoutSeconds must be at least 1")),
                Some(s) => Duration::from_secs(s),
            };
            let client = match &u.tls {
                None => None,
                Some(_) if uri.scheme_str() != Some("https") => {
                    return Err(format!("{at}: tls applies to https:// urls only"));
                }
                Some(tls) => Some(tls.client(clients).map_err(|e| format!("{at}: {e}"))?),
            };
            let upstream = Upstream {
                name: u.name.clone(),
                uri,
                agents,
                timeout,
                credential,
                client,
            };
            if out.insert(u.name.clone(), upstream).is_some() {
                return Err(format!("{at}: the name is used twice"));
            }
        }
        Ok(out)
    }
}

/// Check an upstream's name: the path segment of `/mcp/{name}`.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err("name must be 1-253 characters of letters, digits, '-', '.', '_'".into())
    }
}

/// Parse an upstream's endpoint: an absolute `http://` or `https://` URL without user
/// information (credentials belong in the injected credential, not in a URL that is logged).
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "url {url:?} must be an absolute http:// or https:// URL"
        ));
    }
    match uri.authority() {
        None => Err(format!("url {url:?} names no host")),
        Some(a) if a.host().is_empty() => Err(format!("url {url:?} names no host")),
        Some(a) if a.as_str().contains('@') => Err(
            "the url must not carry user information; configure a credential instead".to_owned(),
        ),
        Some(_) => Ok(uri),
    }
}

/// Compile the globs of the principal ids that may reach an upstream (`None`: everyone).
pub fn agent_globs(agents: &[String]) -> Result<Option<GlobSet>, String> {
    if agents.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for g in agents {
        b.add(Glob::new(g).map_err(|e| format!("agent glob {g:?}: {e}"))?);
    }
    Ok(Some(b.build().map_err(|e| e.to_string())?))
}

/// Headers a credential may not be sent in: the gateway sets or forwards them itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "mcp-session-id",
    "mcp-protocol-version",
];

/// The name of the header a credential is sent in (default `Authorization`).
pub fn credential_header(header: Option<&str>) -> Result<HeaderName, String> {
    let name = header.unwrap_or("authorization");
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("credential header {name:?} is not a header name"))?;
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err(format!(
            "credential header {name:?} is set by the gateway itself; choose another header"
        ));
    }
    Ok(header)
}

/// Why a credential's value cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialValueError {
    /// Nothing but whitespace.
    Empty,
    /// Characters a header value may not hold (control characters, newlines).
    NotAHeaderValue,
}

/// The header value `prefix` + `secret` (trailing whitespace of `secret` ignored), marked
/// sensitive so it is never printed.
pub fn credential_value(
    prefix: Option<&str>,
    secret: &str,
) -> Result<HeaderValue, CredentialValueError> {
    let secret = secret.trim_end();
    if secret.is_empty() {
        return Err(CredentialValueError::Empty);
    }
    let mut value = HeaderValue::from_str(&format!("{}{secret}", prefix.unwrap_or_default()))
        .map_err(|_| CredentialValueError::NotAHeaderValue)?;
    value.set_sensitive(true);
    Ok(value)
}

fn resolve_credential(
    c: &CredentialConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(HeaderName, HeaderValue), String> {
    let header = credential_header(c.header.as_deref())?;
    let secret = match (&c.from_env, &c.from_file) {
        (Some(var), None) => {
            env(var).ok_or_else(|| format!("credential variable {var} is not set"))?
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read credential file {}: {e}", path.display()))?,
        _ => return Err("credential: set exactly one of fromEnv or fromFile".into()),
    };
    let value = credential_value(c.prefix.as_deref(), &secret).map_err(|e| match e {
        CredentialValueError::Empty => "the credential is empty".to_owned(),
        CredentialValueError::NotAHeaderValue => {
            "the credential has characters not allowed in a header".to_owned()
        }
    })?;
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_upstreams_and_credentials() {
        let cfg = GatewayConfig::from_yaml(
            r#"
agentNamespace: default
upstreams:
  - name: github
    url: http://127.0.0.1:3001/mcp
    agents: ["support-*"]
    timeoutSeconds: 5
    credential: {prefix: "Bearer ", fromEnv: GH}
  - name: open
    url: https://10.0.0.1/mcp
"#,
        )
        .expect("parses");
        let ups = cfg
            .resolve(
                |v| (v == "GH").then(|| "s3cret".to_owned()),
                &mut ClientCache::default(),
            )
            .expect("resolves");
        let gh = &ups["github"];
        assert!(gh.admits("support-bot-1"));
        assert!(!gh.admits("finance-bot"));
        assert_eq!(gh.timeout, Duration::from_secs(5));
        let (h, v) = gh.credential.as_ref().expect("credential");
        assert_eq!(h, "authorization");
        assert_eq!(v.to_str().ok(), Some("Bearer s3cret"));
        assert!(ups["open"].admits("anyone"));
        assert_eq!(ups["open"].timeout, DEFAULT_UPSTREAM_TIMEOUT);
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        for (yaml, expect) in [
            ("upstreams: []", "at least one"),
            (
                "upstreams: [{name: 'a b', url: 'http://x/'}]",
                "name must be",
            ),
            ("upstreams: [{name: a, url: 'ftp://x/'}]", "http://"),
            (
                "upstreams: [{name: a, url: 'http://u:p@x/'}]",
                "user information",
            ),
            (
                "upstreams: [{name: a, url: 'http://x/', credential: {header: Mcp-Session-Id, fromEnv: E}}]",
                "set by the gateway",
            ),
            (
                "upstreams: [{name: a, url: 'http://x/'}, {name: a, url: 'http://y/'}]",
                "twice",
            ),
            (
                "upstreams: [{name: a, url: 'http://x/', agents: ['[']}]",
                "agent glob",
            ),
            (
                "upstreams: [{name: a, url: 'http://x/', credential: {fromEnv: NOPE}}]",
                "not set",
            ),
            (
                "upstreams: [{name: a, url: 'http://x/', credential: {}}]",
                "exactly one",
            ),
            (
                "upstreams: [{name: a, url: 'http://x/', timeoutSeconds: 0}]",
                "at least 1",
            ),
            (
                "upstreams: [{name: a, url: 'http://x/', bogus: 1}]",
                "unknown field",
            ),
        ] {
            let err = GatewayConfig::from_yaml(yaml)
                .and_then(|c| c.resolve(|_| None, &mut ClientCache::default()))
                .expect_err(yaml);
            assert!(err.contains(expect), "{yaml}: {err}");
        }
    }
}

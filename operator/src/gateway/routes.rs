//! What `/mcp/{name}` leads to: the gateway's table of upstreams, swapped whole whenever the
//! configuration changes and read without a lock on every request.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use super::config::Upstream;

/// `Ready` reason: the server can be served.
pub const REASON_ACCEPTED: &str = "Accepted";
/// The credential Secret, its key or its value is missing.
pub const REASON_CREDENTIAL_MISSING: &str = "CredentialMissing";
/// The credential cannot be sent (not UTF-8, or not a valid header value with its prefix).
pub const REASON_CREDENTIAL_INVALID: &str = "CredentialInvalid";
/// The gateway could not read the credential Secret (RBAC, or the API server unreachable
/// before the gateway ever read it).
pub const REASON_CREDENTIAL_UNREADABLE: &str = "CredentialUnreadable";
/// The CA Secret (`spec.tls.caSecretRef`) or its key is missing.
pub const REASON_CA_MISSING: &str = "CAMissing";
/// The CA Secret's key holds no usable PEM certificate.
pub const REASON_CA_INVALID: &str = "CAInvalid";
/// The gateway could not read the CA Secret.
pub const REASON_CA_UNREADABLE: &str = "CAUnreadable";
/// The client certificate Secret (`spec.tls.clientCertificateSecretName`) or one of its keys
/// (`tls.crt`, `tls.key`) is missing.
pub const REASON_CLIENT_CERTIFICATE_MISSING: &str = "ClientCertificateMissing";
/// The client certificate or its key cannot be used (not PEM, or not a matching pair).
pub const REASON_CLIENT_CERTIFICATE_INVALID: &str = "ClientCertificateInvalid";
/// The gateway could not read the client certificate Secret.
pub const REASON_CLIENT_CERTIFICATE_UNREADABLE: &str = "ClientCertificateUnreadable";
/// Something the API server's schema cannot check is wrong (a glob, the URL, the header).
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

/// Why a configured MCP server is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// A fixed UpperCamelCase reason (`CredentialMissing`, ...), also the `Ready` condition's.
    pub reason: &'static str,
    /// What is wrong and what to change. Never holds a credential.
    pub message: String,
}

impl Unavailable {
    /// `reason` with `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// What one name leads to.
#[derive(Debug, Clone)]
pub enum Route {
    /// Requests are forwarded to this upstream.
    Serve(Arc<Upstream>),
    /// The server is configured but not served: requests are refused (404) saying why.
    Unavailable(Arc<Unavailable>),
}

impl Route {
    /// The upstream, when served.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match self {
            Self::Serve(u) => Some(u),
            Self::Unavailable(_) => None,
        }
    }
}

/// Every name the gateway knows.
pub type Routes = HashMap<String, Route>;

/// The gateway's upstream table, shared between the proxy (which reads it on every request) and
/// whatever keeps it current (which replaces it whole). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RouteTable(Arc<ArcSwap<Routes>>);

impl RouteTable {
    /// A table serving `upstreams`.
    pub fn serving(upstreams: HashMap<String, Upstream>) -> Self {
        let table = Self::default();
        table.store(
            upstreams
                .into_iter()
                .map(|(name, u)| (name, Route::Serve(Arc::new(u))))
                .collect(),
        );
        table
    }

    /// Replace the whole table; requests already routed keep the upstream they were given.
    pub fn store(&self, routes: Routes) {
        self.0.store(Arc::new(routes));
    }

    /// Where `name` leads now.
    pub fn get(&self, name: &str) -> Option<Route> {
        self.0.load().get(name).cloned()
    }

    /// The whole table as it is now.
    pub fn snapshot(&self) -> Arc<Routes> {
        self.0.load_full()
    }
}

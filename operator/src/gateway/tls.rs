//! TLS to `https://` upstreams: rustls (ring), verifying against the system's root certificates,
//! or — for an upstream configured with its own CA (`tls.caFile`, `tls.caSecretRef`) — against
//! that CA only; presenting a client certificate to upstreams that require mutual TLS.

use std::{collections::HashMap, path::Path, sync::Arc};

use axum::body::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// The HTTP client the gateway forwards with (`http://` and `https://`, HTTP/1.1, keep-alive).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client verifying `https://` servers with `tls`.
pub fn client(tls: rustls::ClientConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(false);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector),
        )
}

/// A client certificate chain and its private key, presented to upstreams that ask for one
/// (mutual TLS).
struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// The certificate chain (PEM, the client's certificate first) and private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1) named `origin` in messages. `Err` says what is wrong with them, never
    /// their content.
    fn from_pem(cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate of {origin} is not PEM certificates: {e}"))?;
        if chain.is_empty() {
            return Err(format!(
                "the certificate of {origin} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
        // The parse error of a key names no key material.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            format!(
                "the private key of {origin} is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
            )
        })?;
        Ok(Self { chain, key })
    }
}

/// The PEM TLS material of one upstream, each part named by where it came from (for messages).
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsMaterial<'a> {
    /// The CA certificates it is verified against, and their origin; `None`: the system's roots.
    pub ca: Option<(&'a [u8], &'a str)>,
    /// The client certificate chain and private key it is given (mutual TLS), and their origin.
    pub identity: Option<(&'a [u8], &'a [u8], &'a str)>,
}

/// The client configuration `material` describes. `Err` says which part is wrong:
/// [`TlsError::Ca`] or [`TlsError::Identity`], and how — never with key material.
pub fn client_config(material: TlsMaterial<'_>) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match material.ca {
        Some((pem, origin)) => private_roots(pem, origin).map_err(TlsError::Ca)?,
        None => system_root_store().clone(),
    };
    let identity = material
        .identity
        .map(|(cert, key, origin)| ClientIdentity::from_pem(cert, key, origin))
        .transpose()
        .map_err(TlsError::Identity)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Ca(e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(ClientIdentity { chain, key }) => {
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError::Identity(format!(
                    "the client certificate and key cannot be used: {e}"
                ))
            })
        }
    }
}

impl<'a> TlsMaterial<'a> {
    /// The material of owned parts: `ca` as (PEM, origin), `identity` as (certificate chain PEM,
    /// private key PEM, origin).
    pub fn of<P: AsRef<[u8]>>(
        ca: Option<&'a (P, String)>,
        identity: Option<&'a (P, P, String)>,
    ) -> Self {
        Self {
            ca: ca.map(|(pem, origin)| (pem.as_ref(), origin.as_str())),
            identity: identity
                .map(|(cert, key, origin)| (cert.as_ref(), key.as_ref(), origin.as_str())),
        }
    }

    /// A SHA-256 digest of the material (not of where it came from): equal for equal material,
    /// and no second copy of a private key.
    fn digest(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut digest = sha2::Sha256::new();
        // Each part tagged and length-prefixed: a CA is never taken for a certificate.
        let mut part = |tag: u8, bytes: &[u8]| {
            digest.update([tag]);
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(bytes);
        };
        if let Some((ca, _)) = self.ca {
            part(b'a', ca);
        }
        if let Some((cert, key, _)) = self.identity {
            part(b'c', cert);
            part(b'k', key);
        }
        digest.finalize().into()
    }
}

/// HTTPS clients by the TLS material they were made from, so that reading the same material
/// again (a refresh, a reload, another upstream with the same settings) keeps the client — and
/// its pooled connections — instead of making a new one. Material is checked once, when its
/// client is first made. Clients are forgotten one round after their last use
/// ([`Self::next_round`]).
#[derive(Default, Clone)]
pub struct ClientCache {
    used: HashMap<[u8; 32], UpstreamClient>,
    before: HashMap<[u8; 32], UpstreamClient>,
    made: u64,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache")
            .field("clients", &self.len())
            .field("made", &self.made)
            .finish()
    }
}

impl ClientCache {
    /// The client for `material`: the one made before for the same material, else a new one
    /// (`Err` says what is wrong with the material, as [`client_config`] does).
    pub fn client(&mut self, material: TlsMaterial<'_>) -> Result<UpstreamClient, TlsError> {
        let key = material.digest();
        if let Some(client) = self.used.get(&key) {
            return Ok(client.clone());
        }
        let client = match self.before.remove(&key) {
            Some(client) => client,
            None => {
                let made = client(client_config(material)?);
                self.made += 1;
                made
            }
        };
        self.used.insert(key, client.clone());
        Ok(client)
    }

    /// Start a new round: the clients not asked for again before the next round are dropped.
    pub fn next_round(&mut self) {
        self.before = std::mem::take(&mut self.used);
    }

    /// How many clients are kept.
    pub fn len(&self) -> usize {
        self.used.len() + self.before.len()
    }

    /// How many clients this cache has made (each one opens its own connections).
    pub fn made(&self) -> u64 {
        self.made
    }

    /// Whether no client is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which part of an upstream's TLS settings is wrong, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The CA certificates.
    Ca(String),
    /// The client certificate or its key.
    Identity(String),
}

/// The system's root certificates, loaded once.
fn system_root_store() -> &'static rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "a system root certificate could not be loaded");
        }
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!(
                "no system root certificates found: https:// upstreams cannot be verified"
            );
        }
        roots
    })
}

/// Verify against the system's root certificates. Without any, `https://` upstreams fail their
/// handshake (answered 502, audited) while `http://` ones keep working.
pub fn system_roots() -> rustls::ClientConfig {
    client_config(TlsMaterial::default()).unwrap_or_else(|e| {
        // ring supports the safe default versions; this is unreachable in practice.
        tracing::error!(error = ?e, "TLS to upstreams unavailable");
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
}

fn private_roots(pem: &[u8], origin: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{origin} is not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{origin} holds a certificate rustls cannot use: {e}"))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!(
            "{origin} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(roots)
}

/// Read a file for the TLS settings of an upstream.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

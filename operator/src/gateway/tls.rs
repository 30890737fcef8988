//! TLS to `https://` upstreams: rustls (ring), verifying against the system's root certificates,
//! or — for an upstream configured with its own CA (`tls.caFile`) — against that CA only.

use std::{path::Path, sync::Arc};

use axum::body::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

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

fn with_roots(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Verify against the system's root certificates. Without any, `https://` upstreams fail their
/// handshake (answered 502, audited) while `http://` ones keep working.
pub fn system_roots() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate could not be loaded");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("no system root certificates found: https:// upstreams cannot be verified");
    }
    with_roots(roots).unwrap_or_else(|e| {
        // ring supports the safe default versions; this is unreachable in practice.
        tracing::error!(error = %e, "TLS to upstreams unavailable");
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
}

/// Verify against the CA certificates (PEM) of `pem` only — a private CA, pinned for one
/// upstream. `Err` says what is wrong with them.
pub fn private_ca(pem: &[u8], origin: &str) -> Result<rustls::ClientConfig, String> {
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
    with_roots(roots).map_err(|e| e.to_string())
}

/// [`private_ca`] from a file.
pub fn private_ca_file(path: &Path) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    private_ca(&pem, &path.display().to_string())
}

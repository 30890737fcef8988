//! An HTTPS server on 127.0.0.1 with a certificate signed by a private CA made for it (shared by
//! the gateway tests of upstreams verified against their own CA).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::Router;

/// A TCP listener that speaks TLS with `acceptor` (handshakes that fail are dropped).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                self.handshakes.fetch_add(1, Ordering::SeqCst);
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A server started by [`serve`].
pub struct Served {
    /// The PEM certificate of the CA that signed the server's certificate.
    pub ca_pem: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// TLS handshakes completed so far (connections made).
    pub handshakes: Arc<AtomicUsize>,
    /// With [`serve_mutual`]: the client certificate (PEM) the server accepts, and its key.
    pub client: Option<(String, String)>,
}

/// Serve `app` over HTTPS on 127.0.0.1 with a certificate for `127.0.0.1` signed by a new
/// private CA.
pub async fn serve(app: Router) -> Served {
    start(app, false).await
}

/// [`serve`], requiring a client certificate signed by another new CA (mutual TLS); a
/// certificate it accepts and its key are in [`Served::client`].
pub async fn serve_mutual(app: Router) -> Served {
    start(app, true).await
}

/// A new CA named `name`: its certificate, and the issuer that signs with it.
fn new_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert, rcgen::Issuer::new(params, key))
}

/// A certificate for `subject` (a DNS name or an IP address) signed by `issuer`, and its key.
fn issue(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    subject: &str,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![subject.to_owned()])
        .expect("params")
        .signed_by(&key, issuer)
        .expect("certificate");
    (cert, key)
}

async fn start(app: Router, mutual: bool) -> Served {
    let (ca_cert, issuer) = new_ca("overseer test CA");
    let (leaf, leaf_key) = issue(&issuer, "127.0.0.1");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let (builder, client) = if mutual {
        // A client CA of its own, and a client certificate it signed.
        let (client_ca, client_issuer) = new_ca("overseer test client CA");
        let (client_cert, client_key) = issue(&client_issuer, "overseer-gateway");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca.der().clone()).expect("client CA root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
        (
            builder.with_client_cert_verifier(verifier),
            Some((client_cert.pem(), client_key.serialize_pem())),
        )
    } else {
        (builder.with_no_client_auth(), None)
    };
    let server = builder
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server TLS");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        handshakes: Arc::clone(&handshakes),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served {
        ca_pem: ca_cert.pem(),
        addr,
        handshakes,
        client,
    }
}

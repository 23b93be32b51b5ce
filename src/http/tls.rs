//! HTTPS for intake, the operator API and the dashboard, with client
//! certificates (mTLS) as the senders' alternative to API keys.
//!
//! [`TlsListener`] accepts TCP connections and runs each TLS handshake in
//! a task of its own, bounded in number and in time, so that a slow or
//! hostile client holds up nobody. [`crate::http::connections`] gets finished
//! connections; the [`Peer`] of each carries the fingerprint of the client
//! certificate, if one was presented. The certificate has been verified against
//! `http.tls.client_ca` during the handshake; which sender it belongs to is
//! decided by [`crate::access::Senders`], by fingerprint.

use std::path::PathBuf;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::pem::{CertificateFingerprint, PemError, read_certificates};

/// Handshakes in progress at once; further connections wait in the
/// kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{field}: cannot read {path}: {reason}")]
    Read { field: &'static str, path: String, reason: String },
    #[error("http.tls.client_ca: {0}")]
    ClientCa(String),
    #[error("http.tls: the certificate and key do not make a server identity: {0}")]
    Identity(rustls::Error),
}

/// The rustls configuration `http.tls` describes. Client certificates are
/// asked for only with a `client_ca`, and even then optional: a sender may
/// use an API key instead, an operator its token.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certificates("http.tls.certificate", &settings.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| TlsError::Read {
        field: "http.tls.key",
        path: settings.key.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Identity)?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates("http.tls.client_ca", file)? {
                roots.add(certificate).map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(TlsError::Identity)?;
    // axum serves HTTP/1.1 only (its `http2` feature is off).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener that hands axum finished TLS connections.
pub struct TlsListener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<std::io::Result<(TlsStream<TcpStream>, SocketAddr)>>,
    accepting: tokio::task::AbortHandle,
}

impl TlsListener {
    /// Each handshake uses the configuration `config` holds at the time, so
    /// that a reload can swap in a renewed certificate.
    pub fn new(tcp: TcpListener, config: Arc<ArcSwap<rustls::ServerConfig>>) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (ready, accepted) = mpsc::channel(MAX_HANDSHAKES);
        let accepting = tokio::spawn(accept_and_handshake(tcp, config, ready)).abort_handle();
        Ok(Self { local_addr, accepted, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting, which frees the port; handshakes in progress end
        // within their timeout.
        self.accepting.abort();
    }
}

async fn accept_and_handshake(
    tcp: TcpListener,
    config: Arc<ArcSwap<rustls::ServerConfig>>,
    ready: mpsc::Sender<std::io::Result<(TlsStream<TcpStream>, SocketAddr)>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (stream, addr) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Too many open files, say: reported to the accept loop
                // (which logs it and says not ready), then a pause.
                if ready.send(Err(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.load_full());
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send(Ok((tls, addr))).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(event = "tls_handshake_failed", peer = %addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(event = "tls_handshake_failed", peer = %addr, error = "timed out", "TLS handshake failed");
                }
            }
        });
    }
}

impl TlsListener {
    /// The next connection whose handshake finished, or the error of a
    /// failed accept.
    pub async fn next(&mut self) -> std::io::Result<(TlsStream<TcpStream>, Peer)> {
        match self.accepted.recv().await {
            Some(accepted) => accepted.map(|(stream, addr)| {
                let peer = Peer::of_tls(&stream, addr);
                (stream, peer)
            }),
            // The accepting task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// The other end of a connection: its address and, over TLS, the
/// fingerprint of the client certificate it presented and proved to hold
/// the key of.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub client_certificate: Option<CertificateFingerprint>,
}

impl Peer {
    /// A peer over TLS, with the certificate it proved to hold the key of.
    pub fn of_tls(stream: &TlsStream<TcpStream>, addr: SocketAddr) -> Self {
        let (_, session) = stream.get_ref();
        let client_certificate = session.peer_certificates().and_then(|chain| chain.first()).map(|leaf| CertificateFingerprint::of(leaf));
        Self { addr, client_certificate }
    }
}

/// The verified client certificate of the request's connection, if any.
pub struct ClientCertificate(pub Option<CertificateFingerprint>);

impl<S: Send + Sync> FromRequestParts<S> for ClientCertificate {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let peer = parts.extensions.get::<ConnectInfo<Peer>>();
        Ok(Self(peer.and_then(|ConnectInfo(peer)| peer.client_certificate.clone())))
    }
}

/// HTTPS for every endpoint (`http.tls`).
///
/// ```yaml
/// http:
///   listen: 0.0.0.0:8443
///   tls:
///     certificate: tls/amtsbote.pem   # the chain, server certificate first
///     key: tls/amtsbote.key
///     client_ca: tls/senders-ca.pem   # optional: senders may present certificates
/// ```
///
/// The files are relative to the config file, read at start and on every
/// reload (SIGHUP): a renewed certificate needs no restart. Connections
/// already open keep the certificate they began with.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the server's certificate chain, the server's own
    /// certificate first.
    pub certificate: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates that issue senders' client
    /// certificates. With it, a client may present a certificate, which
    /// must chain to one of these CAs and whose fingerprint must be listed
    /// under a sender's `client_certificates_sha256`. Clients without a
    /// certificate still use API keys (senders) and tokens (operators).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_fingerprint_reads_as_openssl_and_sha256sum_print_it() {
        let of = CertificateFingerprint::of(b"certificate");
        let plain = of.to_string();
        let openssl = plain.as_bytes().chunks(2).map(|pair| std::str::from_utf8(pair).unwrap().to_ascii_uppercase()).collect::<Vec<_>>().join(":");
        assert_eq!(CertificateFingerprint::parse(&plain), Some(of.clone()));
        assert_eq!(CertificateFingerprint::parse(&openssl), Some(of));
        assert_eq!(CertificateFingerprint::parse("ab:cd"), None);
        assert_eq!(CertificateFingerprint::parse(&"g".repeat(64)), None);
    }

    #[test]
    fn a_wrong_file_is_refused_naming_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let pki = amtsbote_connector_conformance::pki::Pki::generate(dir.path());
        let settings = |certificate: &Path, key: &Path, client_ca: &Path| TlsSettings {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
            client_ca: Some(client_ca.to_owned()),
        };
        let refusal = |settings| server_config(&settings).unwrap_err().to_string();
        assert!(server_config(&settings(&pki.server_certificate, &pki.server_key, &pki.ca)).is_ok());
        let missing = dir.path().join("missing.pem");
        assert!(refusal(settings(&missing, &pki.server_key, &pki.ca)).starts_with("http.tls.certificate: cannot read"));
        assert!(refusal(settings(&pki.server_key, &pki.server_key, &pki.ca)).starts_with("http.tls.certificate: "));
        assert!(refusal(settings(&pki.server_certificate, &pki.server_certificate, &pki.ca)).starts_with("http.tls.key: "));
        assert!(refusal(settings(&pki.server_certificate, &pki.server_key, &pki.server_key)).starts_with("http.tls.client_ca: "));
    }
}

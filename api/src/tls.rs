//! The node's listener: plain TCP, or TLS (rustls with the ring provider) when
//! `tls_cert_file` and `tls_key_file` are set.
//!
//! TLS handshakes run on their own tasks, each bounded by `tls_handshake_timeout_ms`
//! and at most [`MAX_PENDING_HANDSHAKES`] at once, so a slow or silent client never
//! holds up other connections. ALPN offers HTTP/1.1.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use crate::config::Config;

/// A reqwest client builder. reqwest is built with rustls and no crypto provider of
/// its own, and panics when it builds a client (even a plain-HTTP one) before a
/// process-default provider exists: this makes rustls's ring provider the default
/// first (once; a no-op when one is already installed). Build every client with it.
pub fn client_builder() -> reqwest::ClientBuilder {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// Most TLS handshakes in progress at once; further connections wait to be accepted.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Builds the TLS server configuration from the certificate and key files.
pub fn server_config(config: &Config) -> Result<ServerConfig, String> {
    let cert_path = &config.tls_cert_file;
    let key_path = &config.tls_key_file;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls_cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("tls_cert_file {} holds no certificate", cert_path.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("tls_key_file {}: {e}", key_path.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    // HTTP/1.1 only: the server speaks no HTTP/2 (a client that negotiated h2 would
    // get answers it cannot read).
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// A connection: plain TCP or TLS over TCP.
pub type Connection = Either<TcpStream, TlsStream<TcpStream>>;

enum Inner {
    Plain(TcpListener),
    Tls { local: SocketAddr, ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> },
}

/// The listener `axum::serve` runs on.
pub struct GatewayListener {
    inner: Inner,
}

impl GatewayListener {
    /// Plain TCP.
    pub fn plain(listener: TcpListener) -> GatewayListener {
        GatewayListener { inner: Inner::Plain(listener) }
    }

    /// TLS on `listener`: accepts and handshakes on a background task that ends when
    /// this listener is dropped.
    pub fn tls(listener: TcpListener, tls: ServerConfig, handshake_timeout: Duration) -> io::Result<GatewayListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let (tx, ready) = mpsc::channel(64);
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = pending.clone().acquire_owned().await else { return };
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    r = listener.accept() => r,
                };
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(GatewayListener { inner: Inner::Tls { local, ready } })
    }
}

/// Connection-level accept errors are the client's; others (out of file descriptors)
/// get a pause so the loop does not spin.
async fn accept_error(e: io::Error) {
    use io::ErrorKind as K;
    if matches!(e.kind(), K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

impl axum::serve::Listener for GatewayListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match &mut self.inner {
            Inner::Plain(l) => loop {
                match TcpListener::accept(l).await {
                    Ok((tcp, peer)) => {
                        // Responses are written whole; Nagle's algorithm would only delay them.
                        let _ = tcp.set_nodelay(true);
                        return (Either::Left(tcp), peer);
                    }
                    Err(e) => accept_error(e).await,
                }
            },
            Inner::Tls { ready, .. } => match ready.recv().await {
                Some((tls, peer)) => (Either::Right(tls), peer),
                // The accept task only ends once this listener is gone.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.inner {
            Inner::Plain(l) => l.local_addr(),
            Inner::Tls { local, .. } => Ok(*local),
        }
    }
}

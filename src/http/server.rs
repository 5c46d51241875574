//! The HTTP API's server loop: accepts connections (plain TCP, or TLS with rustls), and serves
//! each with hyper's HTTP/1.1, as `axum::serve` does, plus what `axum::serve` cannot be told:
//!
//! - a cap on open connections ([`HttpLimits::max_connections`]): further ones wait in the
//!   kernel's accept queue, so a flood of idle connections cannot exhaust file descriptors;
//! - a time limit on receiving a request's headers, and on the TLS handshake
//!   ([`HttpLimits::request_timeout`]), so slowloris clients are cut off;
//! - TLS handshakes in each connection's own task, so one slow handshake never holds up
//!   the accept loop.
//!
//! On shutdown the loop stops accepting and every connection finishes the request it is
//! serving (blocking reads end on the same shutdown signal), within [`SHUTDOWN_GRACE`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::HttpLimits;

/// How long connections get to finish their requests once the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the TLS certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("--tls-key {path}: {message}")]
    Key { path: String, message: String },
}

/// A TLS acceptor from PEM files: a certificate chain (leaf first) and its private key
/// (PKCS#8, PKCS#1 or SEC1). rustls with the `ring` provider, its safe default protocol
/// versions (TLS 1.2 and 1.3), HTTP/1.1 by ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert_error = |message: String| TlsError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            message: format!("does not go with the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, app, limits, &shutdown).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        done = tokio::time::timeout(limits.request_timeout, acceptor.accept(stream)) => done,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, limits, &shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection until the client closes it, it breaks, or the server stops.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let response: Result<_, Infallible> =
                tower_service::Service::call(&mut app, request).await;
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "http connection ended");
    }
}

//! The mutual-TLS handshake scenario: how many new proxy-to-proxy connections per second
//! the receiving proxy of a pair accepts, handshake and one request each.
//!
//! The other scenarios ride the pooled connection between the two proxies, so they never
//! pay for a handshake between them. Here the load generator plays the sending proxy:
//! each worker loops over TCP connect → a full TLS 1.3 handshake with a client
//! certificate (resumption off, as between skein proxies, which never resume) → one
//! request as the sending proxy would send it → the whole response → close. For skein
//! the receiving side is the inbound proxy (HTTP/2, the caller's identity a mesh
//! certificate for `loadgen`, so the request is also authorized); for nginx it is B
//! (HTTP/1.1, nginx A's client certificate).

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where and how to open connections as the sending proxy would.
#[derive(Clone)]
pub struct HandshakeTarget {
    /// The receiving proxy's listener.
    pub addr: SocketAddr,
    /// TLS 1.3 with the client certificate and what verifies the server.
    pub tls: Arc<rustls::ClientConfig>,
    /// The name the server is verified as.
    pub server_name: ServerName<'static>,
    /// How the request is sent.
    pub request: PeerRequest,
}

/// The request each connection carries.
#[derive(Clone, Copy, Debug)]
pub enum PeerRequest {
    /// HTTP/2, as a skein outbound proxy sends to a peer's inbound proxy: authority
    /// `host:port` and the application port in `skein-dst-port`.
    SkeinPeer {
        /// The application port behind the inbound proxy.
        port: u16,
    },
    /// HTTP/1.1 with `Connection: close`, as nginx A sends to B.
    Http1,
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandshakeReport {
    /// Connections that completed handshake and request.
    pub handshakes: u64,
    /// Connections that failed.
    pub errors: u64,
    /// Completed connections per second.
    pub per_s: f64,
    /// Mean time of one connection (connect to response end), µs.
    pub mean_us: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Runs `workers` loops of connect → handshake → request → close for `secs` seconds.
pub async fn run(
    target: &HandshakeTarget,
    host: &str,
    workers: u32,
    secs: u64,
) -> anyhow::Result<HandshakeReport> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let busy_us = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (target, host) = (target.clone(), host.to_string());
        let (done, failed, busy_us, first_error) = (
            done.clone(),
            failed.clone(),
            busy_us.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let began = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), one(&target, &host)).await {
                    Ok(Ok(())) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        busy_us.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    outcome => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let why = match outcome {
                            Ok(Err(e)) => format!("{e:#}"),
                            _ => "no response within 5s".to_string(),
                        };
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(why);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a handshake worker panicked")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let handshakes = done.load(Ordering::Relaxed);
    let first_error = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(HandshakeReport {
        handshakes,
        errors: failed.load(Ordering::Relaxed),
        per_s: handshakes as f64 / elapsed,
        mean_us: if handshakes > 0 {
            busy_us.load(Ordering::Relaxed) as f64 / handshakes as f64
        } else {
            0.0
        },
        first_error,
    })
}

/// One connection: connect, handshake, one request, the whole response, close.
async fn one(target: &HandshakeTarget, host: &str) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("cannot connect to {}", target.addr))?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(target.tls.clone())
        .connect(target.server_name.clone(), tcp)
        .await
        .context("TLS handshake")?;
    let io = TokioIo::new(tls);
    match target.request {
        PeerRequest::SkeinPeer { port } => {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .context("HTTP/2 handshake")?;
            let conn = tokio::spawn(conn);
            let req = Request::get(format!("http://{host}:{port}/"))
                .header("skein-dst-port", port)
                .body(Empty::<Bytes>::new())?;
            let checked = crate::load::check(send.send_request(req).await).await;
            drop(send);
            conn.abort();
            checked
        }
        PeerRequest::Http1 => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .context("HTTP/1.1 handshake")?;
            let conn = tokio::spawn(conn);
            let req = Request::get("/")
                .header(http::header::HOST, host)
                .header(http::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())?;
            let checked = crate::load::check(send.send_request(req).await).await;
            drop(send);
            let _ = conn.await;
            checked
        }
    }
}

/// A client config for nginx B: TLS 1.3 with nginx A's client certificate, B's chain
/// verified against the pair's throwaway CA, no resumption.
pub fn nginx_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("the nginx CA certificate does not parse")?)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the nginx client certificate does not parse")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("the nginx client key does not parse")?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

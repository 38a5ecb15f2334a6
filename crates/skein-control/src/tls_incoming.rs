//! The proxy gRPC port's listener: TCP accept → TLS handshake (our certificate from the
//! mesh CA; a client certificate is optional and verified when presented) → a connection
//! that tells tonic the client's verified identity ([`PeerIdentity`]).
//!
//! Handshakes run in their own tasks with a deadline, so a slow or silent client never
//! holds up the accept loop. A client that does not speak TLS is dropped with a log line:
//! this port never serves plaintext. Open connections are capped
//! ([`crate::limits::ConnCap`], in all and per source address), and one without a
//! certificate that can `Sync` (none, expired, revoked, or without a join lineage) lives
//! only [`ConnLimits::header_timeout`]: long enough for a new proxy's one `Certify` or a
//! refusal, too short to hold a socket for free.

use crate::grpc::PeerIdentity;
use crate::limits::{ConnCap, ConnLimits};
use futures_util::Stream;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One TLS connection from a proxy.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: PeerIdentity,
    /// When a connection without a client certificate is closed.
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
    _permit: crate::limits::ConnPermit,
}

impl TlsConn {
    /// Fails reads and writes once an unauthenticated connection's time is up, which
    /// makes the server close it.
    fn check_expiry(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let expired = self
            .expires
            .as_mut()
            .is_some_and(|e| e.as_mut().poll(cx).is_ready());
        if expired {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate lives only long enough for Certify",
            ));
        }
        Ok(())
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_expiry(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_expiry(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts on `listener` until `stop`, yielding connections whose handshake succeeded,
/// within `limits`. A connection whose certificate `pki` will not serve `Sync` (none,
/// expired, revoked) lives only `limits.header_timeout`: long enough for the one answer it
/// can get.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
    pki: Arc<crate::pki::Pki>,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<TlsConn>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<TlsConn>>(64);
    let acceptor = TlsAcceptor::from(config);
    let cap = ConnCap::new(&limits, "proxy API");
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(permit) = cap.admit(addr) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, pki) = (acceptor.clone(), tx.clone(), pki.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let conn = stream.get_ref().1;
                        let cert = skein_identity::tls::peer_identity(conn).and_then(|id| {
                            let leaf = conn.peer_certificates()?.first()?;
                            Some(crate::pki::Presented {
                                id,
                                lineage: skein_identity::lineage_of(leaf),
                                expires: skein_identity::expiry_of(leaf)?,
                            })
                        });
                        let short_lived = cert.as_ref().is_none_or(|c| {
                            c.expired()
                                || c.lineage
                                    .as_deref()
                                    .is_none_or(|l| pki.revoked(l).is_some())
                        });
                        let expires = short_lived
                            .then(|| Box::pin(tokio::time::sleep(limits.header_timeout)));
                        let peer = PeerIdentity {
                            cert,
                            remote: Some(addr),
                        };
                        let _ = tx
                            .send(Ok(TlsConn {
                                inner: stream,
                                peer,
                                expires,
                                _permit: permit,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(client = %addr, error = %e, "refused a proxy API connection: the TLS handshake failed (this port speaks only TLS)")
                    }
                    Err(_) => {
                        tracing::info!(client = %addr, "refused a proxy API connection: no TLS handshake within {HANDSHAKE_TIMEOUT:?}")
                    }
                }
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

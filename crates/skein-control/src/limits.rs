//! Limits on the control plane's listeners, so that no client holds a socket forever:
//! the HTTP API (9990) caps open connections, closes a connection whose request head does
//! not arrive within [`ConnLimits::header_timeout`] (also an idle keep-alive connection)
//! and fails a request whose body does not arrive within [`ConnLimits::body_timeout`]; the
//! proxy API's listener ([`crate::tls_incoming`]) caps connections the same way and gives
//! a connection without a client certificate a short lifetime, enough for one `Certify`.
//!
//! A connection over the cap is accepted and closed at once (with a log line at most once
//! per 10 s), rather than left in the kernel's backlog where its client would wait without
//! an answer.

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once. Default 1024 for the HTTP API, 20000 for the proxy
    /// API (one per proxy, with room for renewals).
    pub max_connections: usize,
    /// Most connections open at once from one source address, so that one client cannot
    /// take the whole cap. Default 256 for the HTTP API, 1024 for the proxy API (proxies
    /// behind one NAT address share it).
    pub max_per_source: usize,
    /// Longest wait for a request head, counted from the connection's start or the end of
    /// the previous response (so an idle keep-alive connection is closed too). Default 10 s.
    pub header_timeout: Duration,
    /// Longest wait for a request body. Default 30 s.
    pub body_timeout: Duration,
}

impl ConnLimits {
    /// The HTTP API's defaults.
    pub const API: ConnLimits = ConnLimits {
        max_connections: 1024,
        max_per_source: 256,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
    };
    /// The proxy API's defaults: `header_timeout` is how long a connection without a
    /// client certificate may live.
    pub const PROXY_API: ConnLimits = ConnLimits {
        max_connections: 20_000,
        max_per_source: 1024,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
    };
}

/// The limits of both listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// The HTTP API's.
    pub api: ConnLimits,
    /// The proxy API's.
    pub proxy_api: ConnLimits,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            api: ConnLimits::API,
            proxy_api: ConnLimits::PROXY_API,
        }
    }
}

/// Open connections of one listener, up to a cap in all and a cap per source address.
#[derive(Clone)]
pub struct ConnCap {
    permits: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    what: &'static str,
    max: usize,
    max_per_source: usize,
    last_log: Arc<AtomicU64>,
}

/// One admitted connection's share of the caps, returned when it is dropped.
pub struct ConnPermit {
    _permit: OwnedSemaphorePermit,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut counts = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

impl ConnCap {
    /// Caps from `limits` on the listener described by `what`.
    pub fn new(limits: &ConnLimits, what: &'static str) -> Self {
        ConnCap {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_source: Arc::default(),
            what,
            max: limits.max_connections,
            max_per_source: limits.max_per_source,
            last_log: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A permit for one more connection from `client` (held as long as it is open), or
    /// `None` at either cap.
    pub fn admit(&self, client: SocketAddr) -> Option<ConnPermit> {
        let source = client.ip().to_canonical();
        let permit = {
            let mut counts = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(source).or_insert(0);
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) if *n < self.max_per_source => {
                    *n += 1;
                    Some(ConnPermit {
                        _permit: permit,
                        per_source: self.per_source.clone(),
                        source,
                    })
                }
                _ => {
                    if *n == 0 {
                        counts.remove(&source);
                    }
                    None
                }
            }
        };
        if permit.is_none() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.last_log.load(Ordering::Relaxed);
            if now >= last + 10
                && self
                    .last_log
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(%client, max = self.max, max_per_source = self.max_per_source, listener = self.what, "refused a connection: the listener or this client is at its connection cap (logged at most every 10 s)");
            }
        }
        permit
    }
}

/// Serves `router` on `listener` over HTTP/1.1 under `limits` until `stop`, then lets
/// open connections finish their current request.
pub async fn serve_api(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    stop: CancellationToken,
) {
    let cap = ConnCap::new(&limits, "HTTP API");
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let req = req.map(|body| Body::new(BodyDeadline::new(body, limits.body_timeout)));
            next.run(req)
        },
    ));
    loop {
        let (stream, client) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = cap.admit(client) else {
            continue;
        };
        // An answer written in pieces (a streamed listing, an event stream) goes out as it
        // is written, not after the client's delayed acknowledgement of the first piece.
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%client, error = %e, "HTTP API connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

/// A request body that fails if it has not all arrived by its deadline.
struct BodyDeadline {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    after: Duration,
}

impl BodyDeadline {
    fn new(inner: Body, after: Duration) -> Self {
        BodyDeadline {
            inner,
            deadline: Box::pin(tokio::time::sleep(after)),
            after,
        }
    }
}

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let after = self.after;
            return Poll::Ready(Some(Err(axum::Error::new(format!(
                "the request body did not arrive within {after:?}"
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_the_whole_cap() {
        let limits = ConnLimits {
            max_connections: 3,
            max_per_source: 2,
            ..ConnLimits::API
        };
        let cap = ConnCap::new(&limits, "test");
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let a1 = cap.admit(a).unwrap();
        let _a2 = cap.admit(a).unwrap();
        assert!(cap.admit(a).is_none(), "per-source cap");
        let _b1 = cap.admit(b).unwrap();
        assert!(cap.admit(b).is_none(), "global cap");
        drop(a1);
        assert!(
            cap.admit("[::ffff:127.0.0.1]:2".parse().unwrap()).is_some(),
            "the same source, IPv4-mapped"
        );
    }
}

//! Connecting upstream: a [`Connect`] trait that turns an [`Upstream`] into a byte stream
//! (plain TCP to the local application; mutual TLS to peer proxies, see
//! [`crate::identity::PeerConnector`]), and the connection pools built on it — one shared
//! HTTP/2 connection per peer proxy (and identity) or HTTP/2 application, and reusable
//! HTTP/1 connections per HTTP/1 application.

use crate::error::ProxyError;
use crate::http::Body;
use crate::io::BoxedIo;
use foldhash::HashMap;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use skein_identity::SpiffeId;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where to connect: an address and, for a peer proxy, the identity it must prove.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The address.
    pub addr: SocketAddr,
    /// The SPIFFE ID the control plane announced for it (peers only). Shared, so picking
    /// an endpoint per request copies a pointer, not the ID.
    pub identity: Option<Arc<SpiffeId>>,
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Upstream {
            addr,
            identity: None,
        }
    }
}

/// Opens a byte stream to an upstream. Implementations add transport security.
pub trait Connect: Send + Sync + 'static {
    /// Connects to `to`.
    fn connect(&self, to: &Upstream) -> BoxFuture<'static, io::Result<BoxedIo>>;
}

/// Plain TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector {
    /// Give up connecting after this long. Default 3 s.
    pub timeout: Option<Duration>,
}

impl TcpConnector {
    /// Connects to `addr` within the timeout.
    pub async fn tcp(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let timeout = self.timeout.unwrap_or(Duration::from_secs(3));
        tokio::time::timeout(timeout, crate::transport::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

impl Connect for TcpConnector {
    fn connect(&self, to: &Upstream) -> BoxFuture<'static, io::Result<BoxedIo>> {
        let (this, addr) = (*self, to.addr);
        Box::pin(async move { Ok(Box::new(this.tcp(addr).await?) as BoxedIo) })
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

/// One multiplexed HTTP/2 connection per upstream (address and identity), re-established
/// when it closes.
pub struct H2Pool {
    connector: Arc<dyn Connect>,
    slots: Mutex<HashMap<Upstream, Slot>>,
}

impl H2Pool {
    /// A pool that connects with `connector`.
    pub fn new(connector: Arc<dyn Connect>) -> Self {
        H2Pool {
            connector,
            slots: Mutex::new(HashMap::default()),
        }
    }

    /// A handle to the live connection for `to`, connecting if there is none.
    pub async fn get(&self, to: &Upstream) -> Result<http2::SendRequest<Body>, ProxyError> {
        let addr = to.addr;
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get(to) {
                Some(slot) => slot.clone(),
                None => slots.entry(to.clone()).or_default().clone(),
            }
        };
        // Serialises connection setup per address, so a burst opens one connection.
        let mut current = slot.lock().await;
        if let Some(sender) = current.as_ref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        let io = self
            .connector
            .connect(to)
            .await
            .map_err(|source| ProxyError::Connect { addr, source })?;
        let (sender, conn) = http2::Builder::new(crate::server::Spawn)
            .timer(TokioTimer::new())
            .adaptive_window(true)
            // Large frames: bulk TCP through CONNECT streams moves in few writes (measured
            // 0.15× → 0.24× of direct in docs/BENCHMARKS.md).
            .max_frame_size(256 * 1024)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Upstream { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection closed");
            }
        });
        *current = Some(sender.clone());
        Ok(sender)
    }

    /// Forgets every pooled connection: the next request to each upstream connects (and,
    /// for peers, verifies) anew. Streams in flight on the old connections finish.
    pub fn clear(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Sends `req` on the connection to `to`.
    pub async fn send(
        &self,
        to: &Upstream,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.try_send(to, req).await.map_err(|(e, _)| e)
    }

    /// Sends `req` on the connection to `to`. A request that never left this proxy (no
    /// connection could be made, or the connection was closed before the request was
    /// written to it) comes back with the error, untouched, so that it can go elsewhere.
    pub async fn try_send(
        &self,
        to: &Upstream,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, (ProxyError, Option<Request<Body>>)> {
        let mut sender = match self.get(to).await {
            Ok(sender) => sender,
            Err(e) => return Err((e, Some(req))),
        };
        sender.try_send_request(req).await.map_err(|mut e| {
            let unsent = e.take_message();
            (upstream_error(to.addr, e.into_error()), unsent)
        })
    }
}

/// Classifies a hyper client error: a failure of the caller's own body is the caller's
/// fault (400); anything else is the upstream's (502).
pub fn upstream_error(addr: SocketAddr, source: hyper::Error) -> ProxyError {
    if source.is_user() {
        ProxyError::RequestBody(source.to_string())
    } else {
        ProxyError::Upstream { addr, source }
    }
}

/// Most HTTP/1 connections kept per application address.
const MAX_H1_PER_ADDR: usize = 256;

/// Reusable HTTP/1.1 connections per address. A connection is taken out while a request
/// is being sent and put back once the response head arrives; it becomes usable again when
/// hyper reports it ready (its response body has been read to the end).
pub struct H1Pool {
    connector: Arc<dyn Connect>,
    conns: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
}

impl H1Pool {
    /// A pool that connects with `connector`.
    pub fn new(connector: Arc<dyn Connect>) -> Self {
        H1Pool {
            connector,
            conns: Mutex::new(HashMap::default()),
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&addr)?;
        list.retain(|c| !c.is_closed());
        let ready = list.iter().position(|c| c.is_ready())?;
        Some(list.swap_remove(ready))
    }

    fn checkin(&self, addr: SocketAddr, sender: http1::SendRequest<Body>) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.entry(addr).or_default();
        if list.len() < MAX_H1_PER_ADDR {
            list.push(sender);
        }
    }

    /// Opens a new HTTP/1.1 connection (with upgrade support) to `addr`.
    pub async fn connect(
        connector: &dyn Connect,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = connector
            .connect(&addr.into())
            .await
            .map_err(|source| ProxyError::Connect { addr, source })?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Upstream { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "HTTP/1 connection closed");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `addr` on an idle pooled connection or a new one. A pooled
    /// connection that turns out to be closed before the request went out is replaced
    /// once, transparently.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut req = req;
        if let Some(mut sender) = self.checkout(addr) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(addr, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_error(addr, e.into_error())),
                },
            }
        }
        let mut sender = Self::connect(&*self.connector, addr).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| upstream_error(addr, source))?;
        self.checkin(addr, sender);
        Ok(resp)
    }
}

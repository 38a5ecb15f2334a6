//! Raw TCP backends for opaque (non-HTTP) proxying tests: an echo server that half-closes
//! after the client does, and a server-speaks-first banner server (SMTP/FTP style) that
//! catches proxies which wait for client bytes before connecting upstream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::server;

/// Handle to a running [`TcpEcho`]; dropping it stops the accept loop and every connection.
pub struct TcpEcho {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _stop: DropGuard,
}

impl TcpEcho {
    /// Binds `addr` (port 0 picks a free port) and echoes every byte received on each
    /// connection until the client's EOF, then shuts down its write half.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let (addr, hits, stop) = spawn(addr, None).await?;
        Ok(Self {
            addr,
            hits,
            _stop: stop,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Handle to a running [`BannerServer`]; dropping it stops the accept loop and every
/// connection.
pub struct BannerServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _stop: DropGuard,
}

impl BannerServer {
    /// Binds `addr` (port 0 picks a free port); on every accepted connection it immediately
    /// writes `banner` (e.g. `"220 skein-test ready\r\n"`), then echoes like [`TcpEcho`].
    pub async fn start(addr: SocketAddr, banner: &'static str) -> anyhow::Result<Self> {
        let (addr, hits, stop) = spawn(addr, Some(banner)).await?;
        Ok(Self {
            addr,
            hits,
            _stop: stop,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn spawn(
    addr: SocketAddr,
    banner: Option<&'static str>,
) -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>, DropGuard)> {
    let listener = server::bind(addr).await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    server::spawn_until(
        &token,
        accept_loop(listener, token.clone(), hits.clone(), banner),
    );
    tracing::debug!(%addr, banner = banner.is_some(), "TCP test backend listening");
    Ok((addr, hits, token.drop_guard()))
}

async fn accept_loop(
    listener: TcpListener,
    token: CancellationToken,
    hits: Arc<AtomicUsize>,
    banner: Option<&'static str>,
) {
    loop {
        let Some(stream) = server::accept(&listener).await else {
            continue;
        };
        hits.fetch_add(1, Ordering::SeqCst);
        server::spawn_until(&token, async move {
            if let Err(error) = echo(stream, banner).await {
                tracing::debug!(%error, "TCP echo connection ended with error");
            }
        });
    }
}

async fn echo(mut stream: TcpStream, banner: Option<&'static str>) -> std::io::Result<()> {
    if let Some(banner) = banner {
        stream.write_all(banner.as_bytes()).await?;
    }
    let (mut rd, mut wr) = stream.split();
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

//! Shared plumbing for the test backends: binding, the cancellable accept loop, and the
//! executor that ties every spawned task (connections, HTTP/2 streams, upgraded sockets) to
//! the owning handle's [`CancellationToken`], so dropping a handle stops all of its work.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Boxed error used by response bodies.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// The single response body type every HTTP route returns.
pub(crate) type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request handler shared by all connections of one backend.
pub(crate) type Handler =
    Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<RespBody>> + Send + Sync>;

/// Which HTTP versions a backend accepts on its port.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Protocols {
    /// HTTP/1.1 (with upgrades) and HTTP/2 prior knowledge, told apart by the preface.
    Auto,
    /// HTTP/2 prior knowledge only (gRPC).
    Http2Only,
    /// HTTP/1.x only, as many applications are: an HTTP/2 preface is refused.
    Http1Only,
}

/// Binds `addr`, naming the address in the error so a clash between tests is obvious.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding test backend to {addr}"))
}

/// Spawns `fut` so that it is dropped as soon as `token` is cancelled.
pub(crate) fn spawn_until<F>(token: &CancellationToken, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let token = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = token.cancelled() => {}
            () = fut => {}
        }
    });
}

/// A hyper executor whose tasks (HTTP/2 streams) end when the backend is dropped; the plain
/// `TokioExecutor` would let an in-flight handler outlive its server.
#[derive(Clone)]
pub(crate) struct CancelExec {
    token: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for CancelExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        spawn_until(&self.token, async move {
            fut.await;
        });
    }
}

/// Runs the accept loop for an HTTP backend until `token` is cancelled; each connection is
/// served on its own task, which is cancelled with the token as well.
pub(crate) fn spawn_http_server(
    listener: TcpListener,
    token: CancellationToken,
    protocols: Protocols,
    handler: Handler,
) {
    let accept_token = token.clone();
    spawn_until(&accept_token, async move {
        loop {
            let Some(stream) = accept(&listener).await else {
                continue;
            };
            let handler = handler.clone();
            let conn_token = token.clone();
            spawn_until(
                &token,
                serve_http_conn(stream, conn_token, protocols, handler),
            );
        }
    });
}

/// Accepts one connection; `None` on a transient accept error (logged, briefly backed off so
/// a full file table does not spin the loop).
pub(crate) async fn accept(listener: &TcpListener) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            // Small test messages should not wait for Nagle; failure only costs latency.
            let _ = stream.set_nodelay(true);
            tracing::trace!(%peer, "test backend accepted connection");
            Some(stream)
        }
        Err(error) => {
            tracing::warn!(%error, "test backend accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            None
        }
    }
}

async fn serve_http_conn(
    stream: TcpStream,
    token: CancellationToken,
    protocols: Protocols,
    handler: Handler,
) {
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let io = TokioIo::new(stream);
    let mut builder = auto::Builder::new(CancelExec { token });
    let result = match protocols {
        Protocols::Auto => builder.serve_connection_with_upgrades(io, service).await,
        Protocols::Http2Only => {
            builder = builder.http2_only();
            builder.serve_connection(io, service).await
        }
        Protocols::Http1Only => {
            // `serve_connection_with_upgrades` would still read an HTTP/2 preface.
            builder = builder.http1_only();
            builder.serve_connection(io, service).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "test backend connection ended with error");
    }
}

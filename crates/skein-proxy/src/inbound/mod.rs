//! The inbound side: HTTP/2 connections from peer proxies, each stream forwarded to the
//! local application.
//!
//! Per connection: accept → (identity: mTLS arrives with the identity work) → serve
//! HTTP/2. Per stream: learn the target port → authorize → route (HTTP request, or a
//! CONNECT tunnel carrying TCP or HTTP/1) → connect to the application.

mod app;
mod tunnel;

use crate::error::ProxyError;
use crate::http::{headers, Body};
use crate::metrics::{Direction, Proto};
use crate::Ctx;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use skein_model::PortSpec;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Accepts peer connections until shutdown is signalled.
pub async fn accept(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.drain.signalled() => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        ctx.drain.spawn(serve_peer(ctx.clone(), stream, peer));
    }
}

/// Serves one peer proxy's HTTP/2 connection.
async fn serve_peer(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let _open = ctx.metrics.open(Direction::Inbound, Proto::Http2);
    tracing::debug!(%peer, "peer connected");
    let c = ctx.clone();
    let handler = hyper::service::service_fn(move |req| {
        let ctx = c.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    crate::server::serve_http2(stream, handler, &ctx.config().limits, &ctx.drain).await;
}

/// Handles one stream from a peer; failures become the proxy's own error responses.
async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let proto = orig_proto(&req);
    match route(&ctx, req).await {
        Ok(resp) => {
            ctx.metrics
                .request(Direction::Inbound, proto, Some(resp.status().as_u16()));
            resp
        }
        Err(e) => {
            tracing::debug!(error = %e, "inbound request failed");
            ctx.metrics.error(Direction::Inbound, e.reason());
            ctx.metrics.request(Direction::Inbound, proto, None);
            e.to_response()
        }
    }
}

/// target port → authorize → tunnel or HTTP forward.
async fn route(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    let port = target_port(ctx, &req)?;
    authorize(ctx, &req, port)?;
    if req.method() == Method::CONNECT {
        return tunnel::open(ctx, req, port).await;
    }
    let to_h2 = orig_proto(&req) == Proto::Http2 || crate::destinations::speaks_h2(port.protocol);
    app::forward(ctx, req, port.port, to_h2).await
}

/// The application port named by the caller's proxy; only declared ports are reachable.
fn target_port(ctx: &Ctx, req: &Request<Incoming>) -> Result<PortSpec, ProxyError> {
    let port = req
        .headers()
        .get(headers::DST_PORT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .ok_or(ProxyError::BadPeerRequest(
            "missing or invalid skein-dst-port header",
        ))?;
    ctx.config().inbound_port(port).ok_or_else(|| {
        let served = ctx.config().inbound.ports.iter().map(|p| p.port).collect();
        ProxyError::PortNotServed(port, served)
    })
}

/// The authorization hook. Every stream passes it before reaching the application; the
/// authorization work fills it in with policy evaluation on the verified peer identity.
fn authorize(_ctx: &Ctx, _req: &Request<Incoming>, _port: PortSpec) -> Result<(), ProxyError> {
    Ok(())
}

/// How the original client spoke, as told by the caller's proxy (default HTTP/1).
fn orig_proto<B>(req: &Request<B>) -> Proto {
    match req.headers().get(headers::ORIG_PROTO).map(|v| v.as_bytes()) {
        Some(b"h2") => Proto::Http2,
        _ if req.method() == Method::CONNECT => Proto::Tcp,
        _ => Proto::Http1,
    }
}

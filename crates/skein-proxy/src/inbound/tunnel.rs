//! CONNECT streams from peers: opaque TCP spliced to the application port, or an HTTP/1
//! connection (used for protocol upgrades such as WebSocket) served here, behind the
//! framing guard, and forwarded request by request.

use super::Caller;
use crate::connect::H1Pool;
use crate::error::ProxyError;
use crate::http::{self, headers, Body};
use crate::metrics::{Direction, Proto};
use crate::Ctx;
use ::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skein_model::PortSpec;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Accepts a CONNECT stream for `port`: connects to the application first (so a refused
/// connection is reported to the caller), answers 200, then carries bytes.
pub async fn open(
    ctx: &Arc<Ctx>,
    mut req: Request<Incoming>,
    port: PortSpec,
    caller: Caller,
) -> Result<Response<Body>, ProxyError> {
    let addr = SocketAddr::new(ctx.config().inbound.app_host, port.port);
    let kind = req
        .headers()
        .get(headers::TUNNEL)
        .map(|v| v.as_bytes().to_vec());
    let upgrade = hyper::upgrade::on(&mut req);
    match kind.as_deref() {
        Some(b"http1") => {
            let ctx = ctx.clone();
            ctx.clone().drain.spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    serve_http1(ctx, TokioIo::new(upgraded), port, caller).await;
                }
            });
        }
        Some(b"tcp") | None => {
            let mut app = ctx
                .app_connector
                .connect(&addr.into())
                .await
                .map_err(|source| ProxyError::Connect { addr, source })?;
            let metrics = ctx.metrics.clone();
            ctx.drain.spawn(async move {
                let _open = metrics.open(Direction::Inbound, Proto::Tcp);
                let Ok(upgraded) = upgrade.await else { return };
                let mut peer = TokioIo::new(upgraded);
                if let Ok((sent, received)) = crate::io::splice(&mut peer, &mut app).await {
                    metrics.tcp_bytes(Direction::Inbound, sent, received);
                }
            });
        }
        Some(_) => return Err(ProxyError::BadPeerRequest("unknown skein-tunnel kind")),
    }
    let mut resp = Response::new(http::empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// Whether a CONNECT stream carries HTTP/1 (authorized request by request inside it).
pub fn carries_http1<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(headers::TUNNEL)
        .is_some_and(|v| v.as_bytes() == b"http1")
}

/// Serves HTTP/1 arriving through a tunnel, behind the framing guard, authorizing each
/// request; upgrade requests get their own application connection, others use the pool.
async fn serve_http1<I: crate::io::Io>(ctx: Arc<Ctx>, io: I, port: PortSpec, caller: Caller) {
    let _open = ctx.metrics.open(Direction::Inbound, Proto::Http1);
    let c = ctx.clone();
    let caller = Arc::new(caller);
    let handler = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (ctx, caller) = (c.clone(), caller.clone());
        async move {
            let result = match super::authorize::http(&ctx, &caller, &mut req, port.port) {
                Err(e) => Err(e),
                Ok(()) if headers::wants_upgrade(req.headers()) => {
                    upgrade(&ctx, req, port.port, &caller).await
                }
                Ok(()) => super::app::forward(&ctx, req, port.port, false, &caller).await,
            };
            let resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    ctx.metrics.error(Direction::Inbound, e.reason());
                    e.to_response()
                }
            };
            ctx.metrics.request(
                Direction::Inbound,
                Proto::Http1,
                Some(resp.status().as_u16()),
            );
            Ok::<_, Infallible>(resp)
        }
    });
    // A peer writes these bytes itself: the framing guard inspects them as it does an
    // application's, so no smuggled request reaches the application's pooled connections.
    let on_refuse = crate::server::count_refusal(&ctx.metrics, Direction::Inbound);
    let limits = ctx.config().limits;
    crate::server::serve_http1(io, handler, &limits, &ctx.drain, on_refuse).await;
}

async fn upgrade(
    ctx: &Ctx,
    mut req: Request<Incoming>,
    port: u16,
    caller: &Caller,
) -> Result<Response<Body>, ProxyError> {
    let addr = SocketAddr::new(ctx.config().inbound.app_host, port);
    super::app::identify(req.headers_mut(), caller);
    let sender = H1Pool::connect(&*ctx.app_connector, addr).await?;
    crate::http::upgrade::forward(sender, addr, req, &ctx.drain).await
}

//! CONNECT streams from peers: opaque TCP spliced to the application port, or an HTTP/1
//! connection (used for protocol upgrades such as WebSocket) served here and forwarded
//! request by request.

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
                    serve_http1(ctx, TokioIo::new(upgraded), port).await;
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

/// Serves HTTP/1 arriving through a tunnel; upgrade requests get their own application
/// connection, others use the pool.
async fn serve_http1<I: crate::io::Io>(ctx: Arc<Ctx>, io: I, port: PortSpec) {
    let _open = ctx.metrics.open(Direction::Inbound, Proto::Http1);
    let c = ctx.clone();
    let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = c.clone();
        async move {
            let result = if headers::wants_upgrade(req.headers()) {
                upgrade(&ctx, req, port.port).await
            } else {
                super::app::forward(&ctx, req, port.port, false).await
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
    crate::server::serve_http1(io, handler, &ctx.config().limits, &ctx.drain).await;
}

async fn upgrade(
    ctx: &Ctx,
    mut req: Request<Incoming>,
    port: u16,
) -> Result<Response<Body>, ProxyError> {
    let addr = SocketAddr::new(ctx.config().inbound.app_host, port);
    headers::strip_internal(req.headers_mut());
    let sender = H1Pool::connect(&*ctx.app_connector, addr).await?;
    crate::http::upgrade::forward(sender, addr, req, &ctx.drain).await
}

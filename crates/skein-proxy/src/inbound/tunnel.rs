//! CONNECT streams from peers: opaque TCP spliced to the application port, or an HTTP/1
//! connection (used for protocol upgrades such as WebSocket) served here, behind the
//! framing guard, and forwarded request by request.

use super::{Caller, Peer};
use crate::connect::H1Pool;
use crate::error::ProxyError;
use crate::http::{self, headers, Body};
use crate::metrics::{Direction, Proto};
use crate::request::{self, Record};
use crate::state::State;
use crate::telemetry::TcpKey;
use crate::Ctx;
use ::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skein_model::{PortSpec, ProxyConfig};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Accepts a CONNECT stream for `port`: connects to the application first (so a refused
/// connection is reported to the caller), answers 200, then carries bytes.
pub async fn open(
    ctx: &Arc<Ctx>,
    state: &State,
    mut req: Request<Incoming>,
    port: PortSpec,
    peer: &Peer,
) -> Result<Response<Body>, ProxyError> {
    let addr = SocketAddr::new(state.config.inbound.app_host, port.app_port());
    let kind = req
        .headers()
        .get(headers::TUNNEL)
        .map(|v| v.as_bytes().to_vec());
    let upgrade = hyper::upgrade::on(&mut req);
    match kind.as_deref() {
        Some(b"http1") => {
            let ctx = ctx.clone();
            let peer = peer.clone();
            ctx.clone().drain.spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    serve_http1(ctx, TokioIo::new(upgraded), port, peer).await;
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
            let edge = state.config.telemetry.requests.then(|| TcpKey {
                direction: Direction::Inbound,
                tls: peer.tls(),
                src: peer.account.clone(),
                dst: state.service.clone(),
            });
            ctx.drain.spawn(async move {
                let _open = metrics.open(Direction::Inbound, Proto::Tcp);
                let mut edge = edge.map(|key| metrics.telemetry.tcp_open(key));
                let Ok(upgraded) = upgrade.await else { return };
                let mut peer = TokioIo::new(upgraded);
                if let Ok((sent, received)) = crate::io::splice(&mut peer, &mut app).await {
                    if let Some(edge) = edge.as_mut() {
                        edge.bytes(sent, received);
                    }
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
/// request against the state in force when it arrives; upgrade requests get their own
/// application connection, others use the pool. Every request ends in
/// [`request::finish`], like those on HTTP/2 streams.
async fn serve_http1<I: crate::io::Io>(ctx: Arc<Ctx>, io: I, port: PortSpec, peer: Peer) {
    let _open = ctx.metrics.open(Direction::Inbound, Proto::Http1);
    let c = ctx.clone();
    let peer = Arc::new(peer);
    let handler = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (ctx, peer) = (c.clone(), peer.clone());
        async move {
            let state = ctx.state();
            let config = &state.config;
            let caller = &peer.caller;
            let mut rec = Record::new(
                Direction::Inbound,
                Proto::Http1,
                false,
                peer.account.clone(),
                peer.tls(),
            );
            rec.recorded = config.telemetry.requests;
            rec.for_taps(&ctx, &req);
            rec.request_id = Some(crate::ids::request_id(req.headers()).0);
            rec.dst = Some(state.service.clone());
            let authorized = super::authorize::http(&ctx, config, caller, &mut req, port.port);
            if let (Ok(decision), true) = (&authorized, rec.recorded) {
                rec.pathway = Some(super::authorize::pathway(&req, port.port, decision));
            }
            let authorized = authorized.map(|_| ());
            let result = match authorized {
                Err(e) => Err(e),
                Ok(()) if headers::wants_upgrade(req.headers()) => {
                    rec.attempts = 1;
                    let id = rec.request_id.clone();
                    upgrade(&ctx, config, req, port.app_port(), caller, id).await
                }
                // Each request inside the tunnel is shed like any other.
                Ok(()) => match super::shed::admit(&ctx, &state).await {
                    Err(e) => Err(e),
                    Ok(admitted) => {
                        let port = port.app_port();
                        let answered =
                            super::app::forward(&ctx, config, req, port, false, caller, &mut rec)
                                .await;
                        super::shed::hold(answered, admitted)
                    }
                },
            };
            Ok::<_, Infallible>(request::finish(&ctx, rec, result))
        }
    });
    // A peer writes these bytes itself: the framing guard inspects them as it does an
    // application's, so no smuggled request reaches the application's pooled connections.
    let on_refuse = crate::server::count_refusal(&ctx, Direction::Inbound);
    let limits = ctx.config().limits;
    crate::server::serve_http1(io, handler, &limits, &ctx.drain, on_refuse).await;
}

async fn upgrade(
    ctx: &Ctx,
    config: &ProxyConfig,
    mut req: Request<Incoming>,
    port: u16,
    caller: &Caller,
    request_id: Option<::http::HeaderValue>,
) -> Result<Response<Body>, ProxyError> {
    let addr = SocketAddr::new(config.inbound.app_host, port);
    super::app::identify(req.headers_mut(), caller);
    if let Some(id) = request_id {
        req.headers_mut().insert(headers::REQUEST_ID, id);
    }
    let sender = H1Pool::connect(&*ctx.app_connector, addr).await?;
    let mut resp = crate::http::upgrade::forward(sender, addr, req, &ctx.drain, ()).await?;
    // Only proxies set skein-* headers; an application's answer to an upgrade cannot.
    headers::strip_internal(resp.headers_mut());
    Ok(resp)
}

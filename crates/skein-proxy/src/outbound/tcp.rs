//! Outbound opaque TCP: bytes from the application travel to the peer proxy inside an
//! HTTP/2 CONNECT stream; connections to addresses no destination knows pass through to
//! their original destination unchanged.

use crate::balance::{Outcome, Picked};
use crate::connect::Upstream;
use crate::destinations::Target;
use crate::error::ProxyError;
use crate::http::{self, headers, Body};
use crate::io::Io;
use crate::limit::Admitted;
use crate::metrics::{Direction, Proto};
use crate::telemetry::TcpKey;
use crate::Ctx;
use ::http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Opens a CONNECT stream to the peer proxy at `endpoint` for `target`; `kind` tells the
/// peer what it carries (`tcp` or `http1`).
pub async fn open_tunnel(
    ctx: &Ctx,
    endpoint: &Upstream,
    target: &Target,
    kind: &'static str,
) -> Result<Upgraded, ProxyError> {
    let authority = format!("{}:{}", target.service.spec.service, target.port.port);
    let mut req = Request::new(http::empty());
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = authority.parse().map_err(|_| ProxyError::NoAuthority)?;
    let h = req.headers_mut();
    h.insert(headers::TUNNEL, HeaderValue::from_static(kind));
    h.insert(headers::DST_PORT, HeaderValue::from(target.port.port));
    let mut resp = ctx.peers.send(endpoint, req).await?;
    if resp.status() != StatusCode::OK {
        let reason = resp
            .headers()
            .get(headers::ERROR)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        return Err(ProxyError::TunnelRefused {
            addr: endpoint.addr,
            status: resp.status().as_u16(),
            reason,
        });
    }
    hyper::upgrade::on(&mut resp)
        .await
        .map_err(|source| ProxyError::Upstream {
            addr: endpoint.addr,
            source,
        })
}

/// The TCP edge from this workload to `target`, when telemetry records edges.
fn edge(ctx: &Ctx, target: &Target) -> Option<TcpKey> {
    let state = ctx.state();
    state.config.telemetry.requests.then(|| TcpKey {
        direction: Direction::Outbound,
        tls: ctx.identity.required,
        src: ctx.own_account(&state),
        dst: target.service.label.clone(),
    })
}

/// Tells the balancer how opening a tunnel through `picked` went (a denial says nothing
/// about the endpoint's health).
pub fn learn_connect(ctx: &Ctx, target: &Target, picked: &Picked, opened: Result<(), &str>) {
    match opened {
        Ok(()) => {
            super::learn(ctx, target, picked, Outcome::Success);
        }
        Err("denied") => {}
        Err(_) => {
            super::learn(ctx, target, picked, Outcome::Failure);
        }
    }
}

/// Admits a connection under the destination's `maxConnections`, picks its endpoint and
/// opens the tunnel; what is returned is held for the connection's life.
async fn open(ctx: &Ctx, target: &Target) -> Result<(Upgraded, (Admitted, Picked)), ProxyError> {
    let policy = target.policy();
    let admitted = policy.connections.try_admit().map_err(|_| {
        let max = policy.spec.connection_pool.max_connections;
        target.overloaded("connectionPool.maxConnections", max)
    })?;
    let picked = target.pick(None)?;
    let tunnel = open_tunnel(ctx, &picked.upstream, target, "tcp").await;
    let reason = |e: &ProxyError| match e {
        ProxyError::TunnelRefused { reason, .. } if reason == "denied" => "denied",
        _ => e.reason(),
    };
    learn_connect(
        ctx,
        target,
        &picked,
        tunnel.as_ref().map(|_| ()).map_err(reason),
    );
    Ok((tunnel?, (admitted, picked)))
}

/// Carries an opaque connection to `target` through a peer proxy. It keeps this backend
/// for its life: bytes of one stream cannot be re-routed.
pub async fn forward<I: Io>(ctx: &Ctx, mut io: I, target: &Target) {
    let _open = ctx.metrics.open(Direction::Outbound, Proto::Tcp);
    let mut edge = edge(ctx, target).map(|key| ctx.metrics.telemetry.tcp_open(key));
    let tunnel = match open(ctx, target).await {
        Ok((t, held)) => (t, held),
        Err(e) => {
            tracing::info!(error = %e, service = %target.service.spec.service, "TCP connection refused");
            ctx.metrics.limit_refusal(Direction::Outbound, &e);
            let reason = match &e {
                ProxyError::TunnelRefused { reason, .. } if reason == "denied" => "denied",
                _ => e.reason(),
            };
            ctx.metrics.error(Direction::Outbound, reason);
            return;
        }
    };
    let (tunnel, _held) = tunnel;
    let mut tunnel = TokioIo::new(tunnel);
    match crate::io::splice(&mut io, &mut tunnel).await {
        Ok((sent, received)) => {
            if let Some(edge) = edge.as_mut() {
                edge.bytes(sent, received);
            }
        }
        Err(e) => tracing::debug!(error = %e, "TCP connection ended"),
    }
}

/// Answers an HTTP proxy `CONNECT service:port`: opens the tunnel first, so a failure is
/// reported to the client as an HTTP error, then answers 200 and splices.
pub async fn connect_method(
    ctx: &Ctx,
    req: Request<Incoming>,
    target: &Target,
) -> Result<Response<Body>, ProxyError> {
    let (tunnel, held) = open(ctx, target).await?;
    // The connection's slot of `limits.maxConnections` lives as long as the tunnel.
    let mut req = req;
    let slot = req
        .extensions_mut()
        .remove::<crate::overload::ConnectionSlot>();
    let client = hyper::upgrade::on(req);
    let metrics = ctx.metrics.clone();
    let edge = edge(ctx, target);
    ctx.drain.spawn(async move {
        let _held = (held, slot);
        let _open = metrics.open(Direction::Outbound, Proto::Tcp);
        let mut edge = edge.map(|key| metrics.telemetry.tcp_open(key));
        let Ok(client) = client.await else { return };
        let (mut client, mut tunnel) = (TokioIo::new(client), TokioIo::new(tunnel));
        if let Ok((sent, received)) = crate::io::splice(&mut client, &mut tunnel).await {
            if let Some(edge) = edge.as_mut() {
                edge.bytes(sent, received);
            }
        }
    });
    let mut resp = Response::new(http::empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// Forwards a connection nobody claims to where the application sent it.
pub async fn passthrough(ctx: &Ctx, mut stream: TcpStream, dst: SocketAddr) {
    let _open = ctx.metrics.open(Direction::Outbound, Proto::Passthrough);
    let mut upstream = match crate::transport::connect(dst).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%dst, error = %e, "passthrough connect failed");
            ctx.metrics
                .error(Direction::Outbound, "passthrough_connect");
            return;
        }
    };
    if let Err(e) = crate::io::splice(&mut stream, &mut upstream).await {
        tracing::debug!(%dst, error = %e, "passthrough ended");
    }
}

//! The outbound side: connections from the local application to other services.
//!
//! Three ways in — transparent interception (iptables `REDIRECT`, original destination from
//! `SO_ORIGINAL_DST`), the explicit HTTP proxy (`HTTP_PROXY`), and local upstream
//! listeners — then, per connection: accept → detect the protocol (unless the port
//! declares it) → route to a destination → connect to a peer proxy (HTTP as HTTP/2
//! streams, opaque TCP as a CONNECT stream). Addresses no destination claims pass through
//! unchanged.
//!
//! HTTP is routed per request, with the state in force when the request arrives
//! ([`plan`]); an opaque TCP connection is routed once and keeps its backend for life.
//! Either is admitted under the destination's BackendPolicy limits and sent to the
//! endpoint its balancer picks ([`crate::balance`]), which learns from every try.

mod http;
mod mirror;
pub mod plan;
mod tcp;

use crate::destinations::Target;
use crate::detect::{self, Detected};
use crate::error::ProxyError;
use crate::http::guard::Refusal;
use crate::io::Io;
use crate::metrics::{Direction, Proto};
use crate::overload::ConnectionSlot;
use crate::Ctx;
use skein_model::{Protocol, Upstream};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

pub(crate) use self::http::shed_request;
pub use self::mirror::MAX_IN_FLIGHT as MIRRORS_IN_FLIGHT;
pub use self::plan::Addressed;

/// Tells the balancer of `target`'s policy how a try to `picked` went; an ejection it
/// causes is logged (with the policy that decided it) and counted.
fn learn(
    ctx: &Ctx,
    target: &Target,
    picked: &crate::balance::Picked,
    outcome: crate::balance::Outcome,
) -> Option<String> {
    let policy = target.policy();
    let ejection = policy
        .balancer
        .record(picked, std::time::Instant::now(), outcome)?;
    let service = &target.service.spec.service;
    tracing::warn!(
        service = %service,
        endpoint = %ejection.endpoint,
        seconds = ejection.duration.as_secs(),
        ejections_in_a_row = ejection.steps,
        policy = %policy.name,
        "endpoint ejected after consecutive failures (outlierDetection)"
    );
    ctx.metrics.ejection(service, ejection.endpoint);
    let od = &policy.spec.outlier_detection;
    Some(format!(
        "this failure ejected it for {} (BackendPolicy {} outlierDetection: consecutive5xx {}, baseEjectionTime {}; ejection {} in a row)",
        skein_model::duration::format(ejection.duration),
        policy.name,
        od.consecutive_5xx,
        skein_model::duration::format(od.base_ejection_time),
        ejection.steps
    ))
}

/// Accepts until shutdown is signalled, handing each connection to `serve`.
async fn accept_loop<F, Fut>(ctx: Arc<Ctx>, listener: TcpListener, what: &'static str, serve: F)
where
    F: Fn(Arc<Ctx>, TcpStream, ConnectionSlot) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, _peer) = tokio::select! {
            _ = ctx.drain.signalled() => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At the proxy's connection ceiling: closed at once (dropped), counted, logged.
        // The slot goes with the connection's task, and with an upgrade or tunnel that
        // outlives it.
        let Some(slot) = ctx.overload.connection(Direction::Outbound) else {
            ctx.shed(
                crate::overload::Resource::Connections,
                Direction::Outbound,
                what,
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        ctx.drain
            .spawn(serve(ctx.clone(), stream, ConnectionSlot(Arc::new(slot))));
    }
}

/// Transparent listener: route by the original destination.
pub async fn accept_transparent(ctx: Arc<Ctx>, listener: TcpListener) {
    accept_loop(ctx, listener, "transparent", |ctx, stream, slot| async move {
        let Some(dst) = crate::transport::original_dst(&stream) else {
            tracing::warn!("connection reached the transparent listener without a redirect; closing (use the HTTP proxy or an upstream listener instead)");
            ctx.metrics.error(Direction::Outbound, "no_original_dst");
            return;
        };
        let mut target = ctx.state().destinations.resolve_addr(dst);
        if target.is_none() && ctx.discovery.covers(dst.ip()) {
            // A virtual IP this proxy does not hold: ask, then route by the answer. Only
            // a definite "no Service has it" passes the connection through: without an
            // answer it could be a mesh Service's, and must not leave in plaintext.
            match ctx.discovery.ask(&dst.ip().to_string()).await {
                Ok(_) => target = ctx.state().destinations.resolve_addr(dst),
                Err(e) => {
                    target = ctx.state().destinations.resolve_addr(dst);
                    if target.is_none() {
                        tracing::warn!(%dst, error = %e, "could not look up a virtual IP of the mesh; closing the connection rather than passing it through unmeshed");
                        ctx.metrics.error(Direction::Outbound, "undiscovered");
                        return;
                    }
                }
            }
        }
        match target {
            Some(target) => serve_target(ctx, stream, target, Addressed::Addr(dst), slot).await,
            None => tcp::passthrough(&ctx, stream, dst).await,
        }
    })
    .await
}

/// Explicit HTTP proxy listener: every request is routed by its authority.
pub async fn accept_http_proxy(ctx: Arc<Ctx>, listener: TcpListener) {
    accept_loop(
        ctx,
        listener,
        "http-proxy",
        |ctx, stream, slot| async move {
            serve_http(ctx, stream, Addressed::Authority, Proto::Http1, slot).await
        },
    )
    .await
}

/// Local upstream listener: everything goes to one service port.
pub async fn accept_upstream(ctx: Arc<Ctx>, listener: TcpListener, upstream: Upstream) {
    let upstream = Arc::new(upstream);
    accept_loop(ctx, listener, "upstream", move |ctx, stream, slot| {
        let upstream = upstream.clone();
        async move {
            let mut resolved = ctx
                .state()
                .destinations
                .resolve(&upstream.service, upstream.port);
            if matches!(resolved, Err(ProxyError::UnknownService(_)))
                && ctx.discovery.on_demand()
                && ctx.discovery.ask(&upstream.service).await.is_ok()
            {
                resolved = ctx
                    .state()
                    .destinations
                    .resolve(&upstream.service, upstream.port);
            }
            match resolved {
                Ok(target) => {
                    let addressed = Addressed::Name {
                        service: upstream.service.as_str().into(),
                        port: upstream.port,
                    };
                    serve_target(ctx, stream, target, addressed, slot).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream listener has no destination");
                    ctx.metrics.error(Direction::Outbound, e.reason());
                }
            }
        }
    })
    .await
}

/// Detects the protocol (unless declared) and serves the connection towards `target`:
/// opaque TCP to it for the connection's life, HTTP request by request to what
/// `addressed` resolves to when each request arrives.
async fn serve_target(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    target: Target,
    addressed: Addressed,
    slot: ConnectionSlot,
) {
    // A declared protocol skips sniffing between HTTP and opaque TCP. `http` still tells
    // HTTP/1 from HTTP/2 by the first bytes, waiting as long as a request head may take
    // (`limits.headerTimeout`); `http2` and `grpc` wait as long for the preface's first
    // bytes. A client silent that long is closed (HTTP/2 keepalive pings begin only after
    // the preface, so nothing else would end it).
    let head_timeout = ctx.config().limits.header_timeout;
    let (timeout, declared) = match target.port.protocol {
        Protocol::Detect => (ctx.config().detect_timeout, None),
        Protocol::Http => (head_timeout, Some(Detected::Http1)),
        Protocol::Http2 | Protocol::Grpc => (head_timeout, Some(Detected::Http2)),
        Protocol::Tcp => (Duration::ZERO, Some(Detected::Opaque)),
    };
    let (protocol, io) = if timeout.is_zero() {
        let p = declared.unwrap_or(Detected::Opaque);
        (p, crate::io::PrefixedIo::new(Default::default(), stream))
    } else {
        let max_line = ctx.config().limits.max_request_line;
        let d = match detect::detect(stream, timeout, max_line).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed during detection");
                return;
            }
        };
        if d.timed_out && declared.is_none() {
            let labels = crate::metrics::DirLabels {
                direction: Direction::Outbound,
            };
            ctx.metrics.detect_timeouts.get_or_create(&labels).inc();
        }
        match (declared, d.protocol) {
            (Some(_), _) if d.timed_out && d.io.prefix().is_empty() => {
                tracing::debug!(
                    "closed a connection that sent nothing within limits.headerTimeout"
                );
                return;
            }
            // Declared HTTP/2: whatever the first bytes, hyper's HTTP/2 server reads them
            // (and refuses what is not a preface).
            (Some(Detected::Http2), _) => (Detected::Http2, d.io),
            // On an `http` port, bytes that are not HTTP/2 go to the HTTP/1 parser, which
            // refuses them with 400 rather than forwarding them as opaque TCP.
            (Some(Detected::Http1), Detected::Opaque) => (Detected::Http1, d.io),
            (_, p) => (p, d.io),
        }
    };
    match protocol {
        Detected::Http1 => serve_http(ctx, io, addressed, Proto::Http1, slot).await,
        Detected::Http2 => serve_http(ctx, io, addressed, Proto::Http2, slot).await,
        Detected::Opaque => tcp::forward(&ctx, io, &target).await,
        Detected::RequestLineTooLong => {
            let refusal = Refusal::RequestLineTooLong(ctx.config().limits.max_request_line);
            let id = crate::request::refused(&ctx, Direction::Outbound, &refusal);
            let mut io = io;
            let _ = io.write_all(&refusal.response(Some(&id))).await;
            let _ = io.shutdown().await;
        }
    }
}

/// Serves HTTP/1 (behind the framing guard, see `server::serve_http1`) or HTTP/2 from the
/// application.
async fn serve_http<I: Io>(
    ctx: Arc<Ctx>,
    io: I,
    addressed: Addressed,
    proto: Proto,
    slot: ConnectionSlot,
) {
    let _open = ctx.metrics.open(Direction::Outbound, proto);
    let handler = self::http::handler(ctx.clone(), addressed, proto, slot);
    let limits = ctx.config().limits;
    if proto == Proto::Http2 {
        crate::server::serve_http2(io, handler, &limits, &ctx.drain).await;
        return;
    }
    let on_refuse = crate::server::count_refusal(&ctx, Direction::Outbound);
    crate::server::serve_http1(io, handler, &limits, &ctx.drain, on_refuse).await;
}

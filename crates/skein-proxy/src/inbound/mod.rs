//! The inbound side: HTTP/2 connections from peer proxies, each stream forwarded to the
//! local application.
//!
//! Per connection: accept → mutual TLS (the caller's certificate verified against the
//! mesh trust bundle, its SPIFFE ID recorded as the [`Caller`]) → serve HTTP/2. Under
//! `mtls: strict` anything else is refused; under `permissive` a plaintext HTTP/2
//! connection is also served, its caller `Unauthenticated`. A proxy without a control plane
//! has no identity and serves plaintext only. Per stream: learn the target port →
//! authorize → route (HTTP request, or a CONNECT tunnel carrying TCP or HTTP/1) → connect
//! to the application.

mod app;
pub mod authorize;
mod shed;
mod tunnel;

pub use shed::AppLimit;

use crate::error::ProxyError;
use crate::http::{headers, Body};
use crate::metrics::{Direction, Proto};
use crate::request::{self, Record};
use crate::state::State;
use crate::telemetry::Named;
use crate::Ctx;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use skein_model::{PortSpec, Protocol, ProxyConfig};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Who is calling, as proved on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A mesh workload, verified by its certificate: its SPIFFE ID, kept as the header
    /// value the application receives (formatted once per connection).
    Mesh(HeaderValue),
    /// Plaintext: no proof (permissive mode, or a proxy without a control plane).
    Unauthenticated,
}

impl Caller {
    /// A verified SPIFFE ID; `None` if it cannot be carried in a header (never expected:
    /// IDs are validated ASCII), so that the connection is refused rather than served as
    /// someone else.
    fn mesh(id: &skein_identity::SpiffeId) -> Option<Caller> {
        HeaderValue::from_str(&id.to_string())
            .ok()
            .map(Caller::Mesh)
    }

    /// The caller as policy evaluation sees it.
    pub fn as_authz(&self) -> skein_model::authz::Caller<'_> {
        match self {
            Caller::Mesh(id) => skein_model::authz::Caller::Mesh(id.to_str().unwrap_or("")),
            Caller::Unauthenticated => skein_model::authz::Caller::Unauthenticated,
        }
    }
}

/// The caller of one connection, as authorization and telemetry see it (worked out once
/// per connection).
#[derive(Debug, Clone)]
pub struct Peer {
    /// Who is calling.
    pub caller: Caller,
    /// Its service account, as telemetry labels it.
    pub account: Named,
}

impl Peer {
    fn new(caller: Caller) -> Peer {
        let account = match &caller {
            Caller::Mesh(id) => id
                .to_str()
                .ok()
                .and_then(|id| id.parse::<skein_identity::SpiffeId>().ok())
                .map(|id| Named::new(id.namespace(), id.account()))
                .unwrap_or_else(|| Named::new("", "unknown")),
            Caller::Unauthenticated => Named::unauthenticated(),
        };
        Peer { caller, account }
    }

    /// Whether the caller proved itself with mutual TLS.
    pub fn tls(&self) -> bool {
        matches!(self.caller, Caller::Mesh(_))
    }
}

/// What a plaintext client of a strict proxy is told before the connection closes.
const STRICT_REFUSAL: &str = "skein: this port accepts only mutual TLS from mesh proxies (Mesh spec.mtls is strict); call the service through your own skein proxy\n";

/// [`STRICT_REFUSAL`] as an HTTP/1.1 response.
fn strict_refusal_h1() -> String {
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nskein-error: mtls_required\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{STRICT_REFUSAL}",
        STRICT_REFUSAL.len()
    )
}

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
        let Some(slot) = ctx.overload.connection(Direction::Inbound) else {
            ctx.shed(
                crate::overload::Resource::Connections,
                Direction::Inbound,
                "inbound",
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let serving = secure(ctx.clone(), stream, peer);
        ctx.drain.spawn(async move {
            serving.await;
            drop(slot);
        });
    }
}

/// accept → TLS: decides how the connection proves its caller, then serves it.
async fn secure(ctx: Arc<Ctx>, mut stream: TcpStream, peer: SocketAddr) {
    // Longest a peer may take to start and finish its TLS handshake (or, in plaintext, to
    // send the HTTP/2 preface): one deadline for every step.
    let handshake_timeout = ctx.config().limits.handshake_timeout;
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    if !ctx.identity.required {
        return serve_plaintext(ctx, stream, peer, deadline).await;
    }
    // A TLS connection starts with a handshake record (content type 22).
    let mut first = [0u8; 1];
    let tls = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => return,
    };
    let identity = ctx.identity.get().cloned();
    match (tls, identity) {
        (true, Some(identity)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let conn = tls.get_ref().1;
                    let caller = skein_identity::tls::peer_identity(conn);
                    let lineage = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|leaf| skein_identity::lineage_of(leaf))
                        .map(Arc::<str>::from);
                    match caller.as_ref().and_then(Caller::mesh) {
                        Some(caller) => {
                            ctx.metrics.inbound_security("mtls");
                            serve_peer(ctx, tls, peer, caller, lineage).await
                        }
                        // The verifier requires a certificate with a SPIFFE ID.
                        None => ctx.metrics.inbound_security("handshake_failed"),
                    }
                }
                Ok(Err(e)) => {
                    ctx.metrics.inbound_security("handshake_failed");
                    tracing::info!(%peer, error = %e, "refused an inbound connection: mutual TLS failed");
                }
                Err(_) => {
                    ctx.metrics.inbound_security("handshake_failed");
                    tracing::info!(%peer, "refused an inbound connection: TLS handshake timed out");
                }
            }
        }
        (true, None) => {
            ctx.metrics.inbound_security("no_identity");
            tracing::info!(%peer, "refused an inbound connection: this proxy has no certificate yet");
        }
        (false, identity) if identity.as_ref().is_some_and(|i| i.is_permissive()) => {
            ctx.metrics.inbound_security("plaintext");
            serve_plaintext(ctx, stream, peer, deadline).await
        }
        (false, _) => {
            ctx.metrics.inbound_security("refused_plaintext");
            tracing::info!(%peer, "refused a plaintext inbound connection (mtls: strict)");
            // An HTTP/2 client (prior knowledge) cannot read an HTTP/1 answer: it gets its
            // refusal as HTTP/2 responses, one per stream.
            let mut preface = [0u8; 3];
            let h2 = matches!(
                tokio::time::timeout_at(deadline, stream.peek(&mut preface)).await,
                Ok(Ok(3))
            ) && &preface == b"PRI";
            // The refusal has the rest of the handshake's time, and at least a second.
            let answer_by =
                deadline.max(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
            let _ = tokio::time::timeout_at(answer_by, async {
                if h2 {
                    refuse_h2(stream).await;
                } else {
                    use tokio::io::AsyncWriteExt;
                    let _ = stream.write_all(strict_refusal_h1().as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            })
            .await;
        }
    }
}

/// Serves a plaintext peer once its HTTP/2 preface has arrived by `deadline`; closes one
/// that has not (hyper's HTTP/2 keepalive starts only after the preface, so nothing else
/// would end a connection that stalls before it).
async fn serve_plaintext(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) {
    let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
    let max_line = ctx.config().limits.max_request_line;
    match crate::detect::detect(stream, wait, max_line).await {
        // Decided: the preface, or bytes that are not one (which hyper refuses).
        Ok(d) if !d.timed_out => serve_peer(ctx, d.io, peer, Caller::Unauthenticated, None).await,
        _ => {
            tracing::debug!(%peer, "closed a plaintext connection whose HTTP/2 preface did not arrive within limits.handshakeTimeout")
        }
    }
}

/// Answers every stream of a plaintext HTTP/2 connection to a strict proxy with the
/// refusal (gRPC calls with `UNAUTHENTICATED`, as gRPC clients read it), and closes it
/// with GOAWAY after the first. The caller bounds the whole exchange with a deadline.
async fn refuse_h2(stream: TcpStream) {
    let body: Arc<str> = STRICT_REFUSAL.into();
    let served = Arc::new(tokio::sync::Notify::new());
    let told = served.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let body = body.clone();
        told.notify_one();
        async move {
            let grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            let mut resp = http::Response::builder().header("skein-error", "mtls_required");
            resp = if grpc {
                // Trailers-only: the status rides in the head.
                let message = body.trim_end().replace('\n', " ");
                resp.status(200)
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header("grpc-status", "16")
                    .header("grpc-message", message)
            } else {
                resp.status(403)
                    .header(http::header::CONTENT_TYPE, "text/plain")
            };
            let bytes = if grpc {
                bytes::Bytes::new()
            } else {
                bytes::Bytes::copy_from_slice(body.as_bytes())
            };
            resp.body(http_body_util::Full::new(bytes))
        }
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    let mut conn = std::pin::pin!(builder
        .max_concurrent_streams(4)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service));
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = served.notified() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Serves one peer proxy's HTTP/2 connection. `lineage` is the join lineage of the
/// caller's certificate: its revocation after the handshake closes the connection, with
/// every stream and tunnel on it (so no per-request check is needed).
async fn serve_peer<I: crate::io::Io>(
    ctx: Arc<Ctx>,
    io: I,
    peer: SocketAddr,
    caller: Caller,
    lineage: Option<Arc<str>>,
) {
    let _open = ctx.metrics.open(Direction::Inbound, Proto::Http2);
    tracing::debug!(%peer, ?caller, "peer connected");
    let c = ctx.clone();
    let who = Arc::new(Peer::new(caller));
    let handler = hyper::service::service_fn(move |req| {
        let (ctx, who) = (c.clone(), who.clone());
        async move { Ok::<_, Infallible>(handle(ctx, req, &who).await) }
    });
    let limits = ctx.config().limits;
    let serve = crate::server::serve_http2(io, handler, &limits, &ctx.drain);
    let identity = ctx.identity.get().cloned();
    match (lineage, identity) {
        (Some(lineage), Some(identity)) => tokio::select! {
            _ = serve => {}
            _ = identity.revoked(&lineage) => {
                ctx.metrics.error(Direction::Inbound, "revoked");
                tracing::info!(%peer, %lineage, "closed a connection from a revoked workload, with its streams and tunnels");
            }
        },
        _ => serve.await,
    }
}

/// Handles one stream from a peer: reads the state in force once, routes, and ends in
/// [`request::finish`] (which turns failures into the proxy's own responses).
async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let state = ctx.state();
    let mut rec = Record::new(
        Direction::Inbound,
        orig_proto(&req),
        is_grpc(&req),
        peer.account.clone(),
        peer.tls(),
    );
    // A tunnel is an edge, not a request: telemetry records it as a TCP connection.
    rec.recorded = state.config.telemetry.requests && req.method() != Method::CONNECT;
    rec.for_taps(&ctx, &req);
    let (id, sent) = crate::ids::request_id(req.headers());
    rec.request_id = Some(id);
    // Callers here are proxies: one that sent an ID puts it on the response itself.
    rec.id_on_response = !sent;
    rec.dst = Some(state.service.clone());
    let tracing = &state.config.telemetry.tracing;
    if tracing.enabled && req.method() != Method::CONNECT {
        let id = rec.request_id.as_ref().map_or(&b""[..], |v| v.as_bytes());
        rec.trace = Some(crate::spans::Traced::from_peer(&req, id, &peer.account));
    }
    // A tunnel's stream lives as long as its connection: its end is no cancellation.
    let unfinished =
        (req.method() != Method::CONNECT).then(|| request::Unfinished::new(&ctx, &rec));
    let result = match ctx.overload.request(Direction::Inbound) {
        Some(_ticket) => route(&ctx, &state, req, peer, &mut rec).await,
        None => Err(crate::outbound::shed_request(&ctx, Direction::Inbound)),
    };
    if let Some(u) = unfinished {
        u.finished();
    }
    request::finish(&ctx, rec, result)
}

/// Whether the request is gRPC (its errors go in `grpc-status`).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// target port → mTLS mode → authorize → tunnel or HTTP forward.
async fn route(
    ctx: &Arc<Ctx>,
    state: &State,
    mut req: Request<Incoming>,
    peer: &Peer,
    rec: &mut Record,
) -> Result<Response<Body>, ProxyError> {
    let caller = &peer.caller;
    let config = &state.config;
    let port = target_port(config, &req)?;
    require_mtls(ctx, caller)?;
    if req.method() == Method::CONNECT {
        // An HTTP/1 tunnel's requests are authorized one by one inside it.
        if !tunnel::carries_http1(&req) {
            let decision = authorize::tcp(ctx, config, caller, port.port)?;
            if config.telemetry.requests {
                ctx.metrics.telemetry.pathway(
                    crate::telemetry::PathwayKey {
                        src: peer.account.clone(),
                        port: port.port,
                        method: "",
                        prefix: crate::telemetry::empty(),
                    },
                    decision.verdict == skein_model::authz::Verdict::Audited,
                );
            }
        }
        return tunnel::open(ctx, state, req, port, peer).await;
    }
    let decision = authorize::http(ctx, config, caller, &mut req, port.port)?;
    if let Some(t) = rec.trace.as_mut().filter(|t| t.ctx.sampled) {
        t.authz = Some((
            decision.verdict.as_str(),
            decision.policy_label().to_string(),
        ));
    }
    if rec.recorded {
        rec.pathway = Some(authorize::pathway(&req, port.port, &decision));
    }
    let admitted = shed::admit(ctx, state).await?;
    let to_h2 = app_speaks_h2(port.protocol, &req);
    let mut answered = app::forward(ctx, config, req, port.app_port(), to_h2, caller, rec).await;
    if to_h2 && port.protocol == Protocol::Detect {
        // Only the caller's choice made it HTTP/2: say what to declare if the app cannot.
        if let Err(ProxyError::Upstream { source, .. }) = answered {
            answered = Err(ProxyError::AppNotH2 {
                port: port.app_port(),
                source,
            });
        }
    }
    shed::hold(answered, admitted)
}

/// Whether a request goes to the application as HTTP/2: always on `http2` and `grpc`
/// ports; on `http` ports only gRPC (which needs HTTP/2's trailers), everything else as
/// HTTP/1.1 whatever the caller spoke, so an HTTP/1-only application serves HTTP/2
/// callers; on `detect` ports as the caller spoke.
fn app_speaks_h2(protocol: Protocol, req: &Request<Incoming>) -> bool {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Http => req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc")),
        Protocol::Detect | Protocol::Tcp => orig_proto(req) == Proto::Http2,
    }
}

/// The application port named by the caller's proxy; only declared ports are reachable.
fn target_port(config: &ProxyConfig, req: &Request<Incoming>) -> Result<PortSpec, ProxyError> {
    let port = req
        .headers()
        .get(headers::DST_PORT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .ok_or(ProxyError::BadPeerRequest(
            "missing or invalid skein-dst-port header",
        ))?;
    config.inbound_port(port).ok_or_else(|| {
        let served = config.inbound.ports.iter().map(|p| p.port).collect();
        ProxyError::PortNotServed(port, served)
    })
}

/// A plaintext connection accepted under `permissive` does not outlive the switch to
/// `strict`: its next request is refused, so strict takes effect without a reconnect.
fn require_mtls(ctx: &Ctx, caller: &Caller) -> Result<(), ProxyError> {
    if matches!(caller, Caller::Unauthenticated)
        && ctx.identity.required
        && !ctx.identity.get().is_some_and(|i| i.is_permissive())
    {
        return Err(ProxyError::MtlsRequired);
    }
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

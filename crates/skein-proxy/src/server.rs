//! Serving one accepted connection with hyper, HTTP/1 or HTTP/2, honouring the drain
//! signal: on shutdown HTTP/1 finishes the response in flight and closes, HTTP/2 sends
//! GOAWAY and lets open streams complete. Every HTTP/1 server runs behind the framing
//! guard (`http::guard`), which learns from the handler's answers when a connection
//! really switches protocols.

use crate::drain::Drain;
use crate::http::guard::{
    FramingGuard, GuardedIo, OnRefuse, Refusal, ReportSwitches, SwitchSignal,
};
use crate::http::Body;
use crate::io::Io;
use crate::metrics::Direction;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use skein_model::Limits;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Runs the tasks hyper's HTTP/2 spawns (one per stream on a server, one or two per
/// request on a client) on tokio, each boxed first. tokio moves a spawned future by
/// value through several calls before it is first polled, and a stream's future holds
/// the whole request path (about 4 KiB on the inbound side): boxed, it is copied once
/// and tokio moves a pointer. Measured under callgrind: 1,000–5,000 fewer instructions
/// per request in each proxy (docs/BENCHMARKS.md, "Per-request cost").
#[derive(Debug, Clone, Copy, Default)]
pub struct Spawn;

impl<F> hyper::rt::Executor<F> for Spawn
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// A per-request handler as hyper wants it.
pub trait Handler:
    Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}
impl<S> Handler for S where
    S: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// Counts, logs and keeps (for `skein why`) a request the framing guard refuses on a
/// `direction` connection; its answer names the request ID made for it.
pub fn count_refusal(ctx: &Arc<crate::Ctx>, direction: Direction) -> OnRefuse {
    let ctx = ctx.clone();
    Box::new(move |r: Refusal| Some(crate::request::refused(&ctx, direction, &r)))
}

/// Serves HTTP/1.1 (with upgrades) on `io` until the client closes or the drain ends it.
/// Each byte read passes the framing guard first, with `limits`; `on_refuse` hears of a
/// request it refuses.
pub async fn serve_http1<I: Io>(
    io: I,
    handler: impl Handler,
    limits: &Limits,
    drain: &Drain,
    on_refuse: OnRefuse,
) {
    let signal = SwitchSignal::default();
    let io = GuardedIo::new(
        io,
        FramingGuard::new(limits.into()),
        signal.clone(),
        on_refuse,
    );
    let handler = ReportSwitches::new(handler, signal);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    let conn = builder
        .serve_connection(TokioIo::new(io), handler)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.signalled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/1 connection ended with an error");
    }
}

/// Serves HTTP/2 on `io` until the client closes or the drain ends it.
pub async fn serve_http2<I: Io>(io: I, handler: impl Handler, limits: &Limits, drain: &Drain) {
    let mut builder = hyper::server::conn::http2::Builder::new(Spawn);
    builder
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .max_frame_size(256 * 1024)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(io), handler);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.signalled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

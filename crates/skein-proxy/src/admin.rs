//! The admin listener: `/live` (the process runs), `/ready` (config loaded, listeners
//! bound and, under a control plane, a valid workload certificate; false while draining),
//! `/metrics` (Prometheus text) and `/config` (the configuration in force and the
//! certificate presented, as JSON, written while it is sent). Keys never appear here.
//!
//! It holds at most [`MAX_CONNECTIONS`] connections (more are closed at once), and closes
//! one whose request head does not arrive within [`HEADER_TIMEOUT`], idle keep-alive
//! connections included: probes and scrapers reconnect, and nobody holds a socket here for
//! free.

use crate::http::{full, Body};
use crate::Ctx;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Most admin connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest wait for a request head (from the connection's start or the previous response).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves admin requests until the proxy has fully stopped.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, client) = tokio::select! {
            _ = ctx.drain.stopped() => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ctx.metrics
                .error(crate::metrics::Direction::Inbound, "admin_connection_cap");
            tracing::debug!(%client, "refused an admin connection: {MAX_CONNECTIONS} are open");
            continue;
        };
        let c = ctx.clone();
        let handler = hyper::service::service_fn(move |req| {
            let ctx = c.clone();
            async move { Ok::<_, Infallible>(respond(&ctx, &req)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), handler);
        let stopped = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = conn => {}
                _ = stopped.drain.stopped() => {}
            }
        });
    }
}

fn respond(ctx: &Ctx, req: &Request<Incoming>) -> Response<Body> {
    let certified = match ctx.identity.get() {
        Some(identity) => identity.is_valid(),
        None => !ctx.identity.required,
    };
    let ready = ctx.ready.load(Ordering::SeqCst) && certified && !ctx.drain.is_signalled();
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" if ready => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/metrics" => {
            let format = crate::exposition::negotiate(req.headers().get(header::ACCEPT));
            let body = match format {
                crate::exposition::Format::OpenMetrics => ctx.metrics.encode(),
                crate::exposition::Format::Text => {
                    crate::exposition::to_text(&ctx.metrics.encode())
                }
            };
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, format.content_type());
            resp
        }
        "/config" => {
            let config = ctx.config();
            let identity = ctx.identity.get().map(|i| i.status());
            let body = skein_api::json_body::pretty(move || ConfigView {
                config: Shared(config),
                identity,
            });
            let mut resp = Response::new(crate::http::boxed(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/decisions" => {
            let id = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("request_id=")));
            let found = ctx.decisions.find(id, 100);
            let body = serde_json::json!({ "items": found });
            let mut resp = text(StatusCode::OK, format!("{body:#}\n"));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready, /metrics, /config or /decisions\n".into(),
        ),
    }
}

/// What `/config` shows: the configuration in force, plus `identity`, the certificate
/// presented (or null). Written while it is sent ([`skein_api::json_body`]).
#[derive(serde::Serialize)]
struct ConfigView<C, I> {
    #[serde(flatten)]
    config: C,
    identity: Option<I>,
}

/// The configuration in force, serialised from the shared copy (not cloned).
struct Shared(Arc<skein_model::ProxyConfig>);

impl serde::Serialize for Shared {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&*self.0, s)
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

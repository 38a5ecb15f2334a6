//! One request's record, carried with it from arrival to the end of its response, and
//! [`finish`], the one place every HTTP request ends: outbound, inbound, and requests
//! inside inbound HTTP/1 tunnels.
//!
//! The record is filled in request order (accept → detect → authorize → route →
//! connect): who called (the peer's verified account), which service, which route and
//! rule, which backend and endpoint, how many tries. [`finish`] turns an error into the
//! response the caller reads (HTTP status with `skein-error`, or a gRPC status), logs the
//! request, and wraps the response body so that the request is recorded in telemetry
//! when the response ends: time to headers, time to the end, bytes each way, and the
//! gRPC status from the trailers.

use crate::error::ProxyError;
use crate::http::{headers, Body};
use crate::metrics::{Direction, Proto};
use crate::telemetry::{Ended, Label, Named, RequestKey, Status, Telemetry};
use crate::Ctx;
use bytes::Bytes;
use http::Response;
use http_body::Frame;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What is known about one request so far.
#[derive(Debug, Clone)]
pub struct Record {
    /// Which side of the proxy.
    pub direction: Direction,
    /// How the client spoke.
    pub protocol: Proto,
    /// Whether it is gRPC (errors go in `grpc-status`).
    pub grpc: bool,
    /// When it arrived.
    pub started: Instant,
    /// Whether the peer proxy was verified by mutual TLS.
    pub tls: bool,
    /// The calling account (outbound: this workload's).
    pub src: Named,
    /// The service called, once known.
    pub dst: Option<Named>,
    /// The HTTPRoute and rule that handled it.
    pub route: Option<(Label, u16)>,
    /// The backend service the rule picked.
    pub backend: Option<Label>,
    /// The peer proxy (outbound) or application address (inbound) of the last try.
    pub endpoint: Option<SocketAddr>,
    /// Tries made.
    pub attempts: u32,
    /// What authorization let through (inbound), for `skein policy suggest` and the
    /// audited counts.
    pub pathway: Option<crate::telemetry::Pathway>,
    /// Method and path, kept only while a tap is in force.
    pub tap: Option<crate::telemetry::tap::Seen>,
    /// Request body bytes read so far (counted only when the request is recorded).
    request_bytes: Option<Arc<AtomicU64>>,
    /// Whether to record it in telemetry (the `telemetry.requests` setting).
    pub recorded: bool,
    /// Its `skein-request-id` ([`crate::ids`]), returned on the response and named in
    /// every error the mesh answers with.
    pub request_id: Option<http::HeaderValue>,
    /// Whether the response carries it back (not to a peer proxy that sent it: that
    /// proxy sets it on the response itself, so the ID crosses the hop once).
    pub id_on_response: bool,
    /// Its trace context and what its span needs ([`crate::spans`]); none for tunnels.
    pub trace: Option<crate::spans::Traced>,
    /// Outbound: each try, for its span and the decision log.
    pub tries: Vec<crate::spans::Try>,
    /// The rule's `retry.attempts`, when it retries.
    pub retry_attempts: Option<u32>,
}

impl Record {
    /// Keeps the request's method and path for taps, when one is in force.
    pub fn for_taps<B>(&mut self, ctx: &Ctx, req: &http::Request<B>) {
        if ctx.metrics.telemetry.taps.on() {
            self.tap = Some(crate::telemetry::tap::Seen {
                method: req.method().as_str().to_string(),
                path: req.uri().path().to_string(),
            });
        }
    }

    /// Where the request body's bytes are counted: a counter when the request is
    /// recorded, none otherwise (nothing allocated).
    pub fn body_counter(&mut self) -> Option<Arc<AtomicU64>> {
        if !self.recorded {
            return None;
        }
        Some(self.request_bytes.get_or_insert_with(Arc::default).clone())
    }

    /// Request body bytes read so far.
    fn body_bytes(&self) -> u64 {
        self.request_bytes
            .as_ref()
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// A request that arrived now.
    pub fn new(direction: Direction, protocol: Proto, grpc: bool, src: Named, tls: bool) -> Self {
        Record {
            direction,
            protocol,
            grpc,
            started: Instant::now(),
            tls,
            src,
            dst: None,
            route: None,
            backend: None,
            endpoint: None,
            attempts: 0,
            pathway: None,
            tap: None,
            request_bytes: None,
            recorded: true,
            request_id: None,
            id_on_response: true,
            trace: None,
            tries: Vec::new(),
            retry_attempts: None,
        }
    }
}

/// What the tries of a retried request (or one whose try ejected its endpoint) were, and
/// the rule's retry setting, in words; empty for one plain try.
fn tries_said(rec: &Record) -> String {
    let ejected = rec.tries.iter().any(|t| t.ejected.is_some());
    if rec.tries.len() < 2 && !ejected {
        return String::new();
    }
    let mut out = String::new();
    if let (Some(attempts), Some((route, rule))) = (rec.retry_attempts, &rec.route) {
        out.push_str(&format!(
            " (HTTPRoute {route} rule {rule} retry.attempts {attempts})"
        ));
    } else if rec.retry_attempts.is_none() && rec.tries.len() > 1 {
        out.push_str(
            " (no route retry: sent again because a try reached no application, or broke before an answer to a request that only reads)",
        );
    }
    for (n, t) in rec.tries.iter().enumerate() {
        out.push_str(if n == 0 { ": " } else { "; " });
        out.push_str(&t.said(n + 1));
    }
    out
}

/// Keeps what happened to a request the mesh failed or retried ([`crate::decisions`]).
fn decide(ctx: &Ctx, rec: &Record, status: u16, reason: &'static str, why: String) {
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ctx.decisions.record(crate::decisions::Decision {
        request_id: rec
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        at_unix_ms,
        direction: rec.direction.as_str(),
        service: rec
            .dst
            .as_ref()
            .map(|d| format!("{}/{}", d.namespace, d.name)),
        route: rec.route.as_ref().map(|r| r.0.to_string()),
        rule: rec.route.as_ref().map(|r| r.1),
        endpoint: rec.endpoint.map(|e| e.to_string()),
        tries: rec.attempts,
        status,
        reason,
        why: crate::decisions::bounded(why, crate::decisions::MAX_WHY),
    });
}

/// A request the framing guard refused before it was parsed (its head too large, its
/// framing ambiguous): counted, logged and kept in the decision log under a request ID
/// made for it, which is returned for its answer to name.
pub(crate) fn refused(ctx: &Ctx, direction: Direction, r: &crate::http::guard::Refusal) -> String {
    ctx.metrics.error(direction, r.reason());
    let id = crate::ids::new_request_id();
    let id = id.to_str().unwrap_or_default().to_string();
    tracing::info!(
        reason = r.reason(),
        direction = direction.as_str(),
        request_id = %id,
        "refused HTTP/1 request: {r}"
    );
    let src = Named {
        namespace: crate::telemetry::empty(),
        name: crate::telemetry::empty(),
    };
    let mut rec = Record::new(direction, Proto::Http1, false, src, false);
    rec.request_id = http::HeaderValue::from_str(&id).ok();
    // A client sending bad heads as fast as it can must not wash the log out.
    if ctx.decisions.allow_refusal() {
        decide(ctx, &rec, r.status(), r.reason(), r.to_string());
    }
    id
}

/// Held while an inbound request waits for the application: dropped before
/// [`Unfinished::finished`] (the caller's proxy reset the stream: its timeout, or its
/// client went away), it records that in [`crate::decisions`], so that `skein why` shows
/// the callee's side too.
pub(crate) struct Unfinished<'a> {
    ctx: &'a Ctx,
    request_id: Option<http::HeaderValue>,
    service: Option<Named>,
    started: Instant,
    finished: bool,
}

impl<'a> Unfinished<'a> {
    /// Watches `rec`'s request.
    pub(crate) fn new(ctx: &'a Ctx, rec: &Record) -> Self {
        Unfinished {
            ctx,
            request_id: rec.request_id.clone(),
            service: rec.dst.clone(),
            started: rec.started,
            finished: false,
        }
    }

    /// The request reached [`finish`].
    pub(crate) fn finished(mut self) {
        self.finished = true;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let waited = self.started.elapsed();
        let src = Named {
            namespace: crate::telemetry::empty(),
            name: crate::telemetry::empty(),
        };
        let mut rec = Record::new(Direction::Inbound, Proto::Http2, false, src, false);
        rec.request_id = self.request_id.take();
        rec.dst = self.service.take();
        rec.attempts = 1;
        let why = format!(
            "the request ended after {} ms, before the application answered: the caller's proxy cancelled it (its timeout, or its client went away), or this proxy closed the connection (draining, a revoked caller)",
            waited.as_millis()
        );
        decide(self.ctx, &rec, 0, "cancelled", why);
    }
}

/// Ends a request: turns an error into its response, logs it, and returns the response
/// with a body that records the request in telemetry when it ends.
pub fn finish(
    ctx: &Ctx,
    rec: Record,
    result: Result<Response<Body>, ProxyError>,
) -> Response<Body> {
    let (resp, error, why) = match result {
        Ok(resp) => {
            // A peer proxy's own error (e.g. its authorization denied the request): the
            // caller's side counts it too, without reading the server's metrics.
            let error = resp
                .headers()
                .get(headers::ERROR)
                .map(|v| ProxyError::reason_of(v.as_bytes()))
                .unwrap_or("");
            if !error.is_empty() {
                ctx.metrics.error(rec.direction, error);
            }
            let ejected = rec.tries.iter().any(|t| t.ejected.is_some());
            if !error.is_empty() || rec.attempts > 1 || ejected {
                // A peer proxy answered for the mesh, or the answer came after retries.
                let status = resp.status().as_u16();
                let tries = tries_said(&rec);
                let why = match (error, rec.attempts) {
                    ("", 1) => format!("{status} from the application{tries}"),
                    ("", n) => format!("{status} from the application after {n} tries{tries}"),
                    (reason, 1) => {
                        // A denial names its policy (`skein-denied-by`), a limit its field.
                        let by = resp
                            .headers()
                            .get(headers::DENIED_BY)
                            .and_then(|v| v.to_str().ok())
                            .map_or(String::new(), |p| format!(" (skein-denied-by: {p})"));
                        format!("{status} from the peer proxy: {reason}{by}{tries}")
                    }
                    (reason, n) => {
                        format!("{status} from the peer proxy: {reason}, after {n} tries{tries}")
                    }
                };
                decide(ctx, &rec, status, error, why.clone());
                (resp, error, Some(why))
            } else {
                (resp, error, None)
            }
        }
        Err(e) => {
            ctx.metrics.error(rec.direction, e.reason());
            ctx.metrics.limit_refusal(rec.direction, &e);
            let id = rec.request_id.as_ref();
            let resp = if rec.grpc {
                e.to_grpc_response(id)
            } else {
                e.to_response(id)
            };
            tracing::debug!(
                direction = rec.direction.as_str(),
                request_id = id.and_then(|v| v.to_str().ok()),
                dst = rec.dst.as_ref().map(|d| &*d.name),
                route = rec.route.as_ref().map(|r| &*r.0),
                endpoint = ?rec.endpoint,
                attempts = rec.attempts,
                error = %e,
                "the mesh answered the request itself"
            );
            let why = match tries_said(&rec) {
                tries if tries.is_empty() => e.explain(),
                tries => format!("{}; after {} tries{tries}", e.explain(), rec.tries.len()),
            };
            decide(ctx, &rec, resp.status().as_u16(), e.reason(), why.clone());
            (resp, e.reason(), Some(why))
        }
    };
    let mut resp = resp;
    if let Some(id) = rec.request_id.as_ref().filter(|_| rec.id_on_response) {
        resp.headers_mut().insert(headers::REQUEST_ID, id.clone());
    }
    let latency = rec.started.elapsed();
    tracing::trace!(
        direction = rec.direction.as_str(),
        status = resp.status().as_u16(),
        dst = rec.dst.as_ref().map(|d| &*d.name),
        backend = rec.backend.as_deref(),
        endpoint = ?rec.endpoint,
        attempts = rec.attempts,
        latency_us = latency.as_micros() as u64,
        "response headers"
    );
    // Whether its spans are recorded is known when the response ends (sampled, or failed
    // by the mesh: its answer, or a body cut short).
    let traced = rec.trace.is_some() && ctx.spans.active();
    if !rec.recorded && !traced {
        return resp;
    }
    let status = resp.status().as_u16();
    // A trailers-only gRPC response carries its status in the headers.
    let grpc_status = rec.grpc.then(|| grpc_status(resp.headers())).flatten();
    let end = End {
        telemetry: ctx.metrics.telemetry.clone(),
        rec,
        latency,
        status,
        grpc_status,
        error,
        response_bytes: 0,
        body_failed: false,
        spans: traced.then(|| (ctx.spans.clone(), why)),
    };
    // A response without a body ends with its headers: recorded now, before the client
    // can see it, and nothing to wrap.
    if http_body::Body::is_end_stream(resp.body()) {
        end.record();
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = Ending {
        inner: body,
        end: Some(end),
    };
    Response::from_parts(parts, crate::http::boxed(body))
}

fn grpc_status(h: &http::HeaderMap) -> Option<u8> {
    std::str::from_utf8(h.get("grpc-status")?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

/// What is recorded when the response ends.
struct End {
    telemetry: Arc<Telemetry>,
    rec: Record,
    latency: std::time::Duration,
    status: u16,
    grpc_status: Option<u8>,
    error: &'static str,
    response_bytes: u64,
    /// The response body ended with an error (cut by a route timeout, the peer reset it).
    body_failed: bool,
    /// Where its spans go, and the mesh's words when it failed it (traced requests).
    spans: Option<(Arc<crate::spans::Spans>, Option<String>)>,
}

impl End {
    fn record(self) {
        let End {
            telemetry,
            rec,
            latency,
            status,
            grpc_status,
            error,
            response_bytes,
            body_failed,
            spans,
        } = self;
        if let (Some((spans, why)), Some(t)) = (spans, &rec.trace) {
            // Sampled, or failed by the mesh (its answer, or a body cut short): recorded
            // whatever the ratio, within the rate for unsampled failures.
            let failed = !error.is_empty() || body_failed;
            let built = 1 + rec.tries.iter().filter(|t| t.span_id != 0).count() as u64;
            if t.ctx.sampled || (failed && spans.allow_forced(built)) {
                let (error, why) = match (error, body_failed) {
                    ("", true) => (
                        "response_body_failed",
                        Some(format!(
                            "the response body ended with an error after {response_bytes} bytes (a route timeout during the body, or the peer reset the stream)"
                        )),
                    ),
                    _ => (error, why),
                };
                let outcome = crate::spans::Outcome {
                    status,
                    grpc_status,
                    error,
                    why,
                    request_bytes: rec.body_bytes(),
                    response_bytes,
                };
                let (now, wall) = (Instant::now(), std::time::SystemTime::now());
                spans.record(crate::spans::build(&rec, t, &outcome, now, wall));
            }
        }
        if !rec.recorded {
            return;
        }
        if let Some(p) = &rec.pathway {
            telemetry.pathway(
                crate::telemetry::PathwayKey {
                    src: rec.src.clone(),
                    port: p.port,
                    method: p.method,
                    prefix: p.prefix.clone(),
                },
                p.audited,
            );
        }
        let duration = rec.started.elapsed();
        let request_bytes = rec.body_bytes();
        if let Some(seen) = &rec.tap {
            let dst = rec.dst.clone().unwrap_or_else(|| Named::new("", "unknown"));
            telemetry.taps.observe(&crate::telemetry::tap::Ended {
                inbound: rec.direction == Direction::Inbound,
                tls: rec.tls,
                src: &rec.src,
                dst: &dst,
                seen,
                status,
                grpc_status,
                latency,
                duration,
                bytes: (rec.body_bytes(), response_bytes),
                route: rec.route.as_ref().map_or("", |r| &r.0),
                error,
            });
        }
        let key = RequestKey {
            direction: rec.direction,
            protocol: rec.protocol,
            tls: rec.tls,
            src: rec.src,
            dst: rec.dst.unwrap_or_else(|| Named::new("", "unknown")),
            route: rec
                .route
                .as_ref()
                .map(|r| r.0.clone())
                .unwrap_or_else(crate::telemetry::empty),
            rule: rec.route.as_ref().map(|r| r.1),
            status: Status::Code(status),
            grpc_status,
            error,
        };
        telemetry.request(
            key,
            Ended {
                latency,
                duration,
                request_bytes,
                response_bytes,
                retries: u64::from(rec.attempts.saturating_sub(1)),
            },
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its request when it ends (or is dropped early, when
    /// the client went away).
    struct Ending<B> {
        #[pin]
        inner: B,
        end: Option<End>,
    }

    impl<B> PinnedDrop for Ending<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(end) = this.project().end.take() {
                end.record();
            }
        }
    }
}

impl<B> http_body::Body for Ending<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let Some(end) = this.end.as_mut() else {
            return polled;
        };
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    end.response_bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    if end.rec.grpc {
                        end.grpc_status = grpc_status(trailers).or(end.grpc_status);
                    }
                }
                // The last frame: recorded before it is handed on, so that a client
                // that has the whole response finds the request counted.
                this.inner.is_end_stream()
            }
            Poll::Ready(Some(Err(_))) => {
                end.body_failed = true;
                true
            }
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        if ended {
            if let Some(end) = this.end.take() {
                end.record();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

//! Spans: what a traced request's record becomes when its response ends, and where it
//! goes.
//!
//! Each request carries a [`Traced`] from its arrival: its trace context
//! ([`crate::trace`]), method and path, and (outbound) one entry per try. [`build`] turns
//! the record into OTLP spans: one per hop and direction (inbound: kind `SERVER`;
//! outbound: kind `INTERNAL`, the logical request) and, outbound, one `CLIENT` span per
//! try, the parent of the callee's inbound span. A span is recorded when its trace is
//! sampled, and when the mesh failed the request (an error it answered, a peer proxy's,
//! a response body cut short) whatever the sampling ratio, up to [`FORCED_PER_SEC`] such
//! requests a second. A request that came without context and was not sampled passes on
//! with its headers untouched ([`Traced::pass_on`]); traces start at the caller's proxy,
//! where requests enter the mesh, never at the callee's ([`Traced::from_peer`]).
//!
//! [`Spans`] hands them on without ever waiting: to the control plane with the next
//! telemetry summary (a buffer of [`MAX_PENDING`]), and, when a collector is set, to a
//! background exporter through a queue of [`EXPORT_QUEUE`] that sends OTLP/gRPC batches
//! of up to [`EXPORT_BATCH`] under [`EXPORT_TIMEOUT`]. A full buffer or queue, a collector
//! that is down or never answers, costs a counted drop (`skein_trace_spans_total`), never
//! a request's time.

use crate::metrics::{Direction, Metrics};
use crate::request::Record;
use crate::telemetry::Named;
use crate::trace;
use skein_api::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use skein_api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use skein_api::otlp::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use skein_api::otlp::resource::v1::Resource;
use skein_api::otlp::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Spans kept for the next summary to the control plane.
pub const MAX_PENDING: usize = 4096;
/// Spans sent with one summary.
pub const MAX_PER_SUMMARY: usize = 1024;
/// Spans waiting for the collector exporter.
pub const EXPORT_QUEUE: usize = 2048;
/// Spans in one OTLP export request.
pub const EXPORT_BATCH: usize = 512;
/// How long one export may take (connecting included) before its spans are dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch that is not full is sent after this long.
pub const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// A request's tracing record.
#[derive(Debug, Clone)]
pub struct Traced {
    /// This hop's span and how its context goes on.
    pub ctx: trace::Context,
    /// The request's method.
    pub method: http::Method,
    /// Its path (the query is never recorded: it may carry secrets).
    pub path: Option<http::uri::PathAndQuery>,
    /// Inbound: what authorization decided and which policy (sampled requests).
    pub authz: Option<(&'static str, String)>,
    /// The route's timeout in force, as its field is written (sampled requests).
    pub timeout: Option<String>,
    /// Whether its context is passed on: it came with one, or this proxy started a
    /// sampled trace. A request that came without context and was not sampled keeps
    /// its headers as they are, so that an application's own tracing decides for it.
    pub pass_on: bool,
}

impl Traced {
    /// A request arriving with `headers`, sampled (if its caller did not decide) at
    /// `ratio`.
    pub fn new<B>(req: &http::Request<B>, ratio: f64) -> Self {
        let incoming = trace::extract(req.headers());
        let ctx = trace::child(&incoming, ratio, crate::ids::random_u128());
        let pass_on = ctx.sampled || matches!(incoming, trace::Incoming::Parent(_));
        Traced::of(req, ctx, pass_on)
    }

    /// `req`'s record with this hop's context `ctx`.
    fn of<B>(req: &http::Request<B>, ctx: trace::Context, pass_on: bool) -> Self {
        Traced {
            pass_on,
            ctx,
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            authz: None,
            timeout: None,
        }
    }

    /// The context a try with span `span_id` passes on: its span, under this hop's.
    pub fn for_try(&self, span_id: u64) -> trace::Context {
        trace::Context {
            span_id,
            parent_span_id: Some(self.ctx.span_id),
            ..self.ctx.clone()
        }
    }

    /// A request from a peer proxy. Traces start where requests enter the mesh, at the
    /// caller's proxy: that proxy passed the context on, or decided not to sample a
    /// trace it started and sent none. So a request without context is not sampled here
    /// and the application is told nothing; should the mesh fail it, its span joins the
    /// caller's proxy's in the trace both derive from the request ID ([`Traced::untraced`]).
    /// A caller's B3 context without a decision is left for the application to decide.
    pub fn from_peer<B>(req: &http::Request<B>, request_id: &[u8], caller: &Named) -> Self {
        let incoming = trace::extract(req.headers());
        let mut ctx = trace::child(&incoming, 0.0, crate::ids::random_u128());
        let pass_on = match &incoming {
            trace::Incoming::Parent(p) => p.sampled.is_some() || p.debug,
            trace::Incoming::Decision(_) => ctx.sampled,
            trace::Incoming::None => {
                let (trace_id, parent) = untraced(request_id, caller);
                ctx.trace_id = trace_id;
                ctx.parent_span_id = Some(parent);
                false
            }
        };
        Traced::of(req, ctx, pass_on)
    }

    /// At the caller's proxy: a trace started here and not sampled takes the IDs the
    /// callee's proxy derives from the request ID and this workload's account, so that
    /// if either proxy records a span (the mesh failed the request) they share a trace.
    pub fn untraced_ids(&mut self, request_id: &[u8], own: &Named) {
        if !self.pass_on {
            let (trace_id, span_id) = untraced(request_id, own);
            self.ctx.trace_id = trace_id;
            self.ctx.span_id = span_id;
        }
    }

    /// Writes this hop's context (`span_id`: a try's span instead) into `headers` for
    /// the next hop, when it is passed on.
    pub fn inject(&self, headers: &mut http::HeaderMap, span_id: Option<u64>) {
        if !self.pass_on {
            return;
        }
        match span_id {
            Some(id) => trace::inject(headers, &self.for_try(id)),
            None => trace::inject(headers, &self.ctx),
        }
    }
}

/// The trace and caller-side span IDs of an untraced request, from its request ID and
/// the calling workload's account (which the callee's proxy reads from its certificate).
fn untraced(request_id: &[u8], caller: &Named) -> (u128, u64) {
    let trace_id = crate::ids::derive(&[b"trace", request_id]);
    let span = crate::ids::derive(&[
        b"span",
        request_id,
        caller.namespace.as_bytes(),
        caller.name.as_bytes(),
    ]);
    (trace_id, (span as u64).max(1))
}

/// One try of an outbound request (kept in its [`Record`], traced or not).
#[derive(Debug, Clone)]
pub struct Try {
    /// Its span (0: the request is not traced).
    pub span_id: u64,
    /// When it was sent.
    pub started: Instant,
    /// When its response headers came, or it failed.
    pub ended: Instant,
    /// The peer proxy it went to.
    pub endpoint: SocketAddr,
    /// That proxy's identity, which its certificate proved at the handshake.
    pub peer: Option<Arc<skein_identity::SpiffeId>>,
    /// The response status (0: none came).
    pub status: u16,
    /// Why it failed, when it did (a `skein-error` reason).
    pub error: &'static str,
    /// When its failure ejected the endpoint: for how long and by which policy.
    pub ejected: Option<String>,
}

impl Try {
    /// The try in words, for the decision log: `try 2 to 127.0.0.3:4143: 503`.
    pub fn said(&self, n: usize) -> String {
        let what = match (self.status, self.error) {
            (0, "") => "no answer".to_string(),
            (0, e) => e.to_string(),
            (s, "") => s.to_string(),
            (s, e) => format!("{s} {e}"),
        };
        match &self.ejected {
            None => format!("try {n} to {}: {what}", self.endpoint),
            Some(ej) => format!("try {n} to {}: {what}; {ej}", self.endpoint),
        }
    }
}

/// How a request ended, for its span.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The status the caller got.
    pub status: u16,
    /// The gRPC status, when there is one.
    pub grpc_status: Option<u8>,
    /// Why the mesh answered itself (a `skein-error` reason); empty: the application did.
    pub error: &'static str,
    /// The mesh's own words about it.
    pub why: Option<String>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// The spans of a request that ended `now` (outbound: its hop span and one per try).
pub fn build(rec: &Record, t: &Traced, out: &Outcome, now: Instant, wall: SystemTime) -> Vec<Span> {
    let unix = |at: Instant| -> u64 {
        let ago = now.saturating_duration_since(at);
        wall.checked_sub(ago)
            .and_then(|w| w.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let trace_id = t.ctx.trace_id.to_be_bytes().to_vec();
    let flags = u32::from(t.ctx.sampled) | 0x100; // W3C flags; bit 8: parent-is-remote known
    let service = rec.dst.as_ref().map_or_else(
        || "unknown".to_string(),
        |d| format!("{}/{}", d.namespace, d.name),
    );
    let short = rec.dst.as_ref().map_or("unknown", |d| &*d.name);
    let inbound = rec.direction == Direction::Inbound;
    let mut attrs = vec![
        text("skein.direction", rec.direction.as_str()),
        text("skein.service", &service),
        text("http.request.method", t.method.as_str()),
        int("http.response.status_code", i64::from(out.status)),
        int("skein.tries", i64::from(rec.attempts)),
        int("http.request.body.size", out.request_bytes as i64),
        int("http.response.body.size", out.response_bytes as i64),
        boolean("skein.mtls", rec.tls),
    ];
    if let Some(p) = &t.path {
        attrs.push(text("url.path", cut(p.path(), MAX_TEXT)));
    }
    if let Some(id) = rec.request_id.as_ref().and_then(|v| v.to_str().ok()) {
        attrs.push(text("skein.request_id", id));
    }
    if inbound {
        // The verified caller (its certificate's account), never what it claimed.
        if !rec.src.name.is_empty() {
            attrs.push(text(
                "skein.caller",
                &format!("{}/{}", rec.src.namespace, rec.src.name),
            ));
        }
    }
    if let Some((route, rule)) = &rec.route {
        attrs.push(text("skein.route", route));
        attrs.push(int("skein.rule", i64::from(*rule)));
    }
    if let Some(backend) = &rec.backend {
        attrs.push(text("skein.backend", backend));
    }
    if let Some(e) = rec.endpoint {
        attrs.push(text("network.peer.address", &e.ip().to_string()));
        attrs.push(int("network.peer.port", i64::from(e.port())));
    }
    if let Some(g) = out.grpc_status {
        attrs.push(int("rpc.grpc.status_code", i64::from(g)));
    }
    if let Some((verdict, policy)) = &t.authz {
        attrs.push(text("skein.authz.decision", verdict));
        attrs.push(text("skein.authz.policy", policy));
    }
    if let Some(timeout) = &t.timeout {
        attrs.push(text("skein.timeout", timeout));
    }
    if !out.error.is_empty() {
        attrs.push(text("skein.error", out.error));
    }
    let failed = !out.error.is_empty() || out.status >= 500 || out.status == 0;
    let status = failed.then(|| Status {
        code: status::StatusCode::Error as i32,
        message: match &out.why {
            Some(why) => cut(why, MAX_TEXT).to_string(),
            None => format!("{} from the application", out.status),
        },
    });
    let kind = if inbound {
        span::SpanKind::Server
    } else {
        span::SpanKind::Internal
    };
    let mut spans = Vec::with_capacity(1 + rec.tries.len());
    spans.push(Span {
        trace_id: trace_id.clone(),
        span_id: t.ctx.span_id.to_be_bytes().to_vec(),
        trace_state: t
            .ctx
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        parent_span_id: t
            .ctx
            .parent_span_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: flags
            | if t.ctx.parent_span_id.is_some() {
                0x200
            } else {
                0
            },
        name: format!("{} {} {short}", rec.direction.as_str(), t.method),
        kind: kind as i32,
        start_time_unix_nano: unix(rec.started),
        end_time_unix_nano: unix(now),
        attributes: attrs,
        status,
        ..Default::default()
    });
    for (n, tr) in rec
        .tries
        .iter()
        .enumerate()
        .filter(|(_, tr)| tr.span_id != 0)
    {
        let mut attrs = vec![
            int("skein.try", n as i64 + 1),
            text("network.peer.address", &tr.endpoint.ip().to_string()),
            int("network.peer.port", i64::from(tr.endpoint.port())),
        ];
        if tr.status != 0 {
            attrs.push(int("http.response.status_code", i64::from(tr.status)));
        }
        if !tr.error.is_empty() {
            attrs.push(text("skein.error", tr.error));
        }
        if let Some(ej) = &tr.ejected {
            attrs.push(text("skein.ejected", ej));
        }
        if let Some(peer) = &tr.peer {
            attrs.push(text("skein.peer", &peer.to_string()));
        }
        let failed = !tr.error.is_empty() || tr.status >= 500 || tr.status == 0;
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: tr.span_id.to_be_bytes().to_vec(),
            parent_span_id: t.ctx.span_id.to_be_bytes().to_vec(),
            flags: flags | 0x100,
            name: format!("try {} {} {short}", n + 1, t.method),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: unix(tr.started),
            end_time_unix_nano: unix(tr.ended),
            attributes: attrs,
            status: failed.then(|| Status {
                code: status::StatusCode::Error as i32,
                message: if tr.error.is_empty() {
                    format!("{} from the peer", tr.status)
                } else {
                    tr.error.to_string()
                },
            }),
            ..Default::default()
        });
    }
    spans
}

/// The longest path or status message a span carries, in bytes.
pub const MAX_TEXT: usize = 512;

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A string attribute.
pub fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn boolean(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(value)),
        }),
        ..Default::default()
    }
}

/// The resource a proxy's spans come from: its workload.
pub fn resource(workload: &skein_model::WorkloadInfo) -> Resource {
    Resource {
        attributes: vec![
            text("service.name", &workload.service),
            text("service.namespace", &workload.namespace),
            text("service.instance.id", &workload.name),
            text("skein.workload", &workload.name),
            text("telemetry.sdk.name", "skein-proxy"),
            text("telemetry.sdk.language", "rust"),
            text("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

/// Where a proxy's spans go: the control plane's buffer and the collector's queue.
pub struct Spans {
    /// Set while a control plane takes summaries (a standalone proxy keeps none).
    to_control: AtomicBool,
    pending: Mutex<Pending>,
    dropped: AtomicU64,
    /// The collector in force (`None`: no exporter sends).
    collector: tokio::sync::watch::Sender<Option<String>>,
    /// Whether a collector is set (read on the request path without the watch's lock).
    exporting: AtomicBool,
    exporter: OnceLock<tokio::sync::mpsc::Sender<Span>>,
    /// Spans of unsampled requests the mesh failed, recorded at most [`FORCED_PER_SEC`]
    /// a second (a burst of twice that): a failure storm must not cost the proxy more.
    forced: Mutex<(f64, Instant)>,
    resource: Resource,
    metrics: Arc<Metrics>,
}

/// Spans waiting for the next summary, and their encoded size.
#[derive(Default)]
struct Pending {
    spans: Vec<Span>,
    bytes: usize,
}

/// Encoded bytes of spans kept for the control plane at most.
pub const MAX_PENDING_BYTES: usize = 4 << 20;
/// Encoded bytes of spans in one summary, or one export to a collector, at most (well
/// under gRPC's usual 4 MiB message limit).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Unsampled failed requests whose spans are recorded per second, at most.
pub const FORCED_PER_SEC: f64 = 50.0;

impl Spans {
    /// Spans of `workload`'s proxy, counted in `metrics`.
    pub fn new(workload: &skein_model::WorkloadInfo, metrics: Arc<Metrics>) -> Self {
        Spans {
            to_control: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            dropped: AtomicU64::new(0),
            collector: tokio::sync::watch::Sender::new(None),
            exporting: AtomicBool::new(false),
            exporter: OnceLock::new(),
            forced: Mutex::new((2.0 * FORCED_PER_SEC, Instant::now())),
            resource: resource(workload),
            metrics,
        }
    }

    /// Applies the tracing settings in force (the collector to export to).
    pub fn configure(&self, spec: &skein_model::TracingSpec) {
        self.exporting
            .store(spec.collector.is_some(), Ordering::Relaxed);
        self.collector.send_if_modified(|c| {
            if *c == spec.collector {
                return false;
            }
            c.clone_from(&spec.collector);
            true
        });
    }

    /// A control plane takes this proxy's spans from now on.
    pub fn send_to_control_plane(&self) {
        self.to_control.store(true, Ordering::Relaxed);
    }

    /// Whether spans go anywhere (a control plane or a collector): if not, none is built.
    pub fn active(&self) -> bool {
        self.to_control.load(Ordering::Relaxed) || self.exporting.load(Ordering::Relaxed)
    }

    /// Whether the `spans` spans of one more unsampled failed request may be recorded
    /// now; a refusal is counted (as spans).
    pub fn allow_forced(&self, spans: u64) -> bool {
        let mut f = self.forced.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.saturating_duration_since(f.1).as_secs_f64() * FORCED_PER_SEC;
        f.0 = (f.0 + refill).min(2.0 * FORCED_PER_SEC);
        f.1 = now;
        if f.0 >= 1.0 {
            f.0 -= 1.0;
            return true;
        }
        drop(f);
        self.metrics.spans("any", "dropped_rate_limited", spans);
        false
    }

    /// Hands `spans` on; never waits.
    pub fn record(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if self.exporting.load(Ordering::Relaxed) {
            match self.exporter() {
                Some(tx) => {
                    let full = spans
                        .iter()
                        .filter(|s| tx.try_send((*s).clone()).is_err())
                        .count() as u64;
                    if full > 0 {
                        self.metrics.spans("collector", "dropped_full", full);
                    }
                }
                None => self.metrics.spans("collector", "dropped_unsent", n),
            }
        }
        if !self.to_control.load(Ordering::Relaxed) {
            return;
        }
        let mut kept = 0u64;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for span in spans {
            let size = prost::Message::encoded_len(&span);
            if pending.spans.len() >= MAX_PENDING || pending.bytes + size > MAX_PENDING_BYTES {
                break;
            }
            pending.bytes += size;
            pending.spans.push(span);
            kept += 1;
        }
        drop(pending);
        if kept < n {
            self.dropped.fetch_add(n - kept, Ordering::Relaxed);
            self.metrics
                .spans("control_plane", "dropped_full", n - kept);
        }
    }

    /// Up to [`MAX_PER_SUMMARY`] spans of at most [`MAX_BATCH_BYTES`] for the next
    /// summary, and how many were dropped so far.
    pub fn take_for_summary(&self) -> (Vec<Span>, u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (mut n, mut bytes) = (0, 0);
        for s in pending.spans.iter().take(MAX_PER_SUMMARY) {
            let size = prost::Message::encoded_len(s);
            if n > 0 && bytes + size > MAX_BATCH_BYTES {
                break;
            }
            bytes += size;
            n += 1;
        }
        let taken: Vec<Span> = pending.spans.drain(..n).collect();
        pending.bytes = pending.bytes.saturating_sub(bytes);
        // The room a burst of spans took goes once they are sent.
        let (len, room) = (pending.spans.len(), pending.spans.capacity());
        if room > 64 && len < room / 4 {
            pending.spans.shrink_to(len * 2);
        }
        drop(pending);
        if !taken.is_empty() {
            self.metrics
                .spans("control_plane", "sent", taken.len() as u64);
        }
        (taken, self.dropped.load(Ordering::Relaxed))
    }

    /// The exporter's queue, started on first use (inside the runtime).
    fn exporter(&self) -> Option<&tokio::sync::mpsc::Sender<Span>> {
        if let Some(tx) = self.exporter.get() {
            return Some(tx);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.exporter.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_QUEUE);
            runtime.spawn(export(
                rx,
                self.collector.subscribe(),
                self.resource.clone(),
                self.metrics.clone(),
            ));
            tx
        }))
    }
}

/// The exporter: batches spans from `rx` and sends each batch to the collector in force,
/// one at a time; a batch that fails or takes longer than [`EXPORT_TIMEOUT`] is dropped
/// and counted. Ends when the proxy (every sender) is gone.
async fn export(
    mut rx: tokio::sync::mpsc::Receiver<Span>,
    collector: tokio::sync::watch::Receiver<Option<String>>,
    resource: Resource,
    metrics: Arc<Metrics>,
) {
    let mut client: Option<(String, TraceServiceClient<tonic::transport::Channel>)> = None;
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = prost::Message::encoded_len(&first);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_AFTER;
        while batch.len() < EXPORT_BATCH && bytes < MAX_BATCH_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => {
                    bytes += prost::Message::encoded_len(&s);
                    batch.push(s);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let Some(url) = collector.borrow().clone() else {
            // The collector was unset while these waited.
            metrics.spans("collector", "dropped_unsent", n);
            batch.clear();
            continue;
        };
        if client.as_ref().is_none_or(|(u, _)| *u != url) {
            client = tonic::transport::Endpoint::from_shared(url.clone())
                .ok()
                .map(|e| {
                    e.connect_timeout(EXPORT_TIMEOUT)
                        .timeout(EXPORT_TIMEOUT)
                        .connect_lazy()
                })
                .map(|ch| (url.clone(), TraceServiceClient::new(ch)));
        }
        let Some((_, c)) = client.as_mut() else {
            metrics.spans("collector", "dropped_failed", n);
            batch.clear();
            continue;
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "skein-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: std::mem::take(&mut batch),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, c.export(request)).await {
            Ok(Ok(_)) => metrics.spans("collector", "sent", n),
            Ok(Err(status)) => {
                metrics.spans("collector", "dropped_failed", n);
                tracing::debug!(collector = %url, error = %status, "span export failed");
            }
            Err(_) => {
                metrics.spans("collector", "dropped_failed", n);
                tracing::debug!(collector = %url, "span export timed out");
            }
        }
        batch = Vec::with_capacity(EXPORT_BATCH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Proto;
    use crate::telemetry::Named;

    fn traced(headers: &[(&str, &str)]) -> Traced {
        let mut req = http::Request::get("/menu/1?secret=x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Traced::new(&req.body(()).unwrap(), 0.0)
    }

    fn workload() -> skein_model::WorkloadInfo {
        skein_model::WorkloadInfo {
            name: "web-1".into(),
            service: "web".into(),
            namespace: "default".into(),
            labels: Default::default(),
        }
    }

    fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn an_outbound_request_is_a_hop_span_with_one_child_per_try() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut t = traced(&[("traceparent", tp)]);
        let mut rec = Record::new(
            Direction::Outbound,
            Proto::Http1,
            false,
            Named::new("default", "web"),
            true,
        );
        rec.dst = Some(Named::new("default", "api"));
        rec.route = Some(("default/api".into(), 1));
        rec.attempts = 2;
        rec.request_id = Some(http::HeaderValue::from_static("r-1"));
        let start = rec.started;
        let addr: SocketAddr = "127.0.0.2:4143".parse().unwrap();
        for (n, status) in [(1u64, 503u16), (2, 200)] {
            rec.tries.push(Try {
                span_id: 100 + n,
                started: start + Duration::from_millis(n),
                ended: start + Duration::from_millis(n + 1),
                endpoint: addr,
                peer: None,
                status,
                error: "",
                ejected: None,
            });
        }
        t.timeout = Some("timeouts.request 500ms".into());
        let now = start + Duration::from_millis(5);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let out = Outcome {
            status: 200,
            ..Default::default()
        };
        let spans = build(&rec, &t, &out, now, wall);
        assert_eq!(spans.len(), 3);
        let hop = &spans[0];
        assert_eq!(hop.name, "outbound GET api");
        assert_eq!(hop.kind, span::SpanKind::Internal as i32);
        assert_eq!(
            hop.trace_id,
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128.to_be_bytes()
        );
        assert_eq!(hop.parent_span_id, 0x00f0_67aa_0ba9_02b7u64.to_be_bytes());
        assert_eq!(hop.end_time_unix_nano, 1_000_000_000_000);
        assert_eq!(hop.start_time_unix_nano, 1_000_000_000_000 - 5_000_000);
        assert!(hop.status.is_none(), "a 200 after a retry is no error");
        assert_eq!(
            attr(hop, "url.path"),
            Some(&any_value::Value::StringValue("/menu/1".into())),
            "never the query"
        );
        assert_eq!(
            attr(hop, "skein.tries"),
            Some(&any_value::Value::IntValue(2))
        );
        assert_eq!(
            attr(hop, "skein.timeout"),
            Some(&any_value::Value::StringValue(
                "timeouts.request 500ms".into()
            ))
        );
        assert_eq!(
            attr(hop, "skein.rule"),
            Some(&any_value::Value::IntValue(1))
        );
        let (first, second) = (&spans[1], &spans[2]);
        assert_eq!(first.parent_span_id, hop.span_id);
        assert_eq!(first.span_id, 101u64.to_be_bytes());
        assert_eq!(first.kind, span::SpanKind::Client as i32);
        assert_eq!(
            first.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        assert!(second.status.is_none());
        assert_eq!(
            second.start_time_unix_nano,
            hop.start_time_unix_nano + 2_000_000
        );
        // The context each try passes on names the try as the parent.
        let ctx = t.for_try(101);
        assert_eq!(
            (ctx.span_id, ctx.parent_span_id),
            (101, Some(t.ctx.span_id))
        );
    }

    #[test]
    fn a_request_the_mesh_failed_is_an_error_span_saying_why() {
        let t = traced(&[]);
        let mut rec = Record::new(
            Direction::Inbound,
            Proto::Http2,
            true,
            Named::new("default", "frontend"),
            true,
        );
        rec.dst = Some(Named::new("default", "api"));
        let out = Outcome {
            status: 403,
            grpc_status: Some(7),
            error: "denied",
            why: Some("denied by AuthorizationPolicy default/api".into()),
            ..Default::default()
        };
        let now = Instant::now();
        let spans = build(&rec, &t, &out, now, SystemTime::now());
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert!(s.parent_span_id.is_empty(), "a new trace's root");
        let status = s.status.as_ref().unwrap();
        assert_eq!(status.message, "denied by AuthorizationPolicy default/api");
        assert_eq!(
            attr(s, "skein.error"),
            Some(&any_value::Value::StringValue("denied".into()))
        );
        assert_eq!(
            attr(s, "rpc.grpc.status_code"),
            Some(&any_value::Value::IntValue(7))
        );
        assert_eq!(
            attr(s, "skein.caller"),
            Some(&any_value::Value::StringValue("default/frontend".into()))
        );
    }

    #[test]
    fn spans_wait_in_a_bounded_buffer_and_overflow_is_counted() {
        let workload = workload();
        let metrics = Arc::new(Metrics::new());
        let spans = Spans::new(&workload, metrics.clone());
        spans.record(vec![Span::default()]);
        assert_eq!(
            spans.take_for_summary().0.len(),
            0,
            "no control plane: nothing kept"
        );
        spans.send_to_control_plane();
        spans.record(vec![Span::default(); MAX_PENDING + 10]);
        let (first, dropped) = spans.take_for_summary();
        assert_eq!((first.len(), dropped), (MAX_PER_SUMMARY, 10));
        while !spans.take_for_summary().0.is_empty() {}
        let room = spans.pending.lock().unwrap().spans.capacity();
        assert!(room <= 64, "the burst's room went: {room}");
        let text = metrics.encode();
        assert!(
            text.contains(
                "skein_trace_spans_total{destination=\"control_plane\",result=\"dropped_full\"} 10"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_new_unsampled_trace_leaves_the_headers_as_they_came() {
        let mut h = http::HeaderMap::new();
        let unsampled = Traced::new(&http::Request::get("/").body(()).unwrap(), 0.0);
        unsampled.inject(&mut h, None);
        assert!(h.is_empty(), "the application's own tracing decides: {h:?}");
        unsampled.inject(&mut h, Some(7));
        assert!(h.is_empty(), "nor the peer proxy's: {h:?}");
        // The callee's proxy starts no trace: the caller's proxy decided.
        let web = Named::new("default", "web");
        let callee = Traced::from_peer(&http::Request::get("/").body(()).unwrap(), b"r", &web);
        assert!(!callee.ctx.sampled && !callee.pass_on);
        let mut h = http::HeaderMap::new();
        let sampled = Traced::new(&http::Request::get("/").body(()).unwrap(), 1.0);
        sampled.inject(&mut h, Some(7));
        let tp = h["traceparent"].to_str().unwrap().to_string();
        assert!(tp.ends_with("-0000000000000007-01"), "{tp}");
        assert!(h["traceparent"].is_sensitive(), "never indexed by HPACK");
        // A caller's context goes on even when it says "not sampled".
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let theirs = traced(&[("traceparent", tp)]);
        let mut h = http::HeaderMap::new();
        theirs.inject(&mut h, None);
        let sent = h["traceparent"].to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-00"));
        assert_ne!(sent, tp, "under this proxy's span");
    }

    #[test]
    fn spans_are_bounded_by_bytes_and_unsampled_failures_by_rate() {
        let workload = workload();
        let metrics = Arc::new(Metrics::new());
        let spans = Spans::new(&workload, metrics.clone());
        assert!(
            !spans.active(),
            "no control plane, no collector: nothing is built"
        );
        spans.send_to_control_plane();
        assert!(spans.active());
        let big = Span {
            name: "x".repeat(64 << 10),
            ..Default::default()
        };
        spans.record(vec![big; 100]);
        let (taken, dropped) = spans.take_for_summary();
        // 4 MiB kept of 6.4; a summary takes at most 1 MiB.
        assert_eq!(
            dropped,
            100 - (MAX_PENDING_BYTES / (64 << 10) - 1) as u64,
            "{dropped}"
        );
        let bytes: usize = taken.iter().map(prost::Message::encoded_len).sum();
        assert!(bytes <= MAX_BATCH_BYTES && !taken.is_empty(), "{bytes}");
        let allowed = (0..1000).filter(|_| spans.allow_forced(1)).count();
        assert!(
            (2 * FORCED_PER_SEC as usize..2 * FORCED_PER_SEC as usize + 10).contains(&allowed),
            "a burst, then the rate: {allowed}"
        );
        assert!(metrics.encode().contains("result=\"dropped_rate_limited\""));
    }

    #[test]
    fn long_paths_and_messages_are_cut() {
        let path = format!("/{}", "a".repeat(4000));
        let req = http::Request::get(&*path).body(()).unwrap();
        let t = Traced::new(&req, 1.0);
        let rec = Record::new(
            Direction::Inbound,
            Proto::Http1,
            false,
            Named::new("default", "web"),
            true,
        );
        let out = Outcome {
            status: 502,
            error: "connect",
            why: Some("é".repeat(2000)),
            ..Default::default()
        };
        let s = &build(&rec, &t, &out, Instant::now(), SystemTime::now())[0];
        let Some(any_value::Value::StringValue(p)) = attr(s, "url.path") else {
            panic!()
        };
        assert_eq!(p.len(), MAX_TEXT);
        assert!(s.status.as_ref().unwrap().message.len() <= MAX_TEXT);
    }

    #[test]
    fn an_untraced_requests_two_proxies_derive_one_trace_from_its_request_id() {
        let client = Named::new("default", "web");
        let mut caller = Traced::new(&http::Request::get("/").body(()).unwrap(), 0.0);
        caller.untraced_ids(b"r-42", &client);
        let callee =
            Traced::from_peer(&http::Request::get("/").body(()).unwrap(), b"r-42", &client);
        assert_eq!(callee.ctx.trace_id, caller.ctx.trace_id);
        assert_eq!(callee.ctx.parent_span_id, Some(caller.ctx.span_id));
        assert!(!callee.pass_on && !callee.ctx.sampled);
        // Another request, or another caller: another trace or another parent.
        let other = Traced::from_peer(&http::Request::get("/").body(()).unwrap(), b"r-43", &client);
        assert_ne!(other.ctx.trace_id, caller.ctx.trace_id);
        let someone = Named::new("default", "admin");
        let other = Traced::from_peer(
            &http::Request::get("/").body(()).unwrap(),
            b"r-42",
            &someone,
        );
        assert_ne!(other.ctx.parent_span_id, Some(caller.ctx.span_id));
        // A sampled trace keeps its random IDs.
        let mut sampled = Traced::new(&http::Request::get("/").body(()).unwrap(), 1.0);
        let before = (sampled.ctx.trace_id, sampled.ctx.span_id);
        sampled.untraced_ids(b"r-42", &client);
        assert_eq!((sampled.ctx.trace_id, sampled.ctx.span_id), before);
    }

    #[test]
    fn a_b3_context_without_a_decision_is_left_to_the_application() {
        let req = http::Request::get("/")
            .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")
            .body(())
            .unwrap();
        let callee = Traced::from_peer(&req, b"r", &Named::new("default", "web"));
        assert!(!callee.pass_on);
        let req = http::Request::get("/")
            .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0")
            .body(())
            .unwrap();
        assert!(Traced::from_peer(&req, b"r", &Named::new("default", "web")).pass_on);
    }
}

//! Golden signals: per-request and per-TCP-edge series, labelled by who called whom, kept
//! in memory with a fixed ceiling and exposed on `/metrics` (see `docs/telemetry.md` for
//! every name and label).
//!
//! A request is recorded once, when its response ends, by [`crate::request`]: a count,
//! the time to response headers and to the end of the response, and body bytes each way.
//! An opaque TCP connection is recorded when it opens and when it closes.
//!
//! Cardinality is bounded. Paths are never labels. Each kind of label value (accounts,
//! services, routes) admits [`MAX_VALUES`] distinct values; later ones read `other`.
//! Past [`MAX_SERIES`] series, a new label set keeps only its direction, protocol, TLS
//! and status class and reads `other` everywhere else. Every request recorded under a
//! folded label set is counted in `skein_telemetry_folded_requests_total`.
//!
//! Nothing is kept for the proxy's life: [`Telemetry::sweep`] lets go of series that
//! recorded nothing for `telemetry.idleSeries`, and of the label values only they used,
//! so a proxy that called thousands of Services over a week holds series for those it
//! calls now, and a new Service gets its own label rather than `other`.

pub mod histogram;
pub mod summary;
pub mod tap;

use crate::metrics::{Direction, Proto};
use foldhash::{HashMap, HashSet};
use histogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// A label value, shared rather than copied per request.
pub type Label = Arc<str>;

/// The empty label value (no route, no prefix), shared so that recording a request
/// without one allocates nothing.
pub fn empty() -> Label {
    static EMPTY: std::sync::LazyLock<Label> = std::sync::LazyLock::new(|| "".into());
    EMPTY.clone()
}

/// Distinct values admitted per kind of label (accounts, services, routes).
pub const MAX_VALUES: usize = 256;

/// Request series kept at most; TCP edge series likewise.
pub const MAX_SERIES: usize = 2048;

/// The value excess or unknown label values fold into.
pub const OTHER: &str = "other";

/// A namespaced name: a service account or a service.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Named {
    /// Its namespace.
    pub namespace: Label,
    /// Its name.
    pub name: Label,
}

impl Named {
    /// `namespace`/`name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Named {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn other() -> Self {
        Named::new(OTHER, OTHER)
    }

    /// What an unauthenticated caller is recorded as.
    pub fn unauthenticated() -> Self {
        Named::new("", "unauthenticated")
    }
}

/// The status a request ended with, as labelled.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Status {
    /// The HTTP status code.
    Code(u16),
    /// Only the class (`5xx`), once the series limit is reached.
    Class(u8),
}

impl Status {
    fn label(&self) -> String {
        match self {
            Status::Code(c) => c.to_string(),
            Status::Class(c) => format!("{c}xx"),
        }
    }
}

/// Labels of one request series.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RequestKey {
    /// Which side of the proxy.
    pub direction: Direction,
    /// How the client spoke.
    pub protocol: Proto,
    /// Whether the peer proxy was verified by mutual TLS.
    pub tls: bool,
    /// The caller's service account (outbound: this workload's).
    pub src: Named,
    /// The service called (inbound: this workload's).
    pub dst: Named,
    /// The HTTPRoute (`namespace/name`) that handled it, or empty.
    pub route: Label,
    /// The rule's index in the route, when a route handled it.
    pub rule: Option<u16>,
    /// The response status.
    pub status: Status,
    /// The gRPC status, for gRPC requests that ended with one.
    pub grpc_status: Option<u8>,
    /// Why the mesh answered the request itself (`skein-error`), or empty.
    pub error: &'static str,
}

/// Labels of one TCP edge series.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct TcpKey {
    /// Which side of the proxy.
    pub direction: Direction,
    /// Whether the peer proxy was verified by mutual TLS.
    pub tls: bool,
    /// The caller's service account.
    pub src: Named,
    /// The service called.
    pub dst: Named,
}

/// Whether a series moved, as [`Telemetry::sweep`] sees it: the activity (a count that
/// only grows) it read at its previous look, and since when that has not changed, on the
/// sweeper's clock. Recording never touches it.
#[derive(Debug, Default)]
pub struct Quiet {
    seen: AtomicU64,
    since_ms: AtomicU64,
}

impl Quiet {
    /// How long `activity` has stood still at `now_ms`; 0 when it moved since last look.
    pub(crate) fn still_for(&self, activity: u64, now_ms: u64) -> u64 {
        if self.seen.swap(activity, Ordering::Relaxed) != activity {
            self.since_ms.store(now_ms, Ordering::Relaxed);
            return 0;
        }
        now_ms.saturating_sub(self.since_ms.load(Ordering::Relaxed))
    }
}

/// The values of one request series.
#[derive(Debug, Default)]
pub struct RequestSeries {
    /// Requests ended.
    pub count: AtomicU64,
    /// Tries beyond the first (route retries).
    pub retries: AtomicU64,
    /// Time from the request's arrival to the response headers.
    pub latency: Histogram,
    /// Time from the request's arrival to the end of the response.
    pub duration: Histogram,
    /// Request body bytes.
    pub request_bytes: AtomicU64,
    /// Response body bytes.
    pub response_bytes: AtomicU64,
    quiet: Quiet,
}

/// What one request came to, recorded into its series.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// Time to response headers.
    pub latency: Duration,
    /// Time to the end of the response.
    pub duration: Duration,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Tries beyond the first.
    pub retries: u64,
}

/// One pathway into this workload: who called which port, with which method, under
/// which path prefix (the first segment: `/menu/*`, an exact one-segment path, or `/`).
/// Recorded for requests and tunnels authorization let through, for `skein policy
/// suggest`. TCP tunnels have an empty method and prefix.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PathwayKey {
    /// The caller's account (verified).
    pub src: Named,
    /// The application port.
    pub port: u16,
    /// The method (`*` for one outside the standard ones), or empty for TCP.
    pub method: &'static str,
    /// The path prefix, or empty for TCP.
    pub prefix: Label,
}

/// The pathway one request took, kept on its record until it ends.
#[derive(Debug, Clone)]
pub struct Pathway {
    /// The application port.
    pub port: u16,
    /// As [`pathway_method`] records it.
    pub method: &'static str,
    /// As [`path_prefix`] records it.
    pub prefix: Label,
    /// Authorization let it through only because it is auditing.
    pub audited: bool,
}

/// Pathways kept at most; past it, new ones lose their prefix (`/*`), then their caller.
pub const MAX_PATHWAYS: usize = 512;

/// The prefix a request path is recorded under: `/` for the root, the path itself when it
/// has one segment, else its first segment as a prefix (`/menu/*`). Segments over 64
/// bytes read `/*`.
pub fn path_prefix(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return "/".into();
    }
    let (first, more) = match rest.split_once('/') {
        Some((first, _)) => (first, true),
        None => (rest, false),
    };
    if first.len() > 64 || first.contains('*') {
        return "/*".into();
    }
    if more {
        format!("/{first}/*")
    } else {
        format!("/{first}")
    }
}

/// The method as a pathway records it.
pub fn pathway_method(m: &http::Method) -> &'static str {
    const KNOWN: [&str; 8] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
    ];
    KNOWN.into_iter().find(|k| m.as_str() == *k).unwrap_or("*")
}

/// The values of one TCP edge series.
#[derive(Debug, Default)]
pub struct TcpSeries {
    /// Connections opened.
    pub opened: AtomicU64,
    /// Connections closed.
    pub closed: AtomicU64,
    /// Bytes from client to server (added when a connection closes).
    pub sent: AtomicU64,
    /// Bytes from server to client (added when a connection closes).
    pub received: AtomicU64,
    /// How long connections lasted.
    pub duration: Histogram,
    quiet: Quiet,
}

/// The counts of one pathway. Each request or tunnel adds to exactly one of them, so a
/// summary's delta of their sum is never below its delta of `audited`, however the two
/// reads interleave with requests.
#[derive(Debug, Default)]
pub struct PathwaySeries {
    /// Requests and tunnels along it that authorization allowed.
    pub allowed: AtomicU64,
    /// Those it let through only because it is auditing: a `deny` default or an `audit`
    /// policy would have refused them (would-be denials).
    pub audited: AtomicU64,
    quiet: Quiet,
}

impl PathwaySeries {
    /// Requests and tunnels along it, allowed or audited.
    pub fn count(&self) -> u64 {
        let allowed = self.allowed.load(Ordering::Relaxed);
        allowed.wrapping_add(self.audited.load(Ordering::Relaxed))
    }
}

/// Every series of one proxy.
#[derive(Debug, Default)]
pub struct Telemetry {
    requests: RwLock<HashMap<RequestKey, Arc<RequestSeries>>>,
    tcp: RwLock<HashMap<TcpKey, Arc<TcpSeries>>>,
    pathways: RwLock<HashMap<PathwayKey, Arc<PathwaySeries>>>,
    /// Live taps.
    pub taps: tap::Taps,
    admitted: Mutex<Admitted>,
    folded: AtomicU64,
    evicted: AtomicU64,
}

/// The label values admitted so far, per kind.
#[derive(Debug, Default)]
struct Admitted {
    accounts: HashSet<Named>,
    services: HashSet<Named>,
    routes: HashSet<Label>,
}

impl Admitted {
    fn named(set: &mut HashSet<Named>, n: &Named) -> Option<Named> {
        if set.contains(n) || set.len() < MAX_VALUES && set.insert(n.clone()) {
            return None;
        }
        Some(Named::other())
    }

    /// The values the series left after a sweep use (`other` is not a value).
    fn used_by<'a>(
        requests: impl Iterator<Item = &'a RequestKey>,
        tcp: impl Iterator<Item = &'a TcpKey>,
    ) -> Admitted {
        let mut used = Admitted::default();
        let other = Named::other();
        let mut pair = |src: &Named, dst: &Named| {
            if *src != other {
                used.accounts.insert(src.clone());
            }
            if *dst != other {
                used.services.insert(dst.clone());
            }
        };
        let mut routes = HashSet::default();
        for k in requests {
            pair(&k.src, &k.dst);
            if !k.route.is_empty() && &*k.route != OTHER {
                routes.insert(k.route.clone());
            }
        }
        for k in tcp {
            pair(&k.src, &k.dst);
        }
        used.routes = routes;
        used
    }
}

impl Telemetry {
    /// Records one ended request.
    pub fn request(&self, key: RequestKey, ended: Ended) {
        let series = self.request_series(key);
        series.count.fetch_add(1, Ordering::Relaxed);
        if ended.retries > 0 {
            series.retries.fetch_add(ended.retries, Ordering::Relaxed);
        }
        series.latency.record(ended.latency);
        series.duration.record(ended.duration);
        series
            .request_bytes
            .fetch_add(ended.request_bytes, Ordering::Relaxed);
        series
            .response_bytes
            .fetch_add(ended.response_bytes, Ordering::Relaxed);
    }

    /// The series for `key`, or the folded one it falls into.
    fn request_series(&self, key: RequestKey) -> Arc<RequestSeries> {
        if let Some(s) = read(&self.requests).get(&key) {
            return s.clone();
        }
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        let mut series = self.requests.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = series.get(&key) {
            return s.clone();
        }
        let mut key = key;
        let mut folded = false;
        if let Some(o) = Admitted::named(&mut admitted.accounts, &key.src) {
            (key.src, folded) = (o, true);
        }
        if let Some(o) = Admitted::named(&mut admitted.services, &key.dst) {
            (key.dst, folded) = (o, true);
        }
        if !key.route.is_empty()
            && !admitted.routes.contains(&key.route)
            && (admitted.routes.len() >= MAX_VALUES || !admitted.routes.insert(key.route.clone()))
        {
            (key.route, key.rule, folded) = (OTHER.into(), None, true);
        }
        if series.len() >= MAX_SERIES && !series.contains_key(&key) {
            key = RequestKey {
                src: Named::other(),
                dst: Named::other(),
                route: OTHER.into(),
                rule: None,
                status: match key.status {
                    Status::Code(c) => Status::Class((c / 100).min(9) as u8),
                    class => class,
                },
                grpc_status: None,
                error: "",
                ..key
            };
            folded = true;
        }
        if folded {
            self.folded.fetch_add(1, Ordering::Relaxed);
        }
        series.entry(key).or_default().clone()
    }

    /// Records a TCP edge's connection opening; the returned guard records its close.
    pub fn tcp_open(self: &Arc<Self>, key: TcpKey) -> TcpEdge {
        let series = self.tcp_series(key);
        series.opened.fetch_add(1, Ordering::Relaxed);
        TcpEdge {
            series,
            opened: std::time::Instant::now(),
            bytes: (0, 0),
        }
    }

    fn tcp_series(&self, key: TcpKey) -> Arc<TcpSeries> {
        if let Some(s) = read(&self.tcp).get(&key) {
            return s.clone();
        }
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        let mut series = self.tcp.write().unwrap_or_else(|p| p.into_inner());
        let mut key = key;
        if let Some(o) = Admitted::named(&mut admitted.accounts, &key.src) {
            key.src = o;
        }
        if let Some(o) = Admitted::named(&mut admitted.services, &key.dst) {
            key.dst = o;
        }
        if series.len() >= MAX_SERIES && !series.contains_key(&key) {
            key.src = Named::other();
            key.dst = Named::other();
        }
        series.entry(key).or_default().clone()
    }

    /// Counts one request or tunnel along `key`; `audited`: authorization let it through
    /// only because it is auditing.
    pub fn pathway(&self, key: PathwayKey, audited: bool) {
        let count = |s: &PathwaySeries| {
            let counter = if audited { &s.audited } else { &s.allowed };
            counter.fetch_add(1, Ordering::Relaxed);
        };
        // Counted under the lock, so a sweep (which takes it to write) never loses one.
        if let Some(s) = read(&self.pathways).get(&key) {
            count(s);
            return;
        }
        let mut pathways = self.pathways.write().unwrap_or_else(|p| p.into_inner());
        let mut key = key;
        if pathways.len() >= MAX_PATHWAYS && !pathways.contains_key(&key) && !key.method.is_empty()
        {
            key.prefix = "/*".into();
        }
        if pathways.len() >= MAX_PATHWAYS && !pathways.contains_key(&key) {
            key.src = Named::other();
        }
        count(pathways.entry(key).or_default());
    }

    /// Every pathway with its count.
    pub fn pathways_now(&self) -> Vec<(PathwayKey, Arc<PathwaySeries>)> {
        read(&self.pathways)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Lets go of every series that recorded nothing for `idle` and that nothing holds (an
    /// open TCP connection holds its edge's series; a request being recorded, its own),
    /// then of the label values no series left uses, so they can be admitted again.
    /// `now` is the sweeper's clock, which only has to move forward; a series is judged
    /// idle from the first sweep that saw it unchanged, so call this every fraction of
    /// `idle`. Returns how many series went.
    ///
    /// A series that comes back starts again from zero: Prometheus reads that as a new
    /// series, and summaries for the control plane tell the two apart.
    pub fn sweep(&self, now: Duration, idle: Duration) -> usize {
        let (now, idle) = (now.as_millis() as u64, idle.as_millis() as u64);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Whether nothing but the map holds a series, read before its counts: under the
        // write lock no one can take it anew, and the fence orders the counts after the
        // release of the last holder's reference, so whatever it recorded is seen (and
        // counts as activity) rather than evicted with the series.
        let free = |n: usize| {
            let free = n == 1;
            std::sync::atomic::fence(Ordering::Acquire);
            free
        };
        let idle_request = |s: &Arc<RequestSeries>| {
            let free = free(Arc::strong_count(s));
            s.quiet.still_for(load(&s.count), now) >= idle && free
        };
        let idle_tcp = |s: &Arc<TcpSeries>| {
            let free = free(Arc::strong_count(s));
            let activity = load(&s.opened).wrapping_add(load(&s.closed));
            s.quiet.still_for(activity, now) >= idle && free
        };
        let idle_pathway = |s: &Arc<PathwaySeries>| s.quiet.still_for(s.count(), now) >= idle;
        // Look under the read locks first (every series, to note what moved); write-lock
        // only when something is to go.
        let requests_stale = read(&self.requests)
            .values()
            .filter(|s| idle_request(s))
            .count()
            > 0;
        let tcp_stale = read(&self.tcp).values().filter(|s| idle_tcp(s)).count() > 0;
        let pathways_stale = read(&self.pathways)
            .values()
            .filter(|s| idle_pathway(s))
            .count()
            > 0;
        let mut gone = 0;
        if requests_stale || tcp_stale {
            // The order `request_series` and `tcp_series` take them in.
            let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
            let mut requests = self.requests.write().unwrap_or_else(|p| p.into_inner());
            let mut tcp = self.tcp.write().unwrap_or_else(|p| p.into_inner());
            let before = requests.len() + tcp.len();
            requests.retain(|_, s| !idle_request(s));
            tcp.retain(|_, s| !idle_tcp(s));
            gone += before - requests.len() - tcp.len();
            crate::heap::fit(&mut requests);
            crate::heap::fit(&mut tcp);
            *admitted = Admitted::used_by(requests.keys(), tcp.keys());
        }
        if pathways_stale {
            let mut pathways = self.pathways.write().unwrap_or_else(|p| p.into_inner());
            let before = pathways.len();
            pathways.retain(|_, s| !idle_pathway(s));
            gone += before - pathways.len();
            crate::heap::fit(&mut pathways);
        }
        self.evicted.fetch_add(gone as u64, Ordering::Relaxed);
        gone
    }

    /// Counts `n` series of other families let go by the same sweep.
    pub(crate) fn evicted_elsewhere(&self, n: usize) {
        self.evicted.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Series let go by [`Self::sweep`] so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Requests recorded under folded labels so far.
    pub fn folded(&self) -> u64 {
        self.folded.load(Ordering::Relaxed)
    }

    /// Number of request and TCP series held.
    pub fn series(&self) -> (usize, usize) {
        (read(&self.requests).len(), read(&self.tcp).len())
    }

    /// Every request series with its labels, for summaries and tests.
    pub fn request_series_now(&self) -> Vec<(RequestKey, Arc<RequestSeries>)> {
        read(&self.requests)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every TCP edge series with its labels.
    pub fn tcp_series_now(&self) -> Vec<(TcpKey, Arc<TcpSeries>)> {
        read(&self.tcp)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// An open TCP edge connection; dropping it records the close, its duration and bytes.
#[derive(Debug)]
pub struct TcpEdge {
    series: Arc<TcpSeries>,
    opened: std::time::Instant,
    bytes: (u64, u64),
}

impl TcpEdge {
    /// Sets the bytes copied each way (client to server, server to client).
    pub fn bytes(&mut self, sent: u64, received: u64) {
        self.bytes = (sent, received);
    }
}

impl Drop for TcpEdge {
    fn drop(&mut self) {
        let s = &self.series;
        s.sent.fetch_add(self.bytes.0, Ordering::Relaxed);
        s.received.fetch_add(self.bytes.1, Ordering::Relaxed);
        s.duration.record(self.opened.elapsed());
        s.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Request labels as exposed.
struct RequestLabels<'a>(&'a RequestKey);

impl EncodeLabelSet for RequestLabels<'_> {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        let k = self.0;
        let rule = k.rule.map(|r| r.to_string()).unwrap_or_default();
        let grpc = k.grpc_status.map(|g| g.to_string()).unwrap_or_default();
        let labels: [(&str, &str); 12] = [
            ("direction", k.direction.as_str()),
            ("protocol", k.protocol.as_str()),
            ("tls", if k.tls { "true" } else { "false" }),
            ("src_namespace", &k.src.namespace),
            ("src_account", &k.src.name),
            ("dst_namespace", &k.dst.namespace),
            ("dst_service", &k.dst.name),
            ("route", &k.route),
            ("rule", &rule),
            ("status_code", &k.status.label()),
            ("grpc_status", &grpc),
            ("error", k.error),
        ];
        labels.as_slice().encode(encoder)
    }
}

/// TCP edge labels as exposed.
struct TcpLabels<'a>(&'a TcpKey);

impl EncodeLabelSet for TcpLabels<'_> {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        let k = self.0;
        let labels: [(&str, &str); 6] = [
            ("direction", k.direction.as_str()),
            ("tls", if k.tls { "true" } else { "false" }),
            ("src_namespace", &k.src.namespace),
            ("src_account", &k.src.name),
            ("dst_namespace", &k.dst.namespace),
            ("dst_service", &k.dst.name),
        ];
        labels.as_slice().encode(encoder)
    }
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(impl EncodeLabelSet, histogram::Snapshot)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, snap) in series {
        family
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(
                snap.sum_us as f64 / 1e6,
                snap.count(),
                &snap.exposed(),
                None,
            )?;
    }
    Ok(())
}

fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        prometheus_client::metrics::counter::ConstCounter::new(v)
            .encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Telemetry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let requests = self.request_series_now();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "requests",
            "HTTP requests whose response ended (or failed), by caller, callee, route, status and the mesh's own error reason",
            requests.iter().map(|(k, s)| (RequestLabels(k), load(&s.count))),
        )?;
        let latency: Vec<_> = requests
            .iter()
            .map(|(k, s)| (RequestLabels(k), s.latency.snapshot()))
            .collect();
        histogram(
            &mut encoder,
            "response_latency_seconds",
            "Time from a request's arrival at the proxy to its response headers",
            &latency,
        )?;
        let duration: Vec<_> = requests
            .iter()
            .map(|(k, s)| (RequestLabels(k), s.duration.snapshot()))
            .collect();
        histogram(
            &mut encoder,
            "response_duration_seconds",
            "Time from a request's arrival at the proxy to the end of its response",
            &duration,
        )?;
        counter(
            &mut encoder,
            "request_body_bytes",
            "Request body bytes",
            requests
                .iter()
                .map(|(k, s)| (RequestLabels(k), load(&s.request_bytes))),
        )?;
        counter(
            &mut encoder,
            "response_body_bytes",
            "Response body bytes",
            requests
                .iter()
                .map(|(k, s)| (RequestLabels(k), load(&s.response_bytes))),
        )?;
        let tcp = self.tcp_series_now();
        counter(
            &mut encoder,
            "tcp_edge_opened",
            "Opaque TCP connections opened, by caller and callee",
            tcp.iter().map(|(k, s)| (TcpLabels(k), load(&s.opened))),
        )?;
        counter(
            &mut encoder,
            "tcp_edge_closed",
            "Opaque TCP connections closed, by caller and callee",
            tcp.iter().map(|(k, s)| (TcpLabels(k), load(&s.closed))),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "tcp_edge_open",
                "Opaque TCP connections open now, by caller and callee",
                None,
                MetricType::Gauge,
            )?;
            for (k, s) in &tcp {
                let open = load(&s.opened).saturating_sub(load(&s.closed)) as i64;
                family.encode_family(&TcpLabels(k))?.encode_gauge(&open)?;
            }
        }
        counter(
            &mut encoder,
            "tcp_sent_bytes",
            "Opaque TCP bytes from client to server, added when a connection closes",
            tcp.iter().map(|(k, s)| (TcpLabels(k), load(&s.sent))),
        )?;
        counter(
            &mut encoder,
            "tcp_received_bytes",
            "Opaque TCP bytes from server to client, added when a connection closes",
            tcp.iter().map(|(k, s)| (TcpLabels(k), load(&s.received))),
        )?;
        let durations: Vec<_> = tcp
            .iter()
            .map(|(k, s)| (TcpLabels(k), s.duration.snapshot()))
            .collect();
        histogram(
            &mut encoder,
            "tcp_edge_duration_seconds",
            "How long opaque TCP connections lasted",
            &durations,
        )?;
        counter(
            &mut encoder,
            "telemetry_folded_requests",
            "Requests recorded with labels folded into `other` because a label had too many distinct values or the series limit was reached",
            std::iter::once(([("", ""); 0], self.folded())),
        )?;
        counter(
            &mut encoder,
            "telemetry_evicted_series",
            "Series let go after recording nothing for telemetry.idleSeries (requests, TCP edges, authorization decisions, and the pathways policy suggestions read)",
            std::iter::once(([("", ""); 0], self.evicted())),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, dst: &str, status: u16) -> RequestKey {
        RequestKey {
            direction: Direction::Inbound,
            protocol: Proto::Http1,
            tls: true,
            src: Named::new("default", src),
            dst: Named::new("default", dst),
            route: "".into(),
            rule: None,
            status: Status::Code(status),
            grpc_status: None,
            error: "",
        }
    }

    fn ended(ms: u64) -> Ended {
        Ended {
            latency: Duration::from_millis(ms),
            duration: Duration::from_millis(ms),
            request_bytes: 10,
            response_bytes: 20,
            retries: 0,
        }
    }

    #[test]
    fn requests_count_into_their_series() {
        let t = Telemetry::default();
        for _ in 0..3 {
            t.request(key("web", "api", 200), ended(5));
        }
        t.request(key("web", "api", 503), ended(5));
        let series = t.request_series_now();
        assert_eq!(series.len(), 2);
        let ok = &series
            .iter()
            .find(|(k, _)| k.status == Status::Code(200))
            .unwrap()
            .1;
        assert_eq!(ok.count.load(Ordering::Relaxed), 3);
        assert_eq!(ok.response_bytes.load(Ordering::Relaxed), 60);
        assert_eq!(t.folded(), 0);
    }

    #[test]
    fn a_thousand_callers_fold_into_other_with_a_fixed_ceiling() {
        let t = Telemetry::default();
        for caller in 0..1000 {
            for status in [200, 404, 500] {
                t.request(key(&format!("caller-{caller}"), "api", status), ended(1));
            }
        }
        let (requests, _) = t.series();
        assert!(requests <= MAX_SERIES, "{requests} series");
        assert_eq!(requests, (MAX_VALUES + 1) * 3, "256 callers, then `other`");
        assert_eq!(t.folded(), (1000 - MAX_VALUES as u64) * 3);
        let total: u64 = t
            .request_series_now()
            .iter()
            .map(|(_, s)| s.count.load(Ordering::Relaxed))
            .sum();
        assert_eq!(total, 3000, "nothing is lost by folding, only labels");
        // Past the series limit, new label sets keep only their status class.
        for dst in 0..1000 {
            for caller in 0..20 {
                t.request(
                    key(&format!("caller-{caller}"), &format!("s{dst}"), 201),
                    ended(1),
                );
            }
        }
        assert!(
            t.series().0 <= MAX_SERIES + 2 * 2 * 4 * 10,
            "{:?}",
            t.series()
        );
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(t));
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains("src_account=\"other\""));
        assert!(text.contains("status_code=\"2xx\""));
    }

    #[test]
    fn idle_series_go_and_their_labels_can_be_admitted_again() {
        let t = Arc::new(Telemetry::default());
        let secs = Duration::from_secs;
        let idle = secs(10);
        for dst in 0..300 {
            t.request(key("web", &format!("s{dst}"), 200), ended(1));
        }
        assert_eq!(t.series().0, MAX_VALUES + 1, "256 services, then `other`");
        let edge = TcpKey {
            direction: Direction::Outbound,
            tls: true,
            src: Named::new("default", "web"),
            dst: Named::new("default", "db"),
        };
        let open = t.tcp_open(edge.clone());
        t.pathway(
            PathwayKey {
                src: Named::new("default", "web"),
                port: 80,
                method: "GET",
                prefix: "/".into(),
            },
            false,
        );
        // A request being recorded holds its series.
        let recording = t.request_series(key("web", "s1", 200));
        assert_eq!(t.sweep(secs(0), idle), 0, "the first look only notes");
        t.request(key("web", "s0", 200), ended(1));
        assert_eq!(t.sweep(secs(5), idle), 0, "nothing idle for 10 s yet");
        assert_eq!(t.sweep(secs(12), idle), MAX_VALUES - 1 + 1);
        let left: HashSet<String> = t
            .request_series_now()
            .iter()
            .map(|(k, _)| k.dst.name.to_string())
            .collect();
        assert_eq!(
            left,
            HashSet::from_iter(["s0".to_string(), "s1".to_string()]),
            "s0 moved at 5 s; s1 is held; the rest and `other` went"
        );
        assert_eq!(
            t.tcp_series_now().len(),
            1,
            "an open connection holds its edge"
        );
        assert!(t.pathways_now().is_empty(), "the pathway went");
        assert_eq!(t.evicted(), MAX_VALUES as u64);
        drop(recording);

        // Their labels went with them: new services are admitted under their own names.
        let folded = t.folded();
        for dst in 300..500 {
            t.request(key("web", &format!("s{dst}"), 200), ended(1));
        }
        assert_eq!(t.folded(), folded, "nothing folded");
        assert!(t
            .request_series_now()
            .iter()
            .any(|(k, _)| &*k.dst.name == "s499"));

        // Closing the connection is activity; idle after that, the edge goes too.
        drop(open);
        assert_eq!(t.sweep(secs(13), idle), 1, "s1, no longer held");
        assert_eq!(t.tcp_series_now().len(), 1, "the edge closed at 13 s");
        t.sweep(secs(24), idle);
        assert!(t.tcp_series_now().is_empty());
        assert_eq!(t.series().0, 0);
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(t.clone()));
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let exposed = text
            .lines()
            .find(|l| l.starts_with("telemetry_evicted_series_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        assert_eq!(exposed, Some(t.evicted()), "{text}");
        assert_eq!(t.evicted(), 256 + 1 + 1 + 1 + 200);
    }

    #[test]
    fn exposed_histogram_buckets_are_cumulative_and_end_at_the_count() {
        let t = Telemetry::default();
        for ms in [0, 3, 3, 40, 900, 60_000] {
            t.request(key("web", "api", 200), ended(ms));
        }
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(t));
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let value = |line: &str| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
        let bucket = |le: &str| {
            // Unprefixed: the proxy's registry adds `skein_`.
            let wanted = format!("response_latency_seconds_bucket{{le=\"{le}\",");
            value(text.lines().find(|l| l.starts_with(&wanted)).unwrap())
        };
        assert_eq!(bucket("0.0001"), 1, "the 0 ms request");
        assert_eq!(bucket("0.005"), 3, "and the two 3 ms ones");
        assert_eq!(bucket("0.05"), 4);
        assert_eq!(bucket("1.0"), 5);
        assert_eq!(bucket("30.0"), 5, "60 s is above the last bound");
        assert_eq!(bucket("+Inf"), 6);
        let count = text
            .lines()
            .find(|l| l.starts_with("response_latency_seconds_count{"))
            .map(value);
        assert_eq!(count, Some(6));
        let buckets: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("response_latency_seconds_bucket{"))
            .map(value)
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    }

    #[test]
    fn pathways_keep_the_first_segment_and_stay_bounded() {
        assert_eq!(path_prefix("/"), "/");
        assert_eq!(path_prefix("/healthz"), "/healthz");
        assert_eq!(path_prefix("/menu/1"), "/menu/*");
        assert_eq!(path_prefix("/menu/"), "/menu/*");
        assert_eq!(path_prefix(&format!("/{}", "a".repeat(65))), "/*");
        assert_eq!(pathway_method(&http::Method::GET), "GET");
        assert_eq!(
            pathway_method(&http::Method::from_bytes(b"PURGE").unwrap()),
            "*"
        );
        let t = Telemetry::default();
        for caller in 0..20 {
            for path in 0..100 {
                t.pathway(
                    PathwayKey {
                        src: Named::new("default", &format!("c{caller}")),
                        port: 80,
                        method: "GET",
                        prefix: format!("/p{path}/*").into(),
                    },
                    false,
                );
            }
        }
        let all = t.pathways_now();
        assert!(all.len() <= MAX_PATHWAYS + 20 + 1, "{}", all.len());
        assert_eq!(
            all.iter().map(|(_, n)| n.count()).sum::<u64>(),
            2000,
            "every request counted"
        );
        assert!(all.iter().any(|(k, _)| &*k.prefix == "/*"));
    }

    #[test]
    fn tcp_edges_record_open_close_bytes_and_duration() {
        let t = Arc::new(Telemetry::default());
        let k = TcpKey {
            direction: Direction::Outbound,
            tls: true,
            src: Named::new("default", "web"),
            dst: Named::new("default", "db"),
        };
        let mut edge = t.tcp_open(k.clone());
        let other = t.tcp_open(k);
        edge.bytes(5, 7);
        drop(edge);
        let (_, s) = &t.tcp_series_now()[0];
        assert_eq!(s.opened.load(Ordering::Relaxed), 2);
        assert_eq!(s.closed.load(Ordering::Relaxed), 1);
        assert_eq!(s.sent.load(Ordering::Relaxed), 5);
        assert_eq!(s.received.load(Ordering::Relaxed), 7);
        assert_eq!(s.duration.snapshot().count(), 1);
        drop(other);
    }
}

//! The proxy's Prometheus metrics: connections by direction and protocol, refusals and
//! errors, detection timeouts, the control-plane session and the workload certificate,
//! authorization decisions, DNS answers, and (through [`crate::telemetry`]) the golden
//! signals of every request and TCP edge. Served on `/metrics`.

use foldhash::HashMap;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Which side of the proxy traffic passed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// From peers to the local application.
    Inbound,
    /// From the local application to other services.
    Outbound,
}

/// The protocol a connection or request carried.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 (including gRPC).
    Http2,
    /// Opaque bytes.
    Tcp,
    /// Opaque bytes to an address no destination knows, forwarded unchanged.
    Passthrough,
}

impl Direction {
    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl Proto {
    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
            Proto::Tcp => "tcp",
            Proto::Passthrough => "passthrough",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for Proto {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels for connection metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// inbound or outbound.
    pub direction: Direction,
    /// What the connection carried.
    pub protocol: Proto,
}

/// Labels for refusals and errors.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// inbound or outbound.
    pub direction: Direction,
    /// A short stable reason.
    pub reason: String,
}

/// Labels for limit refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// inbound (load shedding) or outbound (a caller's limits).
    pub direction: Direction,
    /// The service whose limit it is.
    pub service: String,
    /// The BackendPolicy's `namespace/name` (or `the default BackendPolicy`).
    pub policy: String,
    /// The limit, as its field is written (`connectionPool.maxConcurrentRequests`).
    pub limit: &'static str,
}

/// Labels for outlier ejections.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    /// The destination service.
    pub service: String,
    /// The endpoint's address.
    pub endpoint: String,
}

/// Labels for spans.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    /// `control_plane`, `collector`, or `any` (not recorded at all).
    pub destination: &'static str,
    /// `sent` or `dropped_full` (the bounded buffer was full), `dropped_failed` (the
    /// collector refused or did not answer in time), `dropped_unsent` (never sent),
    /// `dropped_rate_limited` (an unsampled failure over the rate).
    pub result: &'static str,
}

/// How the DNS server answered a query.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DnsAnswer {
    /// A mesh service's addresses.
    Mesh,
    /// NXDOMAIN: a name in the mesh's zone that no service has.
    NxDomain,
    /// NOERROR without records: a mesh name with no record of the type asked.
    NoData,
    /// An upstream resolver's reply, relayed.
    Forwarded,
    /// SERVFAIL: no upstream answered, or too many forwards were in flight.
    ServFail,
    /// FORMERR: the query could not be read.
    FormErr,
}

impl DnsAnswer {
    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            DnsAnswer::Mesh => "mesh",
            DnsAnswer::NxDomain => "nxdomain",
            DnsAnswer::NoData => "nodata",
            DnsAnswer::Forwarded => "forwarded",
            DnsAnswer::ServFail => "servfail",
            DnsAnswer::FormErr => "formerr",
        }
    }
}

impl EncodeLabelValue for DnsAnswer {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels for DNS queries.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// How it was answered.
    pub answer: DnsAnswer,
}

/// Labels for per-direction counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    /// inbound or outbound.
    pub direction: Direction,
}

/// All metric families of one proxy.
pub struct Metrics {
    registry: Registry,
    /// Connections accepted.
    pub connections: Family<ConnLabels, Counter>,
    /// Connections currently open.
    pub open_connections: Family<ConnLabels, Gauge>,
    /// Golden signals per request and TCP edge.
    pub telemetry: std::sync::Arc<crate::telemetry::Telemetry>,
    /// Requests or connections the proxy itself refused or failed, by reason.
    pub errors: Family<ReasonLabels, Counter>,
    /// Route retries, by result (`sent`, `budget_exhausted`, `body_too_large`, `buffers_shed`,
    /// `body_failed`).
    pub retries: Family<ResultLabels, Counter>,
    /// Requests and connections refused by a BackendPolicy limit, by what decided.
    pub limit_refusals: Family<LimitLabels, Counter>,
    /// When each (service, limit) refusal was last logged.
    limit_log: std::sync::Mutex<HashMap<(String, &'static str), std::time::Instant>>,
    /// Mirrored requests (`RequestMirror`), by result.
    pub mirrors: Family<ResultLabels, Counter>,
    /// Work shed at one of the proxy's own ceilings, by resource.
    pub overload_shed: Family<ResourceLabels, Counter>,
    /// Spans recorded, by where they go and what became of them.
    pub spans: Family<SpanLabels, Counter>,
    /// Endpoints ejected by outlier detection, by destination service and endpoint.
    pub ejections: Family<EjectionLabels, Counter>,
    /// Connections whose protocol was decided by the detection timeout.
    pub detect_timeouts: Family<DirLabels, Counter>,
    /// 1 while a control-plane stream is open.
    pub control_connected: Gauge,
    /// Requests the application is sent at once now (its inbound limit, fixed or as the
    /// adaptive limit last moved it); 0: no limit.
    pub inbound_limit: Gauge,
    /// Telemetry summaries dropped unsent because the control plane was unreachable.
    pub summaries_dropped: Counter,
    /// Version of the configuration snapshot in force (0: static config only).
    pub config_version: Gauge,
    /// Configuration snapshots received, by result (`applied` or `refused`).
    pub config_updates: Family<ResultLabels, Counter>,
    /// Destinations received in applied snapshots and deltas (each time one arrived).
    pub config_destinations_received: Counter,
    /// Destinations held now.
    pub config_destinations: Gauge,
    /// Inbound connections by how the caller was authenticated (`mtls`, `plaintext`) or
    /// why it was refused (`refused_plaintext`, `handshake_failed`, `no_identity`).
    pub inbound_security: Family<SecurityLabels, Counter>,
    /// Seconds until the workload certificate expires (negative once expired).
    pub cert_expiry_seconds: Gauge,
    /// Certificate requests to the control plane, by result (`issued`, `failed`).
    pub cert_renewals: Family<ResultLabels, Counter>,
    /// Authorization decisions on inbound requests and tunnels.
    pub authz: Family<AuthzLabels, Counter>,
    /// DNS queries, by how they were answered.
    pub dns_queries: Family<DnsLabels, Counter>,
    /// The `authz` counters by a hash of their labels, so that counting a decision looks
    /// up borrowed strings instead of building four owned labels per request.
    authz_counters: std::sync::RwLock<HashMap<u64, Vec<AuthzCounter>>>,
    /// Hashes the labels into `authz_counters`' keys (seeded per process).
    authz_hasher: foldhash::fast::RandomState,
}

/// One authorization label set, its counter, and whether it moved (for the sweep).
type AuthzCounter = (AuthzLabels, Counter, crate::telemetry::Quiet);

/// Authorization label sets kept at most; later callers are counted as `other`.
pub const MAX_AUTHZ_SERIES: usize = 1024;

/// Labels for authorization decisions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `allowed`, `denied` or `audited`.
    pub decision: &'static str,
    /// The caller's SPIFFE ID, or `unauthenticated`.
    pub source: String,
    /// This workload's service.
    pub target: String,
    /// The deciding policy (`namespace/name`), `default` or `not-allowed`.
    pub policy: String,
}

/// Labels for inbound connection security.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecurityLabels {
    /// How the caller proved itself, or why it was refused.
    pub security: &'static str,
}

/// Labels for the proxy's own ceilings.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `connections`, `requests` or `buffers`.
    pub resource: &'static str,
    /// `inbound` or `outbound`.
    pub direction: Direction,
}

/// Labels for outcomes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// What happened.
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family under the `skein_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("skein");
        let m = Metrics {
            connections: Family::default(),
            open_connections: Family::default(),
            telemetry: Default::default(),
            errors: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            mirrors: Family::default(),
            overload_shed: Family::default(),
            spans: Family::default(),
            limit_refusals: Family::default(),
            limit_log: Default::default(),
            detect_timeouts: Family::default(),
            control_connected: Gauge::default(),
            inbound_limit: Gauge::default(),
            summaries_dropped: Counter::default(),
            config_version: Gauge::default(),
            config_updates: Family::default(),
            config_destinations_received: Counter::default(),
            config_destinations: Gauge::default(),
            inbound_security: Family::default(),
            cert_expiry_seconds: Gauge::default(),
            cert_renewals: Family::default(),
            authz: Family::default(),
            authz_counters: Default::default(),
            authz_hasher: Default::default(),
            dns_queries: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tcp_connections",
            "Connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "Connections open now",
            m.open_connections.clone(),
        );
        registry.register_collector(Box::new(m.telemetry.clone()));
        registry.register_collector(Box::new(crate::heap::HeapCollector));
        registry.register(
            "proxy_errors",
            "Requests or connections the proxy refused or failed",
            m.errors.clone(),
        );
        registry.register(
            "route_retries",
            "Outbound requests tried again under an HTTPRoute retry, by result (sent, budget_exhausted, body_too_large, buffers_shed, body_failed)",
            m.retries.clone(),
        );
        registry.register("detect_timeouts", "Connections treated as opaque TCP because the client sent nothing within the detection timeout", m.detect_timeouts.clone());
        registry.register(
            "telemetry_summaries_dropped",
            "Telemetry summaries dropped unsent while the control plane was unreachable (the oldest go first)",
            m.summaries_dropped.clone(),
        );
        registry.register(
            "inbound_concurrency_limit",
            "Requests the application is sent at once under its inbound limit (fixed, or as the adaptive limit last set it); 0 when it has none",
            m.inbound_limit.clone(),
        );
        registry.register(
            "control_connected",
            "1 while connected to the control plane",
            m.control_connected.clone(),
        );
        registry.register(
            "config_version",
            "Version of the configuration snapshot in force",
            m.config_version.clone(),
        );
        registry.register(
            "config_updates",
            "Configuration snapshots received, by result",
            m.config_updates.clone(),
        );
        registry.register(
            "config_destinations_received",
            "Destinations received in applied snapshots and deltas",
            m.config_destinations_received.clone(),
        );
        registry.register(
            "config_destinations",
            "Destinations this proxy holds",
            m.config_destinations.clone(),
        );
        registry.register(
            "inbound_security_connections",
            "Inbound connections by how the caller authenticated, or why it was refused",
            m.inbound_security.clone(),
        );
        registry.register(
            "identity_cert_expiry_seconds",
            "Seconds until the workload certificate expires",
            m.cert_expiry_seconds.clone(),
        );
        registry.register(
            "identity_cert_requests",
            "Workload certificate requests to the control plane, by result",
            m.cert_renewals.clone(),
        );
        registry.register(
            "limit_refusals",
            "Requests and connections refused at once by a BackendPolicy limit, by direction, service, policy and limit",
            m.limit_refusals.clone(),
        );
        registry.register(
            "trace_spans",
            "Spans this proxy recorded, by destination (control_plane, collector, any) and result (sent, dropped_full, dropped_failed, dropped_unsent, dropped_rate_limited)",
            m.spans.clone(),
        );
        registry.register(
            "route_mirrors",
            "Copies of requests sent by RequestMirror filters, by result (sent, failed, dropped, skipped_streamed_body)",
            m.mirrors.clone(),
        );
        registry.register(
            "overload_shed",
            "Work shed at the proxy's own ceilings, by resource and direction: connections closed at limits.maxConnections, requests answered 503 at limits.maxRequests, request bodies not held (no retry, no mirror) at limits.maxBufferedBytes",
            m.overload_shed.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection (BackendPolicy outlierDetection), by destination service and endpoint",
            m.ejections.clone(),
        );
        registry.register(
            "authz_decisions",
            "Inbound authorization decisions, by decision, source identity, target service and deciding policy",
            m.authz.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries the proxy's DNS server handled, by answer (mesh, nxdomain, nodata, forwarded, servfail, formerr)",
            m.dns_queries.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one authorization decision. Past [`MAX_AUTHZ_SERIES`] label sets, a new
    /// caller is counted as `other` (a fixed ceiling whatever the number of callers).
    pub fn authz(&self, decision: &'static str, source: &str, target: &str, policy: &str) {
        if !self.count_authz(decision, source, target, policy) {
            self.count_authz(decision, crate::telemetry::OTHER, target, policy);
        }
    }

    /// Counts under these labels; false when they are new and the ceiling is reached.
    fn count_authz(
        &self,
        decision: &'static str,
        source: &str,
        target: &str,
        policy: &str,
    ) -> bool {
        use std::hash::BuildHasher;
        let key = self
            .authz_hasher
            .hash_one((decision, source, target, policy));
        let same = |l: &AuthzLabels| {
            l.decision == decision && l.source == source && l.target == target && l.policy == policy
        };
        {
            let counters = self
                .authz_counters
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((_, c, _)) = counters
                .get(&key)
                .and_then(|v| v.iter().find(|(l, ..)| same(l)))
            {
                c.inc();
                return true;
            }
        }
        let mut counters = self
            .authz_counters
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let held: usize = counters.values().map(Vec::len).sum();
        if held >= MAX_AUTHZ_SERIES && source != crate::telemetry::OTHER {
            return false;
        }
        let labels = AuthzLabels {
            decision,
            source: source.to_string(),
            target: target.to_string(),
            policy: policy.to_string(),
        };
        let counter = self.authz.get_or_create(&labels).clone();
        counter.inc();
        let slot = counters.entry(key).or_default();
        if !slot.iter().any(|(l, ..)| same(l)) {
            slot.push((labels, counter, Default::default()));
        }
        true
    }

    /// Lets go of idle series: the telemetry's ([`crate::telemetry::Telemetry::sweep`]) and
    /// authorization label sets that counted nothing for `idle`, which frees their room
    /// under [`MAX_AUTHZ_SERIES`]. Returns how many went.
    pub fn sweep(&self, now: Duration, idle: Duration) -> usize {
        let telemetry = self.telemetry.sweep(now, idle);
        let (now_ms, idle_ms) = (now.as_millis() as u64, idle.as_millis() as u64);
        let idle_set = |(_, c, quiet): &AuthzCounter| quiet.still_for(c.get(), now_ms) >= idle_ms;
        let stale = {
            let counters = self
                .authz_counters
                .read()
                .unwrap_or_else(|p| p.into_inner());
            counters.values().flatten().filter(|e| idle_set(e)).count()
        };
        let mut authz = 0;
        if stale > 0 {
            // Counting happens under the read lock, so none is lost to the removal.
            let mut counters = self
                .authz_counters
                .write()
                .unwrap_or_else(|p| p.into_inner());
            counters.retain(|_, slot| {
                slot.retain(|e| {
                    let keep = !idle_set(e);
                    if !keep {
                        self.authz.remove(&e.0);
                        authz += 1;
                    }
                    keep
                });
                !slot.is_empty()
            });
            crate::heap::fit(&mut counters);
        }
        self.telemetry.evicted_elsewhere(authz);
        telemetry + authz
    }

    /// Counts one DNS query by how it was answered.
    pub fn dns_query(&self, answer: DnsAnswer) {
        self.dns_queries.get_or_create(&DnsLabels { answer }).inc();
    }

    /// Counts one inbound connection by security outcome.
    pub fn inbound_security(&self, security: &'static str) {
        self.inbound_security
            .get_or_create(&SecurityLabels { security })
            .inc();
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a new connection and returns a guard that keeps it in `open_connections`
    /// until dropped.
    pub fn open(&self, direction: Direction, protocol: Proto) -> OpenConn {
        let labels = ConnLabels {
            direction,
            protocol,
        };
        self.connections.get_or_create(&labels).inc();
        let gauge = self.open_connections.get_or_create(&labels).clone();
        gauge.inc();
        OpenConn { gauge }
    }

    /// Counts one certificate request by result (`issued` or `failed`).
    pub fn cert_renewals(&self, result: &str) {
        self.cert_renewals
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts `received` destinations of an applied message; `held` are held now.
    pub fn config_destinations(&self, received: usize, held: usize) {
        self.config_destinations_received.inc_by(received as u64);
        self.config_destinations.set(held as i64);
    }

    /// Counts one configuration snapshot by result.
    pub fn config_updates(&self, result: &str) {
        self.config_updates
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one route retry sent, or refused by the budget.
    pub fn retry(&self, result: &'static str) {
        self.retries
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a refusal by a limit (`err` must be `ProxyError::Overloaded`; anything else
    /// is ignored) and logs it, once per service and limit every 10 s.
    pub fn limit_refusal(&self, direction: Direction, err: &crate::ProxyError) {
        let crate::ProxyError::Overloaded {
            service,
            policy,
            limit,
            ..
        } = err
        else {
            return;
        };
        self.limit_refusals
            .get_or_create(&LimitLabels {
                direction,
                service: service.clone(),
                policy: policy.clone(),
                limit,
            })
            .inc();
        let now = std::time::Instant::now();
        let mut log = self.limit_log.lock().unwrap_or_else(|p| p.into_inner());
        let key = (service.clone(), *limit);
        let due = log
            .get(&key)
            .is_none_or(|last| now.duration_since(*last) >= std::time::Duration::from_secs(10));
        if due {
            // Bounded: one entry per service and limit that ever refused.
            log.insert(key, now);
            tracing::warn!(direction = direction.as_str(), %err, "refusing at once (logged once per 10 s per service and limit; skein_limit_refusals_total counts every one)");
        }
    }

    /// Counts `n` spans bound for `destination` by `result`.
    pub fn spans(&self, destination: &'static str, result: &'static str, n: u64) {
        self.spans
            .get_or_create(&SpanLabels {
                destination,
                result,
            })
            .inc_by(n);
    }

    /// Counts work shed at the ceiling of `resource`.
    pub fn overload_shed(&self, resource: &'static str, direction: Direction) {
        self.overload_shed
            .get_or_create(&ResourceLabels {
                resource,
                direction,
            })
            .inc();
    }

    /// Counts one mirrored request by `result`.
    pub fn mirror(&self, result: &'static str) {
        self.mirrors
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one ejection of `endpoint` of `service`.
    pub fn ejection(&self, service: &str, endpoint: std::net::SocketAddr) {
        self.ejections
            .get_or_create(&EjectionLabels {
                service: service.to_string(),
                endpoint: endpoint.to_string(),
            })
            .inc();
    }

    /// Counts one refusal or failure.
    pub fn error(&self, direction: Direction, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabels {
                direction,
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Sweeps `m` (see [`Metrics::sweep`]) until `stop` resolves, every quarter of `idle()`
/// (at most 30 s apart, at least 250 ms), reading `idle()` again each time so a new
/// configuration takes effect. A series goes between `idle` and 1.5 × `idle` after it
/// last recorded.
pub async fn sweep_until(
    m: std::sync::Arc<Metrics>,
    idle: impl Fn() -> Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let clock = tokio::time::Instant::now();
    let mut stop = std::pin::pin!(stop);
    loop {
        let every = (idle() / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
        let gone = m.sweep(clock.elapsed(), idle());
        if gone > 0 {
            tracing::debug!(series = gone, "let go of idle metric series");
        }
    }
}

/// Sums the samples of metric `name` in Prometheus text whose labels contain every
/// fragment of `want` (e.g. `direction="inbound"`). For tools and tests reading `/metrics`.
pub fn sum_samples(text: &str, name: &str, want: &[&str]) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Keeps a connection counted as open while alive.
pub struct OpenConn {
    gauge: Gauge,
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_follow_guards() {
        let m = Metrics::new();
        let g = m.open(Direction::Inbound, Proto::Http2);
        m.error(Direction::Inbound, "denied");
        let text = m.encode();
        assert!(
            text.contains("skein_tcp_open_connections{direction=\"inbound\",protocol=\"http2\"} 1"),
            "{text}"
        );
        assert_eq!(
            sum_samples(
                &text,
                "skein_proxy_errors_total",
                &["direction=\"inbound\""]
            ),
            1
        );
        assert_eq!(
            sum_samples(&text, "skein_proxy_errors", &[]),
            0,
            "prefix must not match"
        );
        drop(g);
        for caller in 0..2 * MAX_AUTHZ_SERIES {
            m.authz(
                "allowed",
                &format!("spiffe://x/ns/a/sa/{caller}"),
                "api",
                "default",
            );
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("skein_authz_decisions_total{"))
            .count();
        assert_eq!(
            series,
            MAX_AUTHZ_SERIES + 1,
            "a fixed ceiling, then `other`"
        );
        assert_eq!(
            sum_samples(&text, "skein_authz_decisions_total", &[]),
            2 * MAX_AUTHZ_SERIES as u64,
            "every decision counted"
        );
        assert!(m
            .encode()
            .contains("skein_tcp_open_connections{direction=\"inbound\",protocol=\"http2\"} 0"));
    }

    #[test]
    fn idle_authorization_label_sets_go_and_free_their_room() {
        let m = Metrics::new();
        let caller = |n: usize| format!("spiffe://x/ns/a/sa/{n}");
        let decisions = |m: &Metrics| {
            let text = m.encode();
            let sets = text
                .lines()
                .filter(|l| l.starts_with("skein_authz_decisions_total{"))
                .map(str::to_string)
                .collect::<Vec<_>>();
            sets
        };
        for n in 0..MAX_AUTHZ_SERIES + 10 {
            m.authz("allowed", &caller(n), "api", "default");
        }
        assert_eq!(decisions(&m).len(), MAX_AUTHZ_SERIES + 1);
        let (idle, secs) = (Duration::from_secs(10), Duration::from_secs);
        assert_eq!(m.sweep(secs(0), idle), 0, "the first look only notes");
        m.authz("allowed", &caller(7), "api", "default");
        assert_eq!(
            m.sweep(secs(11), idle),
            MAX_AUTHZ_SERIES,
            "all but caller 7"
        );
        let left = decisions(&m);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains("sa/7\""), "{left:?}");
        // The room is free again: a new caller is counted under its own name.
        m.authz("denied", &caller(5000), "api", "default");
        assert!(decisions(&m).iter().any(|l| l.contains("sa/5000\"")));
        assert_eq!(m.telemetry.evicted(), MAX_AUTHZ_SERIES as u64);
    }
}

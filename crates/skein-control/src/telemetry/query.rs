//! Reading the central view: golden signals per service, workload, route and edge over a
//! window, merged across every proxy that saw the traffic. Pure over [`Central`].
//!
//! - **services** and **workloads**: what their proxies received (inbound series):
//!   every replica of a service merged.
//! - **routes**: what callers sent through each HTTPRoute (outbound series).
//! - **edges**: caller account → service, as the callee's proxy saw it (so the caller is
//!   the account its certificate proved), with whether it was mutual TLS and how many
//!   calls authorization denied.
//!
//! - **map**: every service as a node with its signals, every edge with its protocol and
//!   whether authorization denied it.
//!
//! A request failed when its status is 5xx or its gRPC status is not OK; a request the
//! callee's authorization denied is counted as denied, not as a failure.

use super::{Central, ReqAgg, ReqKey, Slot, TcpAgg, TcpKey, SLOT_SECS};
use serde::Serialize;
use skein_model::latency::Snapshot;
use std::collections::BTreeMap;
use std::time::Duration;

/// What to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// Each service (inbound, all replicas).
    Services,
    /// Each workload (inbound).
    Workloads,
    /// Each HTTPRoute (outbound, all callers).
    Routes,
}

impl std::str::FromStr for StatKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "services" | "service" | "svc" => Ok(StatKind::Services),
            "workloads" | "workload" | "wl" => Ok(StatKind::Workloads),
            "routes" | "route" | "httproutes" => Ok(StatKind::Routes),
            other => Err(format!(
                "{other:?} is not something skein stat reads; use services, workloads or routes"
            )),
        }
    }
}

/// The longest window the view holds.
pub const MAX_WINDOW: Duration = Duration::from_secs((super::WINDOW_SLOTS * SLOT_SECS) as u64);

/// Signals accumulated for one row.
#[derive(Debug, Default)]
struct Acc {
    requests: u64,
    failures: u64,
    denied: u64,
    retries: u64,
    tls_requests: u64,
    latency: Snapshot,
    request_bytes: u64,
    response_bytes: u64,
    tcp: TcpAgg,
    tls_connections: u64,
    /// Since when the proxies contributing to the row report (the earliest).
    covered_since: Option<i64>,
}

impl Acc {
    /// Notes that `proxy` contributes to this row.
    fn from(&mut self, proxy: &super::ProxyRecord) -> &mut Self {
        let since = proxy.covered_since;
        self.covered_since = Some(self.covered_since.map_or(since, |s| s.min(since)));
        self
    }

    fn request(&mut self, k: &ReqKey, v: &ReqAgg) {
        self.requests += v.count;
        self.retries += v.retries;
        if k.tls {
            self.tls_requests += v.count;
        }
        if &*k.error == "denied" {
            self.denied += v.count;
        } else if k.status >= 500 || k.grpc_status.is_some_and(|g| g != 0) {
            self.failures += v.count;
        }
        v.latency.add_to(&mut self.latency);
        self.request_bytes += v.request_bytes;
        self.response_bytes += v.response_bytes;
    }

    fn connection(&mut self, k: &TcpKey, v: &TcpAgg) {
        self.tcp.merge(v);
        if k.tls {
            self.tls_connections += v.opened;
        }
    }
}

/// Golden signals of one service, workload or route over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Signals {
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Share of requests that did not fail (none: no requests).
    pub success_rate: Option<f64>,
    /// Requests authorization denied.
    pub denied: u64,
    /// Route retries (tries beyond the first).
    pub retries: u64,
    /// Latency to response headers, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Opaque TCP connections opened.
    pub tcp_connections: u64,
    /// Opaque TCP bytes client → server (of connections that closed).
    pub tcp_sent_bytes: u64,
    /// Opaque TCP bytes server → client.
    pub tcp_received_bytes: u64,
    /// Whether every request and connection was mutual TLS (none: no traffic).
    pub mtls: Option<bool>,
}

impl Acc {
    /// The signals over `window` ending `now`. Rates divide by the part of the window
    /// the proxies' reports cover: a mesh that started 12 s ago shows its real rate, not
    /// a fifth of it over a one-minute window.
    fn signals(&self, window: Duration, now: i64) -> Signals {
        let covered = self
            .covered_since
            .map_or(f64::MAX, |since| (now - since) as f64);
        let secs = window.as_secs_f64().min(covered).max(1.0);
        let ms = |q| self.latency.quantile(q).map(|d| d.as_secs_f64() * 1e3);
        let traffic = self.requests + self.tcp.opened;
        Signals {
            requests: self.requests,
            rps: self.requests as f64 / secs,
            success_rate: (self.requests > 0)
                .then(|| 1.0 - self.failures as f64 / self.requests as f64),
            denied: self.denied,
            retries: self.retries,
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            tcp_connections: self.tcp.opened,
            tcp_sent_bytes: self.tcp.sent,
            tcp_received_bytes: self.tcp.received,
            mtls: (traffic > 0).then(|| self.tls_requests + self.tls_connections == traffic),
        }
    }
}

/// One row of `skein stat`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatRow {
    /// Namespace.
    pub namespace: String,
    /// The service, workload or route (`namespace/name` for routes).
    pub name: String,
    /// The workload's service, or the route's parent service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The signals.
    #[serde(flatten)]
    pub signals: Signals,
}

/// One row of `skein edges`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EdgeRow {
    /// The caller's namespace.
    pub src_namespace: String,
    /// The caller's account.
    pub src: String,
    /// The callee's namespace.
    pub dst_namespace: String,
    /// The callee's service.
    pub dst: String,
    /// The signals.
    #[serde(flatten)]
    pub signals: Signals,
}

/// The first slot of a window ending `now`: `window / 10 s` slots, the current (partial)
/// one included.
pub(super) fn window_start(now: i64, window: Duration) -> i64 {
    let w = i64::try_from(window.as_secs())
        .unwrap_or(i64::MAX)
        .clamp(SLOT_SECS, MAX_WINDOW.as_secs() as i64);
    (now - w).div_euclid(SLOT_SECS) * SLOT_SECS + SLOT_SECS
}

impl Central {
    /// `skein stat KIND [NAME]`: one row per service, workload or route with traffic in
    /// the window (rows sorted by namespace and name); `name` keeps only that one.
    pub fn stat(
        &self,
        kind: StatKind,
        name: Option<&str>,
        window: Duration,
        now: i64,
    ) -> Vec<StatRow> {
        let mut rows: BTreeMap<(String, String), (Option<String>, Acc)> = BTreeMap::new();
        self.each_slot(window_start(now, window), |proxy, slot: &Slot| {
            for (k, v) in &slot.requests {
                let at = match kind {
                    StatKind::Services if k.inbound => {
                        ((k.dst.namespace.to_string(), k.dst.name.to_string()), None)
                    }
                    StatKind::Workloads if k.inbound => (
                        (
                            proxy.workload.namespace.to_string(),
                            proxy.workload.name.to_string(),
                        ),
                        Some(proxy.account.to_string()),
                    ),
                    StatKind::Routes if !k.inbound && !k.route.is_empty() => {
                        let ns = k.route.split_once('/').map_or("", |(ns, _)| ns);
                        (
                            (ns.to_string(), k.route.to_string()),
                            Some(k.dst.name.to_string()),
                        )
                    }
                    _ => continue,
                };
                let row = rows.entry(at.0).or_insert_with(|| (at.1, Acc::default()));
                row.1.from(proxy).request(k, v);
            }
            for (k, v) in &slot.tcp {
                let at = match kind {
                    StatKind::Services if k.inbound => {
                        (k.dst.namespace.to_string(), k.dst.name.to_string())
                    }
                    StatKind::Workloads if k.inbound => (
                        proxy.workload.namespace.to_string(),
                        proxy.workload.name.to_string(),
                    ),
                    _ => continue,
                };
                let service = (kind == StatKind::Workloads).then(|| proxy.account.to_string());
                rows.entry(at)
                    .or_insert_with(|| (service, Acc::default()))
                    .1
                    .from(proxy)
                    .connection(k, v);
            }
        });
        rows.into_iter()
            .filter(|((_, n), _)| name.is_none_or(|want| n == want))
            .map(|((namespace, name), (service, acc))| StatRow {
                namespace,
                name,
                service,
                signals: acc.signals(window, now),
            })
            .collect()
    }

    /// `skein edges [SERVICE]`: one row per caller account → service pair seen by the
    /// callee's proxy in the window; `service` keeps the edges into or out of it.
    pub fn edges(&self, service: Option<&str>, window: Duration, now: i64) -> Vec<EdgeRow> {
        type Pair = (String, String, String, String);
        let mut rows: BTreeMap<Pair, Acc> = BTreeMap::new();
        let pair = |src: &super::Who, dst: &super::Who| -> Pair {
            (
                src.namespace.to_string(),
                src.name.to_string(),
                dst.namespace.to_string(),
                dst.name.to_string(),
            )
        };
        self.each_slot(window_start(now, window), |proxy, slot| {
            for (k, v) in slot.requests.iter().filter(|(k, _)| k.inbound) {
                rows.entry(pair(&k.src, &k.dst))
                    .or_default()
                    .from(proxy)
                    .request(k, v);
            }
            for (k, v) in slot.tcp.iter().filter(|(k, _)| k.inbound) {
                rows.entry(pair(&k.src, &k.dst))
                    .or_default()
                    .from(proxy)
                    .connection(k, v);
            }
        });
        rows.into_iter()
            .filter(|((_, src, _, dst), _)| service.is_none_or(|s| src == s || dst == s))
            .map(|((src_namespace, src, dst_namespace, dst), acc)| EdgeRow {
                src_namespace,
                src,
                dst_namespace,
                dst,
                signals: acc.signals(window, now),
            })
            .collect()
    }
}

/// One service on the map.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapNode {
    /// Namespace.
    pub namespace: String,
    /// Service (or, for a caller nobody calls, its account).
    pub name: String,
    /// What its proxies received (none: it only calls).
    pub signals: Option<Signals>,
}

/// One edge on the map.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapEdge {
    /// The edge's ends and signals.
    #[serde(flatten)]
    pub edge: EdgeRow,
    /// `http`, `tcp` or `http+tcp`.
    pub protocol: &'static str,
    /// Requests authorization allowed (or audited).
    pub allowed: u64,
    /// `allowed`, `denied` (every request refused) or `partly denied`.
    pub authorization: &'static str,
}

/// The network map over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapView {
    /// Services and callers, sorted.
    pub nodes: Vec<MapNode>,
    /// Caller → service edges, sorted.
    pub edges: Vec<MapEdge>,
}

impl Central {
    /// `skein map`: every service with traffic as a node, every observed edge.
    pub fn map(&self, window: Duration, now: i64) -> MapView {
        let services = self.stat(StatKind::Services, None, window, now);
        let edges = self.edges(None, window, now);
        let mut nodes: BTreeMap<(String, String), Option<Signals>> = services
            .into_iter()
            .map(|r| ((r.namespace, r.name), Some(r.signals)))
            .collect();
        for e in &edges {
            nodes
                .entry((e.src_namespace.clone(), e.src.clone()))
                .or_insert(None);
        }
        MapView {
            nodes: nodes
                .into_iter()
                .map(|((namespace, name), signals)| MapNode {
                    namespace,
                    name,
                    signals,
                })
                .collect(),
            edges: edges
                .into_iter()
                .map(|edge| {
                    let s = &edge.signals;
                    let protocol = match (s.requests > 0, s.tcp_connections > 0) {
                        (true, true) => "http+tcp",
                        (false, true) => "tcp",
                        _ => "http",
                    };
                    let allowed = s.requests - s.denied;
                    let authorization = match (allowed, s.denied) {
                        (_, 0) => "allowed",
                        (0, _) if s.tcp_connections == 0 => "denied",
                        _ => "partly denied",
                    };
                    MapEdge {
                        protocol,
                        allowed,
                        authorization,
                        edge,
                    }
                })
                .collect(),
        }
    }
}

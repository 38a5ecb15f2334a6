//! Reading the central view: golden signals per service, workload, route and edge over a
//! window, merged across every proxy that saw the traffic. Pure over [`Central`].
//!
//! - **services** and **workloads**: what their proxies received (inbound series):
//!   every replica of a service merged.
//! - **routes**: what callers sent through each HTTPRoute (outbound series); **rules**:
//!   the same, rule by rule.
//! - **edges**: caller account → service, as the callee's proxy saw it (so the caller is
//!   the account its certificate proved), with whether it was mutual TLS and how many
//!   calls authorization denied or only audited (let through as would-be denials).
//!
//! - **map**: every service as a node with its signals, every edge with its protocol and
//!   whether authorization denied it.
//!
//! A request failed when its status is 5xx or its gRPC status is not OK; a request the
//! callee's authorization denied is counted as denied, not as a failure.

use super::{Central, Label, ReqAgg, ReqKey, Slot, TcpAgg, TcpKey, SLOT_SECS};
use serde::Serialize;
use skein_model::latency::Snapshot;
use std::collections::BTreeMap;
use std::sync::Arc;
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
    /// Each rule of each HTTPRoute (outbound, all callers).
    Rules,
}

impl std::str::FromStr for StatKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "services" | "service" | "svc" => Ok(StatKind::Services),
            "workloads" | "workload" | "wl" => Ok(StatKind::Workloads),
            "routes" | "route" | "httproutes" => Ok(StatKind::Routes),
            "rules" | "rule" => Ok(StatKind::Rules),
            other => Err(format!(
                "{other:?} is not something skein stat reads; use services, workloads, routes or rules"
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
    audited: u64,
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

    /// Sums saturate: what proxies report is never a reason to panic or wrap.
    fn request(&mut self, k: &ReqKey, v: &ReqAgg) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.requests, v.count);
        add(&mut self.retries, v.retries);
        if k.tls {
            add(&mut self.tls_requests, v.count);
        }
        if &*k.error == "denied" {
            add(&mut self.denied, v.count);
        } else if k.status >= 500 || k.grpc_status.is_some_and(|g| g != 0) {
            add(&mut self.failures, v.count);
        }
        v.latency.add_to(&mut self.latency);
        add(&mut self.request_bytes, v.request_bytes);
        add(&mut self.response_bytes, v.response_bytes);
    }

    /// Counts what a pathway's authorization only audited.
    fn audited(&mut self, v: &super::PathAgg) {
        self.audited = self.audited.saturating_add(v.audited);
    }

    /// Adds another part's sums (the same row, summed over other proxies).
    fn merge(&mut self, o: &Acc) {
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.requests, o.requests);
        add(&mut self.failures, o.failures);
        add(&mut self.denied, o.denied);
        add(&mut self.audited, o.audited);
        add(&mut self.retries, o.retries);
        add(&mut self.tls_requests, o.tls_requests);
        super::add_latency(&mut self.latency, &o.latency);
        add(&mut self.request_bytes, o.request_bytes);
        add(&mut self.response_bytes, o.response_bytes);
        self.tcp.merge(&o.tcp);
        add(&mut self.tls_connections, o.tls_connections);
        self.covered_since = match (self.covered_since, o.covered_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn connection(&mut self, k: &TcpKey, v: &TcpAgg) {
        self.tcp.merge(v);
        if k.tls {
            self.tls_connections = self.tls_connections.saturating_add(v.opened);
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
    /// Requests and connections authorization let through only because it is auditing
    /// (a `defaultPolicy: audit` mesh or an `audit` policy): would-be denials.
    pub audited: u64,
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
            audited: self.audited,
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

/// What a `stat` or `series` row is of; rows are answered in this order (namespace,
/// name, then a route's rules by number).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowId {
    /// Namespace.
    pub namespace: String,
    /// The service, workload or route (`namespace/name` for routes and rules).
    pub name: String,
    /// The rule's index in the route (`rules` rows; none: the proxy named no rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The workload's service, or the route's parent service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One row of `skein stat`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatRow {
    /// What the row is of.
    #[serde(flatten)]
    pub id: RowId,
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

/// Rows being summed, each found by `N` labels. The view interns its labels, so the same
/// text is the same allocation: the few keys used last are recognised by address, and
/// most series (a proxy's inbound series all count in one service's row) find their row
/// without comparing text or touching a reference count. A key is copied only for a new
/// row or after a miss.
struct Rows<const N: usize, V> {
    index: BTreeMap<[Label; N], usize>,
    rows: Vec<([Label; N], V)>,
    recent: [usize; RECENT],
    next: usize,
}

/// Keys [`Rows`] recognises by address.
const RECENT: usize = 8;

impl<const N: usize, V> Rows<N, V> {
    fn new() -> Self {
        Rows {
            index: BTreeMap::new(),
            rows: Vec::new(),
            recent: [usize::MAX; RECENT],
            next: 0,
        }
    }

    /// The row of `key`, made with `new` if there is none.
    fn get(&mut self, key: [&Label; N], new: impl FnOnce() -> V) -> &mut V {
        let i = self.find(key, usize::MAX, new);
        &mut self.rows[i.unwrap_or_default()].1
    }

    /// The row of `key`, made with `new` if there is none and fewer than `most` rows;
    /// `None` when there is no room for it.
    fn get_within(
        &mut self,
        key: [&Label; N],
        most: usize,
        new: impl FnOnce() -> V,
    ) -> Option<&mut V> {
        let i = self.find(key, most, new)?;
        Some(&mut self.rows[i].1)
    }

    /// The index of `key`'s row, made if there is room.
    fn find(&mut self, key: [&Label; N], most: usize, new: impl FnOnce() -> V) -> Option<usize> {
        let same = |row: &[Label; N]| row.iter().zip(key).all(|(a, b)| Arc::ptr_eq(a, b));
        let hit = self
            .recent
            .iter()
            .copied()
            .find(|&i| self.rows.get(i).is_some_and(|(k, _)| same(k)));
        if hit.is_some() {
            return hit;
        }
        let owned = key.map(Label::clone);
        let i = match self.index.get(&owned) {
            Some(&i) => i,
            None if self.rows.len() >= most => return None,
            None => {
                self.rows.push((owned.clone(), new()));
                self.index.insert(owned, self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        self.recent[self.next] = i;
        self.next = (self.next + 1) % RECENT;
        Some(i)
    }

    /// Adds `other`'s rows to these, merging rows of the same key with `merge`.
    fn absorb(&mut self, other: Rows<N, V>, new: impl Fn() -> V, merge: impl Fn(&mut V, &V)) {
        for (key, v) in other.rows {
            merge(self.get(key.each_ref(), &new), &v);
        }
    }

    /// The rows, sorted by key.
    fn sorted(self) -> impl Iterator<Item = ([Label; N], V)> {
        let mut rows = self.rows;
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter()
    }
}

/// A row of `skein stat` while it is summed: its two-label key and its service column.
/// A route's key is (rule, route): its namespace is the start of the route's name, so the
/// first label is free to carry the rule's index ([`Fixed::rules`]; empty for a route's
/// row, or a rule the proxy did not name). [`row_id`] reads the key back.
type RowKey<'a> = ([&'a Label; 2], Option<&'a Label>);

/// Labels a query's row keys use besides the view's own.
struct Fixed {
    empty: Label,
    /// `"0"`, `"1"`, … one per rule index an HTTPRoute may have.
    rules: Vec<Label>,
}

impl Fixed {
    fn new() -> Self {
        Fixed {
            empty: Label::from(""),
            rules: (0..super::MAX_RULES)
                .map(|i| Label::from(i.to_string()))
                .collect(),
        }
    }

    fn rule(&self, rule: Option<u8>) -> &Label {
        rule.and_then(|r| self.rules.get(usize::from(r)))
            .unwrap_or(&self.empty)
    }
}

/// The row of `kind` a request series of `proxy` counts in, if any.
fn request_row<'a>(
    kind: StatKind,
    proxy: &'a super::ProxyRecord,
    k: &'a ReqKey,
    fixed: &'a Fixed,
) -> Option<RowKey<'a>> {
    match kind {
        StatKind::Routes if !k.inbound && !k.route.is_empty() => {
            Some(([&fixed.empty, &k.route], Some(&k.dst.name)))
        }
        StatKind::Rules if !k.inbound && !k.route.is_empty() => {
            Some(([fixed.rule(k.rule), &k.route], Some(&k.dst.name)))
        }
        _ if k.inbound => inbound_row(kind, proxy, &k.dst),
        _ => None,
    }
}

/// The row of `kind` a TCP series of `proxy` counts in, if any (routes carry no TCP).
fn tcp_row<'a>(kind: StatKind, proxy: &'a super::ProxyRecord, k: &'a TcpKey) -> Option<RowKey<'a>> {
    k.inbound
        .then(|| inbound_row(kind, proxy, &k.dst))
        .flatten()
}

/// The service or workload row of what `proxy` received for `dst`.
fn inbound_row<'a>(
    kind: StatKind,
    proxy: &'a super::ProxyRecord,
    dst: &'a super::Who,
) -> Option<RowKey<'a>> {
    match kind {
        StatKind::Services => Some(([&dst.namespace, &dst.name], None)),
        StatKind::Workloads => Some((
            [&proxy.workload.namespace, &proxy.workload.name],
            Some(&proxy.account),
        )),
        StatKind::Routes | StatKind::Rules => None,
    }
}

/// A summed row's key and service column, as answered.
fn row_id(kind: StatKind, [first, name]: &[Label; 2], service: Option<Label>) -> RowId {
    let (namespace, rule) = match kind {
        StatKind::Routes | StatKind::Rules => (
            name.split_once('/').map_or("", |(ns, _)| ns),
            first.parse().ok(),
        ),
        _ => (&**first, None),
    };
    RowId {
        namespace: namespace.to_string(),
        name: name.to_string(),
        rule,
        service: service.map(|s| s.to_string()),
    }
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
        let fixed = Fixed::new();
        let mut rows: Rows<2, (Option<Label>, Acc)> = Rows::new();
        self.each_slot(window_start(now, window), |proxy, slot: &Slot| {
            for (k, v) in &slot.requests {
                if let Some((at, service)) = request_row(kind, proxy, k, &fixed) {
                    let row = rows.get(at, || (service.cloned(), Acc::default()));
                    row.1.from(proxy).request(k, v);
                }
            }
            for (k, v) in &slot.tcp {
                if let Some((at, service)) = tcp_row(kind, proxy, k) {
                    let row = rows.get(at, || (service.cloned(), Acc::default()));
                    row.1.from(proxy).connection(k, v);
                }
            }
            for (k, v) in slot.pathways.iter().filter(|(_, v)| v.audited > 0) {
                if let Some((at, service)) = inbound_row(kind, proxy, &k.dst) {
                    let row = rows.get(at, || (service.cloned(), Acc::default()));
                    row.1.from(proxy).audited(v);
                }
            }
        });
        let mut rows: Vec<StatRow> = rows
            .sorted()
            .filter(|([_, n], _)| name.is_none_or(|want| &**n == want))
            .map(|(at, (service, acc))| StatRow {
                id: row_id(kind, &at, service),
                signals: acc.signals(window, now),
            })
            .collect();
        // Rules rows are keyed rule first: in the answer a route's rules follow each other.
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }

    /// `skein edges [SERVICE]`: one row per caller account → service pair seen by the
    /// callee's proxy in the window; `service` keeps the edges into or out of it.
    pub fn edges(&self, service: Option<&str>, window: Duration, now: i64) -> Vec<EdgeRow> {
        let (_, edges) = self.inbound(false, window, now);
        edge_rows(edges, service, window, now)
    }

    /// [`Central::edges`] with the pass split over `threads` (the same answer).
    #[cfg(test)]
    pub(super) fn edges_split(&self, window: Duration, now: i64, threads: usize) -> Vec<EdgeRow> {
        let (_, edges) = self.inbound_split(false, window, now, threads);
        edge_rows(edges, None, window, now)
    }

    /// One pass over the window's inbound series (what callees' proxies saw): each
    /// caller → service pair's row and, with `services`, each service's row. A long window
    /// reads hundreds of thousands of series-slots scattered over memory (its time goes to
    /// cache misses, not arithmetic), so the proxies are split over up to
    /// [`PASS_THREADS`] threads and their rows merged.
    fn inbound(&self, services: bool, window: Duration, now: i64) -> (Rows<2, Acc>, Rows<4, Acc>) {
        let threads = split_threads(window.as_secs() as i64);
        self.inbound_split(services, window, now, threads)
    }

    /// [`Central::inbound`] split over `threads`.
    fn inbound_split(
        &self,
        services: bool,
        window: Duration,
        now: i64,
        threads: usize,
    ) -> (Rows<2, Acc>, Rows<4, Acc>) {
        let from = window_start(now, window);
        self.each_part(
            from,
            threads,
            |part| inbound_pass(part, services, from),
            |mut a, b| {
                a.0.absorb(b.0, Acc::default, Acc::merge);
                a.1.absorb(b.1, Acc::default, Acc::merge);
                a
            },
        )
    }
}

/// Threads a long pass over the central view is split over at most. Each part holds its
/// own rows until they are merged, so a split series holds up to this many times its
/// rows' memory.
pub const PASS_THREADS: usize = 2;

/// Windows of at least this many slots (10 minutes) are read by split passes.
const SPLIT_FROM_SLOTS: i64 = 60;

/// The threads a pass over a window of `seconds` is split over: one for a short window,
/// else one per core up to [`PASS_THREADS`].
fn split_threads(seconds: i64) -> usize {
    if seconds >= SPLIT_FROM_SLOTS * SLOT_SECS {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(PASS_THREADS))
    } else {
        1
    }
}

/// The inbound rows of `proxies`' slots from `from` on.
fn inbound_pass(
    proxies: &[&super::ProxyRecord],
    services: bool,
    from: i64,
) -> (Rows<2, Acc>, Rows<4, Acc>) {
    let mut by_service: Rows<2, Acc> = Rows::new();
    let mut by_edge: Rows<4, Acc> = Rows::new();
    for proxy in proxies {
        for slot in proxy.slots.iter().filter(|s| s.start >= from) {
            for (k, v) in slot.requests.iter().filter(|(k, _)| k.inbound) {
                let (src, dst) = (&k.src, &k.dst);
                let pair = [&src.namespace, &src.name, &dst.namespace, &dst.name];
                by_edge.get(pair, Acc::default).from(proxy).request(k, v);
                if services {
                    let at = [&dst.namespace, &dst.name];
                    by_service.get(at, Acc::default).from(proxy).request(k, v);
                }
            }
            for (k, v) in slot.tcp.iter().filter(|(k, _)| k.inbound) {
                let (src, dst) = (&k.src, &k.dst);
                let pair = [&src.namespace, &src.name, &dst.namespace, &dst.name];
                by_edge.get(pair, Acc::default).from(proxy).connection(k, v);
                if services {
                    let at = [&dst.namespace, &dst.name];
                    by_service
                        .get(at, Acc::default)
                        .from(proxy)
                        .connection(k, v);
                }
            }
            for (k, v) in slot.pathways.iter().filter(|(_, v)| v.audited > 0) {
                let (src, dst) = (&k.src, &k.dst);
                let pair = [&src.namespace, &src.name, &dst.namespace, &dst.name];
                by_edge.get(pair, Acc::default).from(proxy).audited(v);
                if services {
                    let at = [&dst.namespace, &dst.name];
                    by_service.get(at, Acc::default).from(proxy).audited(v);
                }
            }
        }
    }
    (by_service, by_edge)
}

/// The edge rows of summed `edges`, those into or out of `service` if given.
fn edge_rows(
    edges: Rows<4, Acc>,
    service: Option<&str>,
    window: Duration,
    now: i64,
) -> Vec<EdgeRow> {
    edges
        .sorted()
        .filter(|([_, src, _, dst], _)| service.is_none_or(|s| &**src == s || &**dst == s))
        .map(|([src_namespace, src, dst_namespace, dst], acc)| EdgeRow {
            src_namespace: src_namespace.to_string(),
            src: src.to_string(),
            dst_namespace: dst_namespace.to_string(),
            dst: dst.to_string(),
            signals: acc.signals(window, now),
        })
        .collect()
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
        // Services and edges from one pass over the window (the same rows as `stat
        // services` and `edges`).
        let (services, edges) = self.inbound(true, window, now);
        let edges = edge_rows(edges, None, window, now);
        let mut nodes: BTreeMap<(String, String), Option<Signals>> = services
            .sorted()
            .map(|([ns, name], acc)| {
                (
                    (ns.to_string(), name.to_string()),
                    Some(acc.signals(window, now)),
                )
            })
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

/// One row's golden signals step by step over a window, as columns (what a chart draws):
/// index `i` of each column is the step starting at [`Series::t`]`[i]`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesRow {
    /// What the row is of.
    #[serde(flatten)]
    pub id: RowId,
    /// Requests per second.
    pub rps: Vec<f64>,
    /// Share of requests that did not fail (none: no requests in the step).
    pub success_rate: Vec<Option<f64>>,
    /// Median latency to response headers, in milliseconds.
    pub p50_ms: Vec<Option<f64>>,
    /// 99th percentile.
    pub p99_ms: Vec<Option<f64>>,
    /// Requests authorization denied.
    pub denied: Vec<u64>,
    /// Opaque TCP connections opened.
    pub tcp_connections: Vec<u64>,
}

/// `GET /api/v1/series/KIND`: every row's signals over a window in steps.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    /// Unix second each step starts at, oldest first. Only whole 10 s slots count: the
    /// window ends where the slot under way begins (its summaries are still arriving).
    pub t: Vec<i64>,
    /// Seconds per step (a multiple of the 10 s slot).
    pub step_seconds: i64,
    /// One per service, workload or route with traffic in the window, sorted; at most
    /// [`MAX_SERIES_ROWS`].
    pub rows: Vec<SeriesRow>,
    /// Whether rows beyond [`MAX_SERIES_ROWS`] were left out (ask for one by name).
    pub truncated: bool,
}

/// Rows a series answers at most: each holds a histogram per step, so the bound keeps
/// one answer's memory in tens of megabytes, whatever the labels proxies report.
pub const MAX_SERIES_ROWS: usize = 500;

/// `x` rounded to `digits` decimals: charts need no more, and the answer stays small.
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

impl Central {
    /// Rows of `kind` (only `namespace`/`name` if given) over the `window` of whole slots
    /// ending where the slot under way at `now` begins, in steps of `step` (rounded up to
    /// whole 10 s slots). A step's rate divides by the part of it in the window that its
    /// proxies' reports cover.
    pub fn series(
        &self,
        kind: StatKind,
        only: (Option<&str>, Option<&str>),
        window: Duration,
        step: Duration,
        now: i64,
    ) -> Series {
        let threads = split_threads(window.as_secs() as i64);
        self.series_split(kind, only, window, step, now, threads)
    }

    /// [`Central::series`] with its pass split over `threads` (the same answer).
    pub(super) fn series_split(
        &self,
        kind: StatKind,
        only: (Option<&str>, Option<&str>),
        window: Duration,
        step: Duration,
        now: i64,
        threads: usize,
    ) -> Series {
        let end = now - now.rem_euclid(SLOT_SECS);
        let start = window_start(end - 1, window);
        let step_seconds = step
            .as_secs()
            .clamp(SLOT_SECS as u64, MAX_WINDOW.as_secs())
            .next_multiple_of(SLOT_SECS as u64) as i64;
        let steps = ((end - start + step_seconds - 1) / step_seconds).max(1) as usize;
        let fixed = Fixed::new();
        let wanted = |[ns, name]: &[&Label; 2]| {
            let ns = match kind {
                StatKind::Routes | StatKind::Rules => name.split_once('/').map_or("", |(ns, _)| ns),
                _ => ns,
            };
            only.0.is_none_or(|want| ns == want) && only.1.is_none_or(|want| &***name == want)
        };
        type Part = (Rows<2, (Option<Label>, Vec<Acc>)>, bool);
        let fresh = || (0..steps).map(|_| Acc::default()).collect::<Vec<_>>();
        let pass = |proxies: &[&super::ProxyRecord]| -> Part {
            let mut rows = Rows::new();
            let mut truncated = false;
            for proxy in proxies {
                for slot in proxy
                    .slots
                    .iter()
                    .filter(|s| s.start >= start && s.start < end)
                {
                    let Ok(i) = usize::try_from((slot.start - start) / step_seconds) else {
                        continue;
                    };
                    if i >= steps {
                        continue;
                    }
                    for (k, v) in &slot.requests {
                        if let Some((at, service)) =
                            request_row(kind, proxy, k, &fixed).filter(|r| wanted(&r.0))
                        {
                            match rows
                                .get_within(at, MAX_SERIES_ROWS, || (service.cloned(), fresh()))
                            {
                                Some(row) => row.1[i].from(proxy).request(k, v),
                                None => truncated = true,
                            }
                        }
                    }
                    for (k, v) in &slot.tcp {
                        if let Some((at, service)) =
                            tcp_row(kind, proxy, k).filter(|r| wanted(&r.0))
                        {
                            match rows
                                .get_within(at, MAX_SERIES_ROWS, || (service.cloned(), fresh()))
                            {
                                Some(row) => row.1[i].from(proxy).connection(k, v),
                                None => truncated = true,
                            }
                        }
                    }
                }
            }
            (rows, truncated)
        };
        // Parts' rows merged step by step, still at most MAX_SERIES_ROWS.
        let join = |(mut rows, mut truncated): Part, (more, cut): Part| -> Part {
            truncated |= cut;
            for (key, (service, accs)) in more.rows {
                let keep = rows.get_within(key.each_ref(), MAX_SERIES_ROWS, || {
                    (service.clone(), fresh())
                });
                match keep {
                    Some(row) => row.1.iter_mut().zip(&accs).for_each(|(a, b)| a.merge(b)),
                    None => truncated = true,
                }
            }
            (rows, truncated)
        };
        let (rows, truncated) = self.each_part(start, threads, pass, join);
        if truncated && threads > 1 {
            // Each part admitted its own first rows: a row one part admitted may have
            // been left out of another, short of what one pass would have summed. Rare
            // (over MAX_SERIES_ROWS rows), so the one pass is run instead.
            return self.series_split(kind, only, window, step, now, 1);
        }
        let t: Vec<i64> = (0..steps as i64)
            .map(|i| start + i * step_seconds)
            .collect();
        let mut rows: Vec<SeriesRow> = rows
            .sorted()
            .map(|(at, (service, accs))| {
                let mut row = SeriesRow {
                    id: row_id(kind, &at, service),
                    rps: Vec::with_capacity(steps),
                    success_rate: Vec::with_capacity(steps),
                    p50_ms: Vec::with_capacity(steps),
                    p99_ms: Vec::with_capacity(steps),
                    denied: Vec::with_capacity(steps),
                    tcp_connections: Vec::with_capacity(steps),
                };
                for (acc, &from) in accs.iter().zip(&t) {
                    let begin = acc.covered_since.map_or(from, |c| c.max(from));
                    let secs = ((from + step_seconds).min(end) - begin).max(1) as f64;
                    let ms = |q| {
                        acc.latency
                            .quantile(q)
                            .map(|d| round(d.as_secs_f64() * 1e3, 2))
                    };
                    row.rps.push(round(acc.requests as f64 / secs, 3));
                    row.success_rate.push(
                        (acc.requests > 0)
                            .then(|| round(1.0 - acc.failures as f64 / acc.requests as f64, 4)),
                    );
                    row.p50_ms.push(ms(0.5));
                    row.p99_ms.push(ms(0.99));
                    row.denied.push(acc.denied);
                    row.tcp_connections.push(acc.tcp.opened);
                }
                row
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Series {
            t,
            step_seconds,
            rows,
            truncated,
        }
    }
}

//! The central view of the mesh's golden signals: every proxy's summaries (deltas sent on
//! its `Sync` stream every few seconds), kept in memory as a rolling hour of 10-second
//! slots per proxy, and queried across proxies ([`query`]): per service, workload, route
//! and edge, over a chosen window. No Prometheus needed.
//!
//! Trust: a summary is what its proxy observed, attributed to the workload its stream
//! registered under its certificate. Its inbound series are recorded as calls to that
//! workload's service and its outbound series as calls from its account, whatever the
//! labels say; callers of inbound series are the accounts that proxy verified. Slots are
//! placed by the control plane's clock, never the proxy's.
//!
//! Memory is bounded: at most [`MAX_SERIES_PER_SLOT`] series per proxy per slot (more
//! fold into one `other` series), at most [`MAX_ENTRIES_PER_PROXY`] series-slots per
//! proxy (the oldest slots go first), label values interned up to [`MAX_VALUES`]
//! distinct ones, and proxies silent for longer than the window are forgotten.

pub mod query;
pub mod suggest;
pub mod traces;
pub mod why;

use skein_api::v1 as pb;
use skein_model::latency::{Snapshot, BUCKETS};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

/// Seconds per slot.
pub const SLOT_SECS: i64 = 10;

/// Slots kept per proxy: one hour.
pub const WINDOW_SLOTS: i64 = 360;

/// Request or TCP series per proxy per slot; more fold into `other`.
pub const MAX_SERIES_PER_SLOT: usize = 256;

/// Series-slots kept per proxy (about 1 MiB at most); beyond, the oldest slots go.
pub const MAX_ENTRIES_PER_PROXY: usize = 4096;

/// Distinct label values interned; later ones read `other`.
pub const MAX_VALUES: usize = 8192;

/// The histogram layout this control plane reads (`skein_model::latency`).
pub const BUCKET_LAYOUT: u32 = 1;

/// Rules an HTTPRoute has at most: a rule index a proxy reports at or past it is dropped.
pub const MAX_RULES: usize = skein_model::resource::MAX_RULES;

/// What excess or unknown label values fold into.
pub const OTHER: &str = "other";

/// Seconds since the Unix epoch on this control plane's clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A label value, shared by every slot that mentions it.
pub type Label = Arc<str>;

/// A namespaced name: an account or a service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Who {
    /// Its namespace.
    pub namespace: Label,
    /// Its name.
    pub name: Label,
}

/// The workload whose proxy sent a summary, as its stream registered it.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// Namespace.
    pub namespace: String,
    /// Workload name.
    pub workload: String,
    /// Its service account, which is also the service it registered for.
    pub account: String,
}

/// Labels of a request series, as the control plane keeps them.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct ReqKey {
    /// Recorded by the callee's proxy.
    pub inbound: bool,
    /// The peer was verified by mutual TLS.
    pub tls: bool,
    /// The caller's account.
    pub src: Who,
    /// The service called.
    pub dst: Who,
    /// The HTTPRoute, or empty.
    pub route: Label,
    /// The route's rule (outbound series through a route), below [`MAX_RULES`].
    pub rule: Option<u8>,
    /// The HTTP status (a class × 100 when the proxy folded it).
    pub status: u16,
    /// The gRPC status, for gRPC.
    pub grpc_status: Option<u8>,
    /// Why the mesh answered itself, or empty.
    pub error: Label,
}

/// Labels of a TCP edge series.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct TcpKey {
    /// Recorded by the callee's proxy.
    pub inbound: bool,
    /// The peer was verified by mutual TLS.
    pub tls: bool,
    /// The caller's account.
    pub src: Who,
    /// The service called.
    pub dst: Who,
}

/// Labels of a pathway: a caller reaching a port of a service with a method under a path
/// prefix (empty method and prefix: a TCP tunnel).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PathKey {
    /// The caller's verified account.
    pub src: Who,
    /// The service called.
    pub dst: Who,
    /// The application port.
    pub port: u16,
    /// The method, `*`, or empty for TCP.
    pub method: Label,
    /// The path prefix, or empty for TCP.
    pub prefix: Label,
}

/// A latency histogram with only its non-empty buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sparse {
    buckets: Vec<(u8, u64)>,
    sum_us: u64,
}

impl Sparse {
    /// From a summary's histogram; buckets outside the layout are ignored.
    fn from_pb(h: Option<&pb::Histogram>) -> Sparse {
        let Some(h) = h else {
            return Sparse::default();
        };
        let mut s = Sparse {
            buckets: Vec::new(),
            sum_us: h.sum_us,
        };
        for (&b, &n) in h.buckets.iter().zip(&h.counts) {
            if (b as usize) < BUCKETS && n > 0 {
                s.add_one(b as u8, n);
            }
        }
        s
    }

    fn add_one(&mut self, bucket: u8, n: u64) {
        match self.buckets.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
            Err(i) => self.buckets.insert(i, (bucket, n)),
        }
    }

    fn merge(&mut self, other: &Sparse) {
        for &(b, n) in &other.buckets {
            self.add_one(b, n);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Adds these observations to a full histogram.
    pub fn add_to(&self, into: &mut Snapshot) {
        for &(b, n) in &self.buckets {
            let c = &mut into.counts[b as usize];
            *c = c.saturating_add(n);
        }
        into.sum_us = into.sum_us.saturating_add(self.sum_us);
    }
}

/// A request series' values in one slot.
#[derive(Debug, Clone, Default)]
pub struct ReqAgg {
    /// Requests.
    pub count: u64,
    /// Tries beyond the first.
    pub retries: u64,
    /// Time to response headers.
    pub latency: Sparse,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

impl ReqAgg {
    fn merge(&mut self, o: &ReqAgg) {
        self.count = self.count.saturating_add(o.count);
        self.retries = self.retries.saturating_add(o.retries);
        self.latency.merge(&o.latency);
        self.request_bytes = self.request_bytes.saturating_add(o.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(o.response_bytes);
    }
}

/// A pathway's counts in one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathAgg {
    /// Requests and tunnels along it.
    pub count: u64,
    /// Of them, those let through only because authorization is auditing (would-be
    /// denials).
    pub audited: u64,
}

/// A TCP series' values in one slot.
#[derive(Debug, Clone, Default)]
pub struct TcpAgg {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed.
    pub closed: u64,
    /// Bytes client → server.
    pub sent: u64,
    /// Bytes server → client.
    pub received: u64,
    /// Connection lifetimes.
    pub duration: Sparse,
}

impl TcpAgg {
    fn merge(&mut self, o: &TcpAgg) {
        self.opened = self.opened.saturating_add(o.opened);
        self.closed = self.closed.saturating_add(o.closed);
        self.sent = self.sent.saturating_add(o.sent);
        self.received = self.received.saturating_add(o.received);
        self.duration.merge(&o.duration);
    }
}

/// Ten seconds of one proxy's traffic.
#[derive(Debug, Default)]
pub struct Slot {
    /// Unix second the slot starts at (a multiple of [`SLOT_SECS`]).
    pub start: i64,
    /// Request series.
    pub requests: HashMap<ReqKey, ReqAgg>,
    /// TCP edge series.
    pub tcp: HashMap<TcpKey, TcpAgg>,
    /// Pathways authorization let through, with their counts.
    pub pathways: HashMap<PathKey, PathAgg>,
}

impl Slot {
    fn entries(&self) -> usize {
        self.requests.len() + self.tcp.len() + self.pathways.len()
    }
}

/// How much history the central view holds ([`Central::history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// How far back it keeps: [`WINDOW_SLOTS`] × [`SLOT_SECS`].
    pub window_seconds: i64,
    /// How far back its oldest slot goes (0 with none): at `window_seconds` it is full.
    pub seconds: i64,
    /// Series-slots held in all (each at most [`MAX_ENTRIES_PER_PROXY`] per proxy).
    pub series_slots: usize,
}

/// One proxy's rolling hour.
#[derive(Debug)]
pub struct ProxyRecord {
    /// The workload (namespace, name).
    pub workload: Who,
    /// Its account, which is its service.
    pub account: Label,
    /// Oldest first.
    pub slots: VecDeque<Slot>,
    /// When its last summary arrived (unix seconds).
    pub last_seen: i64,
    /// Since when its summaries cover its traffic: its first summary's arrival less
    /// one summary interval (unix seconds).
    pub covered_since: i64,
    /// Every request its proxy received (inbound) since the record began, authorization
    /// denials aside: what canary analysis takes differences of.
    pub served: Served,
}

/// Requests a workload served, summed since its record began (monotonic).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Served {
    /// Requests.
    pub requests: u64,
    /// Requests answered 5xx or with a failed gRPC status.
    pub failures: u64,
    /// Their latency to response headers.
    pub latency: Snapshot,
}

impl Served {
    /// What was served between `earlier` and `self` (a reset counts from zero).
    pub fn since(&self, earlier: &Served) -> Served {
        if self.requests < earlier.requests || self.failures < earlier.failures {
            return self.clone();
        }
        Served {
            requests: self.requests - earlier.requests,
            failures: self.failures - earlier.failures,
            latency: self.latency.since(&earlier.latency),
        }
    }

    /// Adds `other`'s requests.
    pub fn add(&mut self, other: &Served) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        add_latency(&mut self.latency, &other.latency);
    }
}

/// Adds `from`'s observations to `into`, saturating: what proxies report is never a
/// reason to wrap.
pub(crate) fn add_latency(into: &mut Snapshot, from: &Snapshot) {
    for (a, b) in into.counts.iter_mut().zip(&from.counts) {
        *a = a.saturating_add(*b);
    }
    into.sum_us = into.sum_us.saturating_add(from.sum_us);
}

impl ProxyRecord {
    fn entries(&self) -> usize {
        self.slots.iter().map(Slot::entries).sum()
    }
}

/// Why a summary was not taken in.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Its histograms use buckets this control plane does not know.
    #[error("the summary's histograms use bucket layout {0}; this control plane reads layout {BUCKET_LAYOUT}: upgrade the control plane before its proxies")]
    Layout(u32),
}

/// Every proxy's rolling hour.
#[derive(Debug, Default)]
pub struct Central {
    proxies: RwLock<HashMap<(String, String), ProxyRecord>>,
    values: Mutex<HashSet<Label>>,
    /// When silent proxies were last forgotten (once per slot, not per summary).
    last_sweep: std::sync::atomic::AtomicI64,
    /// What proxies decided about requests the mesh failed or retried (`skein why`).
    pub why: why::Why,
    /// Recent traces (`skein trace`).
    pub traces: traces::Traces,
    /// Summaries taken in so far: what tells a watcher (the dashboard) that the signals
    /// changed.
    ingested: std::sync::atomic::AtomicU64,
}

impl Central {
    /// An empty view.
    pub fn new() -> Arc<Central> {
        Arc::new(Central::default())
    }

    fn intern(&self, values: &mut HashSet<Label>, v: &str) -> Label {
        if let Some(l) = values.get(v) {
            return l.clone();
        }
        if values.len() >= MAX_VALUES {
            return values.get(OTHER).cloned().unwrap_or_else(|| OTHER.into());
        }
        let l: Label = v.into();
        values.insert(l.clone());
        l
    }

    fn who(&self, values: &mut HashSet<Label>, a: Option<&pb::Account>) -> Who {
        let (ns, name) = a.map_or(("", "unknown"), |a| (&*a.namespace, &*a.name));
        Who {
            namespace: self.intern(values, ns),
            name: self.intern(values, name),
        }
    }

    /// Takes in one summary from `from`'s proxy, received at `now` (unix seconds).
    pub fn ingest(&self, from: &Reporter, s: &pb::Summary, now: i64) -> Result<(), IngestError> {
        if s.bucket_layout != BUCKET_LAYOUT {
            return Err(IngestError::Layout(s.bucket_layout));
        }
        self.ingested
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Before the lock on every proxy's record: its own lock only.
        self.why.add(
            &format!("{}/{}", from.namespace, from.workload),
            &s.decisions,
        );
        if !s.spans.is_empty() {
            let origin = traces::Origin::Proxy {
                namespace: &from.namespace,
                service: &from.account,
                workload: &from.workload,
            };
            let n = s.spans.len().min(traces::PER_SUMMARY);
            if let Some(r) = self.traces.add_proxy(origin, &s.spans[..n]) {
                tracing::debug!(workload = %from.workload, spans = r.spans, why = %r.why, "refused spans from a proxy");
            }
        }
        let start = now - now.rem_euclid(SLOT_SECS);
        let mut proxies = self.proxies.write().unwrap_or_else(|p| p.into_inner());
        let swept = &self.last_sweep;
        if now - swept.load(std::sync::atomic::Ordering::Relaxed) >= SLOT_SECS {
            swept.store(now, std::sync::atomic::Ordering::Relaxed);
            proxies.retain(|_, p| p.last_seen >= now - WINDOW_SLOTS * SLOT_SECS);
        }

        let key = (from.namespace.clone(), from.workload.clone());
        let record = proxies.entry(key).or_insert_with(|| ProxyRecord {
            workload: Who {
                namespace: from.namespace.as_str().into(),
                name: from.workload.as_str().into(),
            },
            account: from.account.as_str().into(),
            slots: VecDeque::new(),
            last_seen: now,
            covered_since: now - i64::from(s.interval_ms.div_ceil(1000)),
            served: Served::default(),
        });
        record.last_seen = now;
        if record.slots.back().is_none_or(|last| last.start != start) {
            record.slots.push_back(Slot {
                start,
                ..Slot::default()
            });
        }
        for r in s
            .requests
            .iter()
            .filter(|r| r.inbound && r.error != "denied")
        {
            // Saturating: a proxy's counts are its own word, never a reason to panic.
            let served = &mut record.served;
            served.requests = served.requests.saturating_add(r.count);
            let failed = r.status_code >= 500
                || (r.status_code == 0 && r.status_class >= 5)
                || r.grpc_status.is_some_and(|g| g != 0);
            if failed {
                served.failures = served.failures.saturating_add(r.count);
            }
            Sparse::from_pb(r.latency.as_ref()).add_to(&mut served.latency);
        }
        let Some(slot) = record.slots.back_mut() else {
            unreachable!("pushed above")
        };
        self.add(from, s, slot);
        let oldest = start - (WINDOW_SLOTS - 1) * SLOT_SECS;
        while record.slots.front().is_some_and(|s| s.start < oldest) {
            record.slots.pop_front();
        }
        while record.entries() > MAX_ENTRIES_PER_PROXY && record.slots.len() > 1 {
            record.slots.pop_front();
        }
        Ok(())
    }

    /// Adds a summary's series to `slot`, attributed to `from`, folding past the limit.
    fn add(&self, from: &Reporter, s: &pb::Summary, slot: &mut Slot) {
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let own = Who {
            namespace: self.intern(&mut values, &from.namespace),
            name: self.intern(&mut values, &from.account),
        };
        let other = Who {
            namespace: self.intern(&mut values, OTHER),
            name: self.intern(&mut values, OTHER),
        };
        // Inbound: a call to this workload's service; outbound: a call from its account.
        let mut ends = |inbound: bool, src: Option<&pb::Account>, dst: Option<&pb::Account>| {
            if inbound {
                (self.who(&mut values, src), own.clone())
            } else {
                (own.clone(), self.who(&mut values, dst))
            }
        };
        let mut requests = Vec::with_capacity(s.requests.len());
        for r in &s.requests {
            let (src, dst) = ends(r.inbound, r.src.as_ref(), r.dst.as_ref());
            requests.push((r, src, dst));
        }
        let mut tcp = Vec::with_capacity(s.tcp.len());
        for t in &s.tcp {
            let (src, dst) = ends(t.inbound, t.src.as_ref(), t.dst.as_ref());
            tcp.push((t, src, dst));
        }
        let mut pathways = Vec::with_capacity(s.pathways.len());
        for p in &s.pathways {
            let (src, _) = ends(true, p.src.as_ref(), None);
            pathways.push((p, src));
        }
        for (r, src, dst) in requests {
            let status = match (r.status_code, r.status_class) {
                (0, class) => (class.min(9) * 100) as u16,
                (code, _) => code.min(999) as u16,
            };
            let mut key = ReqKey {
                inbound: r.inbound,
                tls: r.tls,
                src,
                dst,
                route: self.intern(&mut values, &r.route),
                rule: r
                    .rule
                    .filter(|&n| !r.inbound && !r.route.is_empty() && (n as usize) < MAX_RULES)
                    .map(|n| n as u8),
                status,
                grpc_status: r.grpc_status.and_then(|g| u8::try_from(g).ok()),
                error: self.intern(&mut values, &r.error),
            };
            if slot.requests.len() >= MAX_SERIES_PER_SLOT && !slot.requests.contains_key(&key) {
                key.src = other.clone();
                key.route = other.name.clone();
                key.rule = None;
                key.error = other.name.clone();
                if !key.inbound {
                    key.dst = other.clone();
                }
            }
            slot.requests.entry(key).or_default().merge(&ReqAgg {
                count: r.count,
                retries: r.retries,
                latency: Sparse::from_pb(r.latency.as_ref()),
                request_bytes: r.request_bytes,
                response_bytes: r.response_bytes,
            });
        }
        for (t, src, dst) in tcp {
            let mut key = TcpKey {
                inbound: t.inbound,
                tls: t.tls,
                src,
                dst,
            };
            if slot.tcp.len() >= MAX_SERIES_PER_SLOT && !slot.tcp.contains_key(&key) {
                key.src = other.clone();
                if !key.inbound {
                    key.dst = other.clone();
                }
            }
            slot.tcp.entry(key).or_default().merge(&TcpAgg {
                opened: t.opened,
                closed: t.closed,
                sent: t.sent_bytes,
                received: t.received_bytes,
                duration: Sparse::from_pb(t.duration.as_ref()),
            });
        }
        for (p, src) in pathways {
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let mut key = PathKey {
                src,
                dst: own.clone(),
                port,
                method: self.intern(&mut values, &p.method),
                prefix: self.intern(&mut values, &p.prefix),
            };
            let full = slot.pathways.len() >= MAX_SERIES_PER_SLOT;
            if full && !slot.pathways.contains_key(&key) && !key.method.is_empty() {
                key.prefix = self.intern(&mut values, "/*");
            }
            if full && !slot.pathways.contains_key(&key) {
                key.src = other.clone();
            }
            let agg = slot.pathways.entry(key).or_default();
            agg.count = agg.count.saturating_add(p.count);
            agg.audited = agg.audited.saturating_add(p.audited.min(p.count));
        }
    }

    /// Runs `f` over every proxy's slots that start at or after `from` (unix seconds).
    pub fn each_slot(&self, from: i64, mut f: impl FnMut(&ProxyRecord, &Slot)) {
        let proxies = self.proxies.read().unwrap_or_else(|p| p.into_inner());
        for p in proxies.values() {
            for s in p.slots.iter().filter(|s| s.start >= from) {
                f(p, s);
            }
        }
    }

    /// Runs `pass` over the proxies split into `parts` shares of about the same number
    /// of slots from `from` on, each share on its own thread (the first on this one), and
    /// folds the answers with `join`. The view is read-locked throughout, as for
    /// [`Central::each_slot`].
    pub fn each_part<T: Send>(
        &self,
        from: i64,
        parts: usize,
        pass: impl Fn(&[&ProxyRecord]) -> T + Sync,
        join: impl Fn(T, T) -> T,
    ) -> T {
        let proxies = self.proxies.read().unwrap_or_else(|p| p.into_inner());
        let all: Vec<&ProxyRecord> = proxies.values().collect();
        let weight = |p: &ProxyRecord| p.slots.iter().filter(|s| s.start >= from).count();
        let total: usize = all.iter().map(|p| weight(p)).sum();
        let share = total.div_ceil(parts.max(1)).max(1);
        let mut shares: Vec<&[&ProxyRecord]> = Vec::with_capacity(parts);
        let (mut begin, mut taken) = (0, 0);
        for (i, p) in all.iter().enumerate() {
            taken += weight(p);
            if taken >= share && shares.len() + 1 < parts {
                shares.push(&all[begin..=i]);
                (begin, taken) = (i + 1, 0);
            }
        }
        shares.push(&all[begin..]);
        let pass = &pass;
        std::thread::scope(|scope| {
            let others: Vec<_> = shares[1..]
                .iter()
                .map(|share| scope.spawn(move || pass(share)))
                .collect();
            let mut answer = pass(shares[0]);
            for other in others {
                match other.join() {
                    Ok(part) => answer = join(answer, part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            answer
        })
    }

    /// Summaries taken in so far.
    pub fn ingested(&self) -> u64 {
        self.ingested.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How much history the view holds, as of `now` (unix seconds): it grows for the
    /// first [`WINDOW_SLOTS`] slots of traffic, then old slots go as new ones come.
    pub fn history(&self, now: i64) -> History {
        let proxies = self.proxies.read().unwrap_or_else(|e| e.into_inner());
        let oldest = proxies
            .values()
            .filter_map(|p| p.slots.front().map(|s| s.start))
            .min();
        History {
            window_seconds: WINDOW_SLOTS * SLOT_SECS,
            seconds: oldest.map_or(0, |o| (now - o).max(0)),
            series_slots: proxies
                .values()
                .flat_map(|p| p.slots.iter())
                .map(Slot::entries)
                .sum(),
        }
    }

    /// What each of `workloads` (names in `namespace`) served since its record began;
    /// workloads without a record are absent.
    pub fn served(&self, namespace: &str, workloads: &[String]) -> Vec<(String, Served)> {
        let proxies = self.proxies.read().unwrap_or_else(|p| p.into_inner());
        workloads
            .iter()
            .filter_map(|w| {
                let p = proxies.get(&(namespace.to_string(), w.clone()))?;
                Some((w.clone(), p.served.clone()))
            })
            .collect()
    }

    /// How much is held: (proxies, series-slots, interned values).
    pub fn held(&self) -> (usize, usize, usize) {
        let proxies = self.proxies.read().unwrap_or_else(|p| p.into_inner());
        let entries = proxies.values().map(ProxyRecord::entries).sum();
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner()).len();
        (proxies.len(), entries, values)
    }
}

#[cfg(test)]
mod tests;

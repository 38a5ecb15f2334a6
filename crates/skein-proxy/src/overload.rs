//! The proxy's own ceilings, so that no client, however hostile or however many, makes
//! it hold more than it was told to: connections open from its clients
//! (`limits.maxConnections`, every listener but the admin one together), requests being
//! handled (`limits.maxRequests`, from arrival to the response head, both directions),
//! and bytes of request bodies held to send again or to copy (`limits.maxBufferedBytes`).
//!
//! At a ceiling the proxy sheds new work at once, and says so: a connection is accepted
//! and closed (its client sees it close rather than wait in the kernel's backlog), a
//! request is answered `503` with `skein-error: overloaded` and the limit's name, a body
//! is sent without a held copy (so no retry and no mirror for it). Each is counted in
//! `skein_overload_shed_total{resource}` and logged at most once per 10 s per resource.
//! What the proxy already holds is served on.
//!
//! A slot is taken with one atomic add and given back by dropping it; the counts are
//! exact, so a ceiling of N admits exactly N.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a ceiling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Client connections open (`limits.maxConnections`).
    Connections,
    /// Requests being handled (`limits.maxRequests`).
    Requests,
    /// Bytes of request bodies held (`limits.maxBufferedBytes`).
    Buffers,
}

impl Resource {
    /// The label in `skein_overload_shed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Requests => "requests",
            Resource::Buffers => "buffers",
        }
    }

    /// The setting that sets its ceiling.
    pub fn setting(self) -> &'static str {
        match self {
            Resource::Connections => "limits.maxConnections",
            Resource::Requests => "limits.maxRequests",
            Resource::Buffers => "limits.maxBufferedBytes",
        }
    }
}

/// One counted resource: what is in use, and its ceiling.
#[derive(Debug)]
struct Gauge {
    used: AtomicUsize,
    max: usize,
    /// When a shed was last logged, in ms since `Overload::born` (0: never).
    logged_ms: AtomicU64,
}

impl Gauge {
    fn new(max: usize) -> Self {
        Gauge {
            used: AtomicUsize::new(0),
            max,
            logged_ms: AtomicU64::new(0),
        }
    }

    /// Takes `n` if that stays within the ceiling.
    fn take(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) <= self.max {
            return true;
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
        false
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The ceilings of one proxy.
#[derive(Debug)]
pub struct Overload {
    connections: Gauge,
    requests: Gauge,
    buffers: Gauge,
    born: Instant,
}

/// How often a shed resource is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Overload {
    /// Ceilings from the proxy's `limits`.
    pub fn new(limits: &skein_model::Limits) -> Self {
        Overload {
            connections: Gauge::new(limits.max_connections),
            requests: Gauge::new(limits.max_requests),
            buffers: Gauge::new(limits.max_buffered_bytes),
            born: Instant::now(),
        }
    }

    fn gauge(&self, r: Resource) -> &Gauge {
        match r {
            Resource::Connections => &self.connections,
            Resource::Requests => &self.requests,
            Resource::Buffers => &self.buffers,
        }
    }

    /// A client connection's slot, or `None` at the ceiling (close the connection).
    pub fn connection(self: &Arc<Self>) -> Option<Slot> {
        self.slot(Resource::Connections, 1)
    }

    /// A request's ticket, or `None` at the ceiling (answer 503). Borrowed, so the
    /// request path pays two atomic adds and nothing more.
    pub fn request(&self) -> Option<Ticket<'_>> {
        self.requests.take(1).then(|| Ticket(&self.requests))
    }

    /// `bytes` of body to hold, or `None` when they would pass the ceiling.
    pub fn buffer(self: &Arc<Self>, bytes: usize) -> Option<Slot> {
        self.slot(Resource::Buffers, bytes)
    }

    fn slot(self: &Arc<Self>, resource: Resource, n: usize) -> Option<Slot> {
        self.gauge(resource).take(n).then(|| Slot {
            overload: self.clone(),
            resource,
            n,
        })
    }

    /// In use now.
    pub fn used(&self, r: Resource) -> usize {
        self.gauge(r).used.load(Ordering::Acquire)
    }

    /// The ceiling.
    pub fn max(&self, r: Resource) -> usize {
        self.gauge(r).max
    }

    /// Whether a shed of `r` should be logged now (at most once per [`LOG_EVERY`]).
    pub fn should_log(&self, r: Resource) -> bool {
        let now = u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let g = self.gauge(r);
        let last = g.logged_ms.load(Ordering::Relaxed);
        let every = LOG_EVERY.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= every)
            && g.logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// What a shed client is told, and the log says.
    pub fn why(&self, r: Resource) -> String {
        let what = match r {
            Resource::Connections => "connections open",
            Resource::Requests => "requests in progress",
            Resource::Buffers => "bytes of request bodies held for retries and mirrors",
        };
        format!(
            "skein: this proxy holds {} {what}, its ceiling ({} {}); it sheds new ones until some finish: retry shortly, or raise {}",
            self.used(r),
            r.setting(),
            self.max(r),
            r.setting()
        )
    }
}

/// One request's share of `limits.maxRequests`, given back when dropped.
#[derive(Debug)]
pub struct Ticket<'a>(&'a Gauge);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.0.give(1);
    }
}

/// A share of one resource, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    overload: Arc<Overload>,
    resource: Resource,
    n: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.overload.gauge(self.resource).give(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overload(connections: usize, requests: usize, buffers: usize) -> Arc<Overload> {
        Arc::new(Overload::new(&skein_model::Limits {
            max_connections: connections,
            max_requests: requests,
            max_buffered_bytes: buffers,
            ..Default::default()
        }))
    }

    #[test]
    fn a_ceiling_of_n_admits_exactly_n_and_a_slot_given_back_admits_one_more() {
        let o = overload(3, 2, 100);
        let held: Vec<Slot> = (0..3).map(|_| o.connection().unwrap()).collect();
        assert!(o.connection().is_none(), "the fourth is shed");
        assert_eq!(o.used(Resource::Connections), 3, "a refusal takes nothing");
        drop(held);
        assert_eq!(o.used(Resource::Connections), 0);
        let r1 = o.request().unwrap();
        let _r2 = o.request().unwrap();
        assert!(o.request().is_none());
        assert!(o.request().is_none());
        assert_eq!(
            o.used(Resource::Requests),
            2,
            "a refusal gives nothing back"
        );
        drop(r1);
        assert!(o.request().is_some());
    }

    #[test]
    fn buffers_count_bytes_and_a_refused_share_takes_none() {
        let o = overload(16, 16, 100);
        let a = o.buffer(60).unwrap();
        assert!(o.buffer(41).is_none(), "60 + 41 passes 100");
        let b = o.buffer(40).unwrap();
        assert_eq!(o.used(Resource::Buffers), 100);
        drop((a, b));
        assert_eq!(o.used(Resource::Buffers), 0);
        assert!(overload(16, 16, 0).buffer(1).is_none(), "0 holds nothing");
    }

    #[test]
    fn the_answer_names_the_limit_and_what_to_do() {
        let o = overload(16, 16, 0);
        let why = o.why(Resource::Requests);
        assert!(
            why.contains("limits.maxRequests 16") && why.contains("raise"),
            "{why}"
        );
    }

    #[test]
    fn sheds_are_logged_once_per_interval() {
        let o = overload(16, 16, 0);
        assert!(o.should_log(Resource::Connections));
        assert!(!o.should_log(Resource::Connections), "not again at once");
        assert!(o.should_log(Resource::Requests), "each resource on its own");
    }

    #[test]
    fn concurrent_takers_never_pass_the_ceiling() {
        let o = overload(16, 4, 0);
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if let Some(slot) = o.request() {
                            let now = admitted.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= 4, "{now} admitted at once");
                            admitted.fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(o.used(Resource::Requests), 0);
    }
}

//! The proxy's own ceilings, so that no client, however hostile or however many, makes
//! it hold more than it was told to: connections open from its clients
//! (`limits.maxConnections`, for each direction: the inbound listener's, and the outbound
//! listeners' together), requests being handled (`limits.maxRequests`, from arrival to
//! the response head, for each direction), and bytes of request bodies held to send
//! again or to copy (`limits.maxBufferedBytes`). Per direction, so that callers from
//! elsewhere cannot take what the application's own calls need, nor the reverse. A
//! connection's slot lives as long as its bytes flow: an HTTP/1 upgrade or a `CONNECT`
//! tunnel that outlives the connection's task keeps it ([`ConnectionSlot`]).
//!
//! At a ceiling the proxy sheds new work at once, and says so: a connection is accepted
//! and closed (its client sees it close rather than wait in the kernel's backlog), a
//! request is answered `503` with `skein-error: overloaded` and the limit's name, a body
//! is sent without a held copy (so no retry and no mirror for it). Each is counted in
//! `skein_overload_shed_total{resource, direction}` and logged at most once per 10 s per resource.
//! What the proxy already holds is served on.
//!
//! A slot is taken with one compare-and-swap and given back by dropping it; the counts
//! are exact, so a ceiling of N admits exactly N.

use crate::metrics::Direction;
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

    /// Takes `n` if that stays within the ceiling. A compare-and-swap, so that a refused
    /// large share never makes a small one that fits look refused meanwhile.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|after| *after <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The ceilings of one proxy: connections and requests per direction (so that remote
/// callers cannot take what the local application needs, nor the reverse), and one for
/// held bodies (the outbound side holds them).
#[derive(Debug)]
pub struct Overload {
    connections: [Gauge; 2],
    requests: [Gauge; 2],
    buffers: Gauge,
    born: Instant,
}

/// The gauges' index of a direction.
fn side(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// A connection's slot, shared with what outlives the connection's own task: an HTTP/1
/// upgrade or a `CONNECT` tunnel holds it until its bytes stop flowing.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(pub Arc<Slot>);

/// How often a shed resource is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Overload {
    /// Ceilings from the proxy's `limits`.
    pub fn new(limits: &skein_model::Limits) -> Self {
        let both = |max| [Gauge::new(max), Gauge::new(max)];
        Overload {
            connections: both(limits.max_connections),
            requests: both(limits.max_requests),
            buffers: Gauge::new(limits.max_buffered_bytes),
            born: Instant::now(),
        }
    }

    /// The gauge of `r` on side `d` (held bodies have one for both).
    fn gauge(&self, r: Resource, d: Direction) -> &Gauge {
        match r {
            Resource::Connections => &self.connections[side(d)],
            Resource::Requests => &self.requests[side(d)],
            Resource::Buffers => &self.buffers,
        }
    }

    /// A client connection's slot on side `d`, or `None` at the ceiling (close the
    /// connection).
    pub fn connection(self: &Arc<Self>, d: Direction) -> Option<Slot> {
        self.slot(Resource::Connections, d, 1)
    }

    /// A request's ticket on side `d`, or `None` at the ceiling (answer 503). Borrowed,
    /// so the request path pays two atomic operations and nothing more.
    pub fn request(&self, d: Direction) -> Option<Ticket<'_>> {
        let gauge = &self.requests[side(d)];
        gauge.take(1).then(|| Ticket(gauge))
    }

    /// `bytes` of body to hold, or `None` when they would pass the ceiling.
    pub fn buffer(self: &Arc<Self>, bytes: usize) -> Option<Slot> {
        self.slot(Resource::Buffers, Direction::Outbound, bytes)
    }

    fn slot(self: &Arc<Self>, resource: Resource, d: Direction, n: usize) -> Option<Slot> {
        self.gauge(resource, d).take(n).then(|| Slot {
            overload: self.clone(),
            resource,
            direction: d,
            n,
        })
    }

    /// In use now.
    pub fn used(&self, r: Resource, d: Direction) -> usize {
        self.gauge(r, d).used.load(Ordering::Acquire)
    }

    /// The ceiling.
    pub fn max(&self, r: Resource) -> usize {
        self.gauge(r, Direction::Outbound).max
    }

    /// Whether a shed of `r` on side `d` should be logged now (at most once per
    /// [`LOG_EVERY`] for each).
    pub fn should_log(&self, r: Resource, d: Direction) -> bool {
        let now = u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let g = self.gauge(r, d);
        let last = g.logged_ms.load(Ordering::Relaxed);
        let every = LOG_EVERY.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= every)
            && g.logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// What a shed client is told, and the log says.
    pub fn why(&self, r: Resource, d: Direction) -> String {
        let side = match d {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        let what = match r {
            Resource::Connections => format!("{side} connections open"),
            Resource::Requests => format!("{side} requests in progress"),
            Resource::Buffers => "bytes of request bodies held for retries and mirrors".into(),
        };
        format!(
            "skein: this proxy holds {} {what}, its ceiling ({} {}); it sheds new ones until some finish: retry shortly, or raise {}",
            self.used(r, d),
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
    direction: Direction,
    n: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.overload
            .gauge(self.resource, self.direction)
            .give(self.n);
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
        let out = Direction::Outbound;
        let held: Vec<Slot> = (0..3).map(|_| o.connection(out).unwrap()).collect();
        assert!(o.connection(out).is_none(), "the fourth is shed");
        assert_eq!(
            o.used(Resource::Connections, out),
            3,
            "a refusal takes nothing"
        );
        assert!(
            o.connection(Direction::Inbound).is_some(),
            "the other side has its own"
        );
        drop(held);
        assert_eq!(o.used(Resource::Connections, out), 0);
        let r1 = o.request(out).unwrap();
        let _r2 = o.request(out).unwrap();
        assert!(o.request(out).is_none());
        assert!(o.request(out).is_none());
        assert_eq!(
            o.used(Resource::Requests, out),
            2,
            "a refusal gives nothing back"
        );
        assert!(o.request(Direction::Inbound).is_some());
        drop(r1);
        assert!(o.request(out).is_some());
    }

    #[test]
    fn buffers_count_bytes_and_a_refused_share_takes_none() {
        let o = overload(16, 16, 100);
        let a = o.buffer(60).unwrap();
        assert!(o.buffer(41).is_none(), "60 + 41 passes 100");
        let b = o.buffer(40).unwrap();
        assert_eq!(o.used(Resource::Buffers, Direction::Outbound), 100);
        drop((a, b));
        assert_eq!(o.used(Resource::Buffers, Direction::Inbound), 0);
        assert!(overload(16, 16, 0).buffer(1).is_none(), "0 holds nothing");
    }

    #[test]
    fn a_share_too_big_never_blocks_one_that_fits() {
        let o = overload(16, 16, 100);
        let _held = o.buffer(90).unwrap();
        assert!(o.buffer(64).is_none());
        assert!(o.buffer(10).is_some(), "10 fits beside 90");
    }

    #[test]
    fn the_answer_names_the_limit_the_side_and_what_to_do() {
        let o = overload(16, 16, 0);
        let why = o.why(Resource::Requests, Direction::Inbound);
        assert!(
            why.contains("limits.maxRequests 16") && why.contains("raise"),
            "{why}"
        );
        assert!(why.contains("0 inbound requests in progress"), "{why}");
    }

    #[test]
    fn sheds_are_logged_once_per_interval() {
        let o = overload(16, 16, 0);
        let out = Direction::Outbound;
        assert!(o.should_log(Resource::Connections, out));
        assert!(
            !o.should_log(Resource::Connections, out),
            "not again at once"
        );
        assert!(
            o.should_log(Resource::Requests, out),
            "each resource on its own"
        );
        assert!(
            o.should_log(Resource::Connections, Direction::Inbound),
            "each side on its own"
        );
    }

    #[test]
    fn concurrent_takers_never_pass_the_ceiling() {
        let o = overload(16, 4, 0);
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if let Some(slot) = o.request(Direction::Outbound) {
                            let now = admitted.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= 4, "{now} admitted at once");
                            admitted.fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(o.used(Resource::Requests, Direction::Outbound), 0);
    }
}

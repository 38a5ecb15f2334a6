//! Picking the endpoint of a destination for each request, and learning from each
//! request's outcome: load balancing, outlier detection (circuit breaking) and the
//! per-endpoint request limit of the destination's `BackendPolicy`.
//!
//! - **Peak-EWMA with power of two choices** (the default, `ewma`): of two endpoints
//!   drawn at random, the one with the lower cost, where cost is the endpoint's latency
//!   estimate × (1 + requests in flight × [`IN_FLIGHT_WEIGHT`]). The estimate jumps up to any slower response at
//!   once (the peak) and otherwise moves towards observed latencies, and decays towards
//!   zero while the endpoint is idle ([`DECAY`]), so an endpoint that was slow is tried
//!   again after a while and used again once it answers fast. `round-robin` takes each
//!   endpoint in turn; `least-request` the one of two with fewer requests in flight.
//! - **Outlier detection**: `consecutive5xx` failures in a row (5xx responses, requests
//!   that could not be delivered, tries that timed out) eject an endpoint for
//!   `baseEjectionTime` × the number of ejections in a row (at most [`MAX_STEPS`]×); it
//!   is never picked meanwhile, unless every endpoint is ejected. No more than
//!   `maxEjectionPercent` of the endpoints (but always one of two or more) are ejected at
//!   once. Back from an ejection, an endpoint is on probation: its next failure ejects
//!   it again, its next success ends the probation, and every `interval` it then stays
//!   healthy shortens its next ejection by one step.
//!
//! What is learnt about an endpoint ([`EndpointStats`]) belongs to its address and
//! identity, not to one configuration: [`Balancer::new`] carries it over from the
//! previous table, so a push from the control plane forgets nothing about endpoints that
//! stay. Pure apart from atomics and short per-endpoint locks; time is passed in.

use crate::connect::Upstream;
use skein_model::resource::{LoadBalancer, OutlierDetection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How fast an idle endpoint's latency estimate decays towards zero (the time constant),
/// as in Linkerd: an endpoint 10× slower than its peers is tried again after about 20 s
/// (sooner when its peers are busy), so it costs little while slow and is back soon
/// after it recovers.
pub const DECAY: Duration = Duration::from_secs(10);
/// How much each request in flight adds to an endpoint's cost, as a share of its latency
/// estimate. Linkerd weighs each one fully (cost = estimate × (in flight + 1)), which
/// models a server that handles one request at a time; applications serve concurrently,
/// and queueing shows in their latency anyway. Measured with `bench/run --only
/// slow-endpoint` (2 ms and 20 ms endpoints at 400 RPS): with full weight the slow one got
/// 1–10 % of requests, because a few requests in flight made the fast one look as costly
/// as the slow one's decayed estimate; see docs/BENCHMARKS.md for the figures with 1/4.
pub const IN_FLIGHT_WEIGHT: f64 = 0.25;
/// The latency assumed for an endpoint of a destination with no estimate yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The longest ejection, in multiples of `baseEjectionTime`.
pub const MAX_STEPS: u32 = 10;
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(3600);

/// What is known about one endpoint, shared by every configuration that lists it.
#[derive(Debug)]
pub struct EndpointStats {
    pending: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    /// Peak-EWMA latency estimate, in nanoseconds, as of `updated`.
    rtt_ns: f64,
    updated: Instant,
    /// Failures in a row.
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row (the multiplier of the next one's length).
    steps: u32,
    /// Back from an ejection, not yet proven healthy.
    probation: bool,
    /// Since when it has been healthy (for shortening `steps`).
    healthy_since: Instant,
    /// Whether any try to it has ended yet: one never tried costs nothing while idle, so
    /// a new endpoint gets its first request at once (but not a burst).
    observed: bool,
    /// When it was last ejected: tries sent before say nothing about it since.
    last_ejection: Option<Instant>,
}

impl EndpointStats {
    fn new(rtt_ns: f64, now: Instant) -> Self {
        EndpointStats {
            pending: AtomicU32::new(0),
            health: Mutex::new(Health {
                rtt_ns,
                updated: now,
                failures: 0,
                ejected_until: None,
                steps: 0,
                probation: false,
                healthy_since: now,
                observed: false,
                last_ejection: None,
            }),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight to the endpoint.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether it is ejected at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|t| t > now)
    }

    /// The latency estimate at `now`, decayed for the time since it was last updated.
    pub fn estimate(&self, now: Instant) -> Duration {
        let h = self.health();
        Duration::from_nanos(decayed(h.rtt_ns, h.updated, now) as u64)
    }

    fn cost(&self, now: Instant) -> f64 {
        let h = self.health();
        let pending = self.pending();
        if !h.observed && pending == 0 {
            return 0.0;
        }
        decayed(h.rtt_ns, h.updated, now) * (1.0 + f64::from(pending) * IN_FLIGHT_WEIGHT)
    }
}

/// `rtt_ns` as of `then`, decayed towards zero until `now`.
fn decayed(rtt_ns: f64, then: Instant, now: Instant) -> f64 {
    rtt_ns * decay(then, now)
}

/// The share of an estimate made at `then` still standing at `now` (time constant
/// [`DECAY`]).
fn decay(then: Instant, now: Instant) -> f64 {
    let idle = now.saturating_duration_since(then).as_secs_f64();
    (-idle / DECAY.as_secs_f64()).exp()
}

/// One endpoint of a destination.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it is and who it must prove to be.
    pub upstream: Upstream,
    stats: Arc<EndpointStats>,
}

/// An endpoint picked for one try. Counts as in flight until dropped (hold it until the
/// response ends); [`Balancer::record`] reports how the try went.
#[derive(Debug)]
pub struct Picked {
    /// The endpoint.
    pub upstream: Upstream,
    stats: Arc<EndpointStats>,
    sent: Instant,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one try to an endpoint went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that is not a 5xx.
    Success,
    /// A 5xx, a failure to deliver, or the try's timeout.
    Failure,
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// The destination has none.
    NoEndpoints,
    /// Every endpoint has `maxRequestsPerEndpoint` (this many) in flight.
    AtLimit(u32),
}

/// An ejection that a failure caused, for the log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// For how long.
    pub duration: Duration,
    /// Its ejections in a row, this one included.
    pub steps: u32,
}

/// The endpoints of one destination with the policy that picks among them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Endpoint>,
    algorithm: LoadBalancer,
    outlier: OutlierDetection,
    per_endpoint: Option<u32>,
    next: AtomicUsize,
    /// Held while deciding an ejection.
    ejecting: Mutex<()>,
}

impl Balancer {
    /// A balancer over `upstreams`, keeping what `previous` learnt about those it also
    /// had (same address and identity). New endpoints start at the mean estimate of the
    /// known ones (or [`DEFAULT_RTT`]), so they neither attract every request nor wait
    /// long for their first.
    pub fn new(
        upstreams: Vec<Upstream>,
        previous: Option<&Balancer>,
        algorithm: LoadBalancer,
        outlier: OutlierDetection,
        per_endpoint: Option<u32>,
        now: Instant,
    ) -> Balancer {
        let known = |u: &Upstream| {
            previous?
                .endpoints
                .iter()
                .find(|e| e.upstream == *u)
                .map(|e| e.stats.clone())
        };
        let kept: Vec<Option<Arc<EndpointStats>>> = upstreams.iter().map(known).collect();
        let estimates: Vec<f64> = kept
            .iter()
            .flatten()
            .map(|s| s.estimate(now).as_nanos() as f64)
            .collect();
        let start = if estimates.is_empty() {
            DEFAULT_RTT.as_nanos() as f64
        } else {
            estimates.iter().sum::<f64>() / estimates.len() as f64
        };
        let endpoints = upstreams
            .into_iter()
            .zip(kept)
            .map(|(upstream, stats)| Endpoint {
                upstream,
                stats: stats.unwrap_or_else(|| Arc::new(EndpointStats::new(start, now))),
            })
            .collect();
        Balancer {
            endpoints,
            algorithm,
            outlier,
            per_endpoint,
            next: AtomicUsize::new(0),
            ejecting: Mutex::new(()),
        }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> impl Iterator<Item = (&Upstream, &EndpointStats)> {
        self.endpoints.iter().map(|e| (&e.upstream, &*e.stats))
    }

    /// Picks the endpoint for a try, avoiding `avoid` (the one a retry follows) when
    /// another will do, and ejected endpoints unless all are. `random` is any uniformly
    /// random number.
    pub fn pick(
        &self,
        now: Instant,
        avoid: Option<SocketAddr>,
        random: u64,
    ) -> Result<Picked, NoPick> {
        if self.endpoints.is_empty() {
            return Err(NoPick::NoEndpoints);
        }
        let room = |e: &Endpoint| self.per_endpoint.is_none_or(|max| e.stats.pending() < max);
        // From the most to the least particular: a healthy endpoint other than the one
        // just tried; any healthy one; any at all.
        let tiers: [&dyn Fn(&Endpoint) -> bool; 3] = [
            &|e| room(e) && Some(e.upstream.addr) != avoid && !e.stats.ejected(now),
            &|e| room(e) && !e.stats.ejected(now),
            &|e| room(e),
        ];
        for eligible in tiers {
            let n = self.endpoints.iter().filter(|e| eligible(e)).count();
            if n == 0 {
                continue;
            }
            let nth = |i: usize| {
                self.endpoints
                    .iter()
                    .filter(|e| eligible(e))
                    .nth(i)
                    .unwrap_or(&self.endpoints[0])
            };
            let chosen = match self.algorithm {
                LoadBalancer::RoundRobin => {
                    // A retry does not move the turn, so that the next request is not
                    // pushed onto the endpoint that just failed.
                    let turn = match avoid {
                        Some(_) => self.next.load(Ordering::Relaxed),
                        None => self.next.fetch_add(1, Ordering::Relaxed),
                    };
                    nth(turn % n)
                }
                _ if n == 1 => nth(0),
                algorithm => {
                    // Two different endpoints, uniformly.
                    let a = (random % n as u64) as usize;
                    let b = (a + 1 + ((random >> 32) % (n as u64 - 1)) as usize) % n;
                    let (a, b) = (nth(a), nth(b));
                    let better = match algorithm {
                        LoadBalancer::LeastRequest => b.stats.pending() < a.stats.pending(),
                        _ => b.stats.cost(now) < a.stats.cost(now),
                    };
                    if better {
                        b
                    } else {
                        a
                    }
                }
            };
            chosen.stats.pending.fetch_add(1, Ordering::Relaxed);
            return Ok(Picked {
                upstream: chosen.upstream.clone(),
                stats: chosen.stats.clone(),
                sent: now,
            });
        }
        Err(NoPick::AtLimit(self.per_endpoint.unwrap_or(0)))
    }

    /// Learns from one try to `picked` that ended (its response headers arrived, or it
    /// failed) at `now`; returns the ejection it caused, if any.
    pub fn record(&self, picked: &Picked, now: Instant, outcome: Outcome) -> Option<Ejection> {
        let rtt = now.saturating_duration_since(picked.sent).as_nanos() as f64;
        let od = &self.outlier;
        let mut h = picked.stats.health();
        // How much of the old estimate is left after the time since it was updated: the
        // older, the more the new latency counts.
        let kept = decay(h.updated, now);
        let estimate = h.rtt_ns * kept;
        // The first observation replaces the starting guess; after that a fast failure
        // must not make an endpoint look good: failures only raise the estimate.
        let first = !h.observed && outcome == Outcome::Success;
        h.rtt_ns = if first || rtt > estimate {
            rtt
        } else if outcome == Outcome::Success {
            estimate + rtt * (1.0 - kept)
        } else {
            estimate
        };
        h.updated = now;
        h.observed = true;
        if h.last_ejection.is_some_and(|t| picked.sent < t) {
            // Sent before the endpoint's last ejection: it neither ends its probation nor
            // counts towards the next one.
            return None;
        }
        if outcome == Outcome::Success {
            h.failures = 0;
            if h.probation {
                h.probation = false;
                h.healthy_since = now;
            } else if h.steps > 0 && now.saturating_duration_since(h.healthy_since) >= od.interval {
                h.steps -= 1;
                h.healthy_since = now;
            }
            return None;
        }
        h.failures = h.failures.saturating_add(1);
        let already = h.ejected_until.is_some_and(|t| t > now);
        if already || (h.failures < od.consecutive_5xx && !h.probation) {
            return None;
        }
        drop(h);
        // Counting the ejected and ejecting one more happen under one lock, so that
        // concurrent failures cannot eject past `maxEjectionPercent`.
        let _deciding = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        if !self.may_eject(now) {
            return None;
        }
        let mut h = picked.stats.health();
        if h.ejected_until.is_some_and(|t| t > now) {
            return None; // another failure ejected it meanwhile
        }
        h.steps = (h.steps + 1).min(MAX_STEPS);
        h.last_ejection = Some(now);
        let duration = od
            .base_ejection_time
            .saturating_mul(h.steps)
            .min(MAX_EJECTION);
        h.ejected_until = Some(now + duration);
        h.failures = 0;
        h.probation = true;
        Some(Ejection {
            endpoint: picked.upstream.addr,
            duration,
            steps: h.steps,
        })
    }

    /// Whether one more endpoint may be ejected: fewer than `maxEjectionPercent` of them
    /// are (at least one of two or more may be; never the last one standing).
    fn may_eject(&self, now: Instant) -> bool {
        let n = self.endpoints.len();
        let pct = self.outlier.max_ejection_percent as usize;
        if pct == 0 || n < 2 {
            return false;
        }
        let allowed = (n * pct / 100).clamp(1, n - 1);
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.stats.ejected(now))
            .count();
        ejected < allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(n: u8) -> Vec<Upstream> {
        (0..n)
            .map(|i| Upstream::from(SocketAddr::from(([127, 0, 0, 10 + i], 4143))))
            .collect()
    }

    fn balancer(n: u8, algorithm: LoadBalancer) -> Balancer {
        let od = OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_time: Duration::from_secs(10),
            ..OutlierDetection::default()
        };
        Balancer::new(upstreams(n), None, algorithm, od, None, Instant::now())
    }

    /// Sends `n` requests at `now`, each answered after `latency(endpoint)`.
    fn run(
        b: &Balancer,
        now: Instant,
        n: u64,
        latency: impl Fn(SocketAddr) -> Duration,
    ) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                let p = b.pick(now, None, crate::route::random() ^ i).unwrap();
                let addr = p.upstream.addr;
                b.record(&p, now + latency(addr), Outcome::Success);
                addr
            })
            .collect()
    }

    #[test]
    fn ewma_sends_little_to_a_slow_endpoint_and_returns_once_it_recovers() {
        let b = balancer(2, LoadBalancer::Ewma);
        let slow = SocketAddr::from(([127, 0, 0, 10], 4143));
        let mut now = Instant::now();
        let mut to_slow = 0;
        for _ in 0..200 {
            let picked = run(&b, now, 1, |a| {
                Duration::from_millis(if a == slow { 50 } else { 5 })
            });
            to_slow += picked.iter().filter(|a| **a == slow).count();
            now += Duration::from_millis(10);
        }
        assert!(
            to_slow < 20,
            "{to_slow} of 200 went to the 10x slower endpoint"
        );
        // Recovered: once its estimate has decayed it is tried, and fast answers keep it in use.
        let mut later = 0;
        for _ in 0..600 {
            let picked = run(&b, now, 1, |_| Duration::from_millis(5));
            later += picked.iter().filter(|a| **a == slow).count();
            now += Duration::from_millis(100);
        }
        assert!(later > 100, "only {later} of 600 after recovery");
    }

    #[test]
    fn round_robin_and_least_request() {
        let b = balancer(3, LoadBalancer::RoundRobin);
        let now = Instant::now();
        let picks = run(&b, now, 6, |_| Duration::from_millis(1));
        assert_eq!(picks[0..3], picks[3..6]);
        assert_ne!(picks[0], picks[1]);
        let two = balancer(2, LoadBalancer::RoundRobin);
        let first = two.pick(now, None, 0).unwrap();
        let retry = two.pick(now, Some(first.upstream.addr), 0).unwrap();
        assert_ne!(retry.upstream, first.upstream);
        assert_eq!(
            two.pick(now, None, 0).unwrap().upstream,
            retry.upstream,
            "the retry did not move the turn: the next request skips the failed endpoint"
        );
        let b = balancer(2, LoadBalancer::LeastRequest);
        let held = b.pick(now, None, 0).unwrap();
        for i in 0..10 {
            let p = b.pick(now, None, i).unwrap();
            assert_ne!(p.upstream, held.upstream, "the busy endpoint is avoided");
        }
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times_and_probation_follows() {
        let b = balancer(2, LoadBalancer::RoundRobin);
        let bad = b.endpoints[0].upstream.addr;
        let t0 = Instant::now();
        let fail = |now: Instant| {
            let p = loop {
                let p = b.pick(now, None, 0).unwrap();
                if p.upstream.addr == bad {
                    break p;
                }
            };
            b.record(&p, now, Outcome::Failure)
        };
        assert_eq!(fail(t0), None);
        assert_eq!(fail(t0), None);
        let first = fail(t0).expect("the third failure in a row ejects");
        assert_eq!(first.duration, Duration::from_secs(10));
        for i in 0..10 {
            assert_ne!(b.pick(t0, None, i).unwrap().upstream.addr, bad, "ejected");
        }
        // A request sent before the ejection that ends after it changes nothing.
        let late = Picked {
            upstream: b.endpoints[0].upstream.clone(),
            stats: b.endpoints[0].stats.clone(),
            sent: t0 - Duration::from_millis(1),
        };
        b.endpoints[0].stats.pending.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            b.record(&late, t0 + Duration::from_secs(1), Outcome::Success),
            None
        );
        drop(late);
        // Back on probation: one failure ejects it again, for twice as long.
        let back = t0 + Duration::from_secs(11);
        let second = fail(back).expect("a failure on probation ejects at once");
        assert_eq!(
            (second.duration, second.steps),
            (Duration::from_secs(20), 2)
        );
    }

    #[test]
    fn never_more_than_the_allowed_share_is_ejected() {
        let b = balancer(2, LoadBalancer::RoundRobin);
        let now = Instant::now();
        let mut ejections = 0;
        for i in 0..20 {
            let p = b.pick(now, None, i).unwrap();
            ejections += usize::from(b.record(&p, now, Outcome::Failure).is_some());
        }
        assert_eq!(ejections, 1, "50 % of two endpoints: one");
        // With every endpoint failing, requests still go somewhere.
        assert!(b.pick(now, None, 0).is_ok());
        let single = balancer(1, LoadBalancer::Ewma);
        for i in 0..10 {
            let p = single.pick(now, None, i).unwrap();
            assert_eq!(
                single.record(&p, now, Outcome::Failure),
                None,
                "the only endpoint stays"
            );
        }
    }

    #[test]
    fn what_was_learnt_survives_a_new_table() {
        let b = balancer(2, LoadBalancer::Ewma);
        let now = Instant::now();
        let p = b.pick(now, None, 0).unwrap();
        let learnt = p.upstream.clone();
        b.record(&p, now + Duration::from_millis(400), Outcome::Success);
        drop(p);
        let mut next = upstreams(3);
        next.retain(|u| *u != upstreams(2)[if learnt == upstreams(2)[0] { 1 } else { 0 }]);
        let b2 = Balancer::new(
            next,
            Some(&b),
            LoadBalancer::Ewma,
            OutlierDetection::default(),
            None,
            now,
        );
        let estimate = |b: &Balancer, u: &Upstream| {
            b.endpoints()
                .find(|(e, _)| *e == u)
                .map(|(_, s)| s.estimate(now))
                .unwrap()
        };
        assert!(estimate(&b2, &learnt) > Duration::from_millis(300), "kept");
        let new = upstreams(3)[2].clone();
        assert_eq!(
            estimate(&b2, &new),
            estimate(&b2, &learnt),
            "a new one starts at the mean"
        );
    }

    #[test]
    fn the_per_endpoint_limit_skips_full_endpoints_then_refuses() {
        let b = Balancer::new(
            upstreams(2),
            None,
            LoadBalancer::Ewma,
            OutlierDetection::default(),
            Some(1),
            Instant::now(),
        );
        let now = Instant::now();
        let a = b.pick(now, None, 0).unwrap();
        let c = b.pick(now, None, 0).unwrap();
        assert_ne!(a.upstream, c.upstream);
        assert_eq!(b.pick(now, None, 0).unwrap_err(), NoPick::AtLimit(1));
        drop(a);
        assert!(b.pick(now, None, 0).is_ok(), "room again once one ends");
    }
}

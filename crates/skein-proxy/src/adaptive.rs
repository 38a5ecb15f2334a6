//! The adaptive inbound limit: how many requests an application is sent at once, found
//! from how fast it answers rather than written down. Pure; `inbound/shed.rs` feeds it
//! each request's latency and resizes the limiter with what it decides.
//!
//! An application that can work on W requests at once answers in its base time up to W
//! in flight; beyond, requests queue inside it and the time to answer grows with the
//! queue. The limit is moved, once per window of samples, so that the application's
//! latency stays within `tolerance` × its base latency:
//!
//! - the window's median latency (`short`: a few slow requests, a long poll, a slow
//!   upload, do not move it) against the base (`base`, the latency of the application
//!   when it is not queueing) gives the gradient `clamp(tolerance × base / short, 0.5, 1)`;
//! - below 1 (queueing beyond the tolerance) the limit is multiplied by it; a window in
//!   which the application said it was overloaded (more than 1 in 20 samples: see
//!   [`Signal::Overloaded`]) takes at most 0.8;
//! - at 1 the limit grows by √limit, but only if the window used at least half of it (an
//!   idle application does not earn a higher limit);
//! - the limit stays between `min` and `max`.
//!
//! The base is the latency the application shows when it is not saturated. It moves a
//! quarter of the way to each window's median when the window used under half the limit
//! (so that a queue does not pass for the new normal), and to a faster window's whatever
//! the load; a short burst of unusually fast answers (404s) therefore moves it only a
//! little. At the `min` limit the application is as unloaded as the mesh will make it, so
//! a window there sets the base outright: an application that became slower for good (a
//! slow database) gets a limit that fits it again instead of staying at `min`.
//!
//! The same family as Netflix's gradient limiter and Envoy's adaptive concurrency filter;
//! what differs is written above (no periodic pinning to the minimum to measure the base).

use std::time::Duration;

/// Where the limit starts, within `[min, max]`, when nothing was in force before.
pub const INITIAL: u32 = 20;
/// Fewest samples in a window (more when the limit is higher: one per request admitted).
const MIN_WINDOW: u32 = 10;
/// Most samples in a window.
const MAX_WINDOW: u32 = 250;
/// The share of the way a window moves the base.
const BASE_STEP: f64 = 0.25;
/// The gradient's floor: the limit at most halves per window.
const MIN_GRADIENT: f64 = 0.5;
/// The gradient a window with overload signals takes at most.
const OVERLOADED_GRADIENT: f64 = 0.8;

/// How one request went, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered (whatever the status, other than below), or given up on by the caller
    /// after this long (a lower bound of the time it would have taken).
    Answered,
    /// The application said it is overloaded (`503` with `Retry-After`: a plain `503`
    /// may be a dependency's failure passed on, a `429` one client's rate limit) or
    /// refused the connection.
    Overloaded,
}

/// The controller: the current limit, the base latency, the window being filled.
#[derive(Debug, Clone)]
pub struct Gradient {
    limit: f64,
    min: u32,
    max: u32,
    tolerance: f64,
    /// The latency of the application when not queueing, in seconds, once known.
    base: Option<f64>,
    window: Window,
}

#[derive(Debug, Clone, Default)]
struct Window {
    samples: u32,
    /// Latencies of the answered samples, in seconds (an overload answer is no measure of
    /// how long the application takes to work on a request).
    latencies: Vec<f64>,
    most_in_flight: u32,
    overloaded: u32,
}

impl Gradient {
    /// A controller keeping the limit within `[min, max]` and the latency within
    /// `tolerance` × the base, starting at [`INITIAL`]; `min` is at least 1 and at most
    /// `max`, `tolerance` at least 1.
    pub fn new(min: u32, max: u32, tolerance: f64) -> Self {
        let max = max.max(1);
        let min = min.clamp(1, max);
        let tolerance = if tolerance.is_nan() {
            1.5
        } else {
            tolerance.max(1.0)
        };
        Gradient {
            limit: f64::from(INITIAL.clamp(min, max)),
            min,
            max,
            tolerance,
            base: None,
            window: Window::default(),
        }
    }

    /// The same, starting at `limit` (the limit in force before it became adaptive).
    pub fn starting_at(mut self, limit: u32) -> Self {
        self.limit = f64::from(limit.clamp(self.min, self.max));
        self
    }

    /// Changes the bounds and tolerance in place (a changed policy), keeping what was
    /// learnt.
    pub fn reconfigure(&mut self, min: u32, max: u32, tolerance: f64) {
        let fresh = Gradient::new(min, max, tolerance);
        self.min = fresh.min;
        self.max = fresh.max;
        self.tolerance = fresh.tolerance;
        self.limit = self.limit.clamp(f64::from(self.min), f64::from(self.max));
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        // Within [min, max], both u32.
        self.limit.round() as u32
    }

    /// The base latency learnt so far.
    pub fn base(&self) -> Option<Duration> {
        self.base.map(Duration::from_secs_f64)
    }

    /// Takes one request's time to answer and how many were in flight when it ended;
    /// returns the new limit when a window closed and moved it.
    pub fn observe(&mut self, latency: Duration, in_flight: u32, signal: Signal) -> Option<u32> {
        let w = &mut self.window;
        w.samples += 1;
        if signal == Signal::Answered {
            w.latencies.push(latency.as_secs_f64());
        }
        w.most_in_flight = w.most_in_flight.max(in_flight);
        w.overloaded += u32::from(signal == Signal::Overloaded);
        if w.samples < self.limit().clamp(MIN_WINDOW, MAX_WINDOW) {
            return None;
        }
        let mut w = std::mem::take(&mut self.window);
        let before = self.limit();
        self.close(&mut w);
        // The next window reuses the allocation.
        w.latencies.clear();
        self.window.latencies = w.latencies;
        (self.limit() != before).then(|| self.limit())
    }

    fn close(&mut self, w: &mut Window) {
        let saturated = f64::from(w.most_in_flight) >= self.limit / 2.0;
        let at_floor = self.limit() <= self.min;
        let mut gradient = 1.0;
        if !w.latencies.is_empty() {
            let mid = w.latencies.len() / 2;
            let (_, median, _) = w.latencies.select_nth_unstable_by(mid, f64::total_cmp);
            let short = *median;
            let base = match self.base {
                None => short,
                Some(_) if at_floor => short,
                Some(b) if short < b || !saturated => b + (short - b) * BASE_STEP,
                Some(b) => b,
            };
            self.base = Some(base);
            if short > 0.0 {
                gradient = (self.tolerance * base / short).clamp(MIN_GRADIENT, 1.0);
            }
        }
        if w.overloaded * 20 > w.samples {
            gradient = gradient.min(OVERLOADED_GRADIENT);
        }
        let next = if gradient < 1.0 {
            self.limit * gradient
        } else if saturated {
            self.limit + self.limit.sqrt()
        } else {
            self.limit
        };
        self.limit = next.clamp(f64::from(self.min), f64::from(self.max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application with `workers` that each take `service`: with `n` in flight it
    /// answers in `service` × max(1, n / workers) (the rest queue inside it).
    struct App {
        workers: u32,
        service: Duration,
    }

    impl App {
        fn latency(&self, in_flight: u32) -> Duration {
            let queued = f64::from(in_flight) / f64::from(self.workers);
            self.service.mul_f64(queued.max(1.0))
        }
    }

    /// Runs `rounds` windows of `callers` callers that always have a request out (as
    /// many as the limit admits); returns the limit after each window.
    fn run(g: &mut Gradient, app: &App, callers: u32, rounds: usize) -> Vec<u32> {
        let mut limits = Vec::new();
        while limits.len() < rounds {
            let in_flight = callers.min(g.limit());
            let latency = app.latency(in_flight);
            if let Some(l) = g.observe(latency, in_flight, Signal::Answered) {
                limits.push(l);
            } else if g.window.samples == 0 {
                // The window closed without moving the limit.
                limits.push(g.limit());
            }
        }
        limits
    }

    #[test]
    fn under_a_flood_the_limit_settles_where_the_latency_meets_the_tolerance() {
        let app = App {
            workers: 20,
            service: Duration::from_millis(50),
        };
        let mut g = Gradient::new(1, 1000, 1.5);
        // Light load first, so the base is the application's unloaded latency.
        run(&mut g, &app, 5, 5);
        assert_eq!(g.base(), Some(Duration::from_millis(50)));
        assert_eq!(g.limit(), INITIAL, "an idle application earns nothing");
        let limits = run(&mut g, &app, 500, 60);
        let settled = &limits[30..];
        for l in settled {
            // Within tolerance: at most 1.5 × 20 in flight, plus one step of growth.
            assert!((20..=40).contains(l), "limit {l} in {limits:?}");
        }
    }

    #[test]
    fn a_limit_set_too_low_grows_while_the_application_keeps_its_pace() {
        let app = App {
            workers: 200,
            service: Duration::from_millis(10),
        };
        let mut g = Gradient::new(1, 1000, 1.5);
        let limits = run(&mut g, &app, 1000, 40);
        let climb: Vec<u32> = limits.iter().copied().take_while(|l| *l < 200).collect();
        assert!(climb.windows(2).all(|w| w[1] > w[0]), "{limits:?}");
        // Then it settles where 200 workers answer within 1.5 × their pace.
        let last = *limits.last().unwrap();
        assert!((290..=320).contains(&last), "{limits:?}");
    }

    #[test]
    fn an_application_that_became_slower_for_good_gets_a_limit_that_fits_it_again() {
        let mut app = App {
            workers: 20,
            service: Duration::from_millis(20),
        };
        let mut g = Gradient::new(2, 1000, 1.5);
        run(&mut g, &app, 5, 3);
        run(&mut g, &app, 500, 40);
        // Every request now takes five times as long, whatever the concurrency.
        app.service = Duration::from_millis(100);
        let limits = run(&mut g, &app, 500, 120);
        assert!(
            limits.contains(&2),
            "the slowdown looks like queueing at first: {limits:?}"
        );
        assert_eq!(
            g.base(),
            Some(Duration::from_millis(100)),
            "relearnt at the floor"
        );
        let settled = &limits[100..];
        assert!(settled.iter().all(|l| (20..=40).contains(l)), "{limits:?}");
    }

    #[test]
    fn overload_signals_lower_the_limit_even_when_latency_does_not_rise() {
        // An application that answers 503 at once beyond 20 in flight: fast failures
        // look like good latency.
        let mut g = Gradient::new(1, 1000, 1.5);
        for _ in 0..10 {
            g.observe(Duration::from_millis(50), 5, Signal::Answered);
        }
        let mut limits = Vec::new();
        for _ in 0..2000 {
            let in_flight = g.limit();
            let signal = if in_flight > 20 {
                Signal::Overloaded
            } else {
                Signal::Answered
            };
            let latency = match signal {
                Signal::Overloaded => Duration::from_millis(1),
                Signal::Answered => Duration::from_millis(50),
            };
            if let Some(l) = g.observe(latency, in_flight, signal) {
                limits.push(l);
            }
        }
        assert!(
            limits.iter().any(|l| *l > 20),
            "it probes upwards: {limits:?}"
        );
        let tail = &limits[limits.len() - 10..];
        assert!(tail.iter().all(|l| *l <= 30), "{limits:?}");
    }

    #[test]
    fn a_few_slow_requests_and_a_burst_of_fast_ones_do_not_knock_the_limit_down() {
        let mut g = Gradient::new(5, 1000, 1.5);
        // 40 at once, each 50 ms but one in ten a long poll of 2 s; at 40 in flight the
        // application does not queue.
        // Feeds `n` requests; returns the lowest limit seen meanwhile.
        let feed = |g: &mut Gradient, n: usize, fast: bool| {
            let mut lowest = g.limit();
            for i in 0..n {
                let latency = match (fast, i % 10) {
                    (true, _) => Duration::from_millis(2),
                    (false, 0) => Duration::from_secs(2),
                    (false, _) => Duration::from_millis(50),
                };
                g.observe(latency, g.limit().min(40), Signal::Answered);
                lowest = lowest.min(g.limit());
            }
            lowest
        };
        feed(&mut g, 2000, false);
        let settled = g.limit();
        assert!(
            settled >= 40,
            "the long polls did not hold it down: {settled}"
        );
        // A burst of 404s answered in 2 ms, one window's worth, then the usual again.
        feed(&mut g, settled as usize, true);
        let lowest = feed(&mut g, 2000, false);
        assert!(lowest >= 40, "it fell to {lowest} after the burst");
        assert!(
            g.base().unwrap() > Duration::from_millis(30),
            "{:?}",
            g.base()
        );
    }

    #[test]
    fn bounds_hold_and_a_changed_policy_keeps_what_was_learnt() {
        let app = App {
            workers: 100,
            service: Duration::from_millis(10),
        };
        let mut g = Gradient::new(5, 50, 2.0);
        let limits = run(&mut g, &app, 1000, 30);
        assert!(limits.iter().all(|l| (5..=50).contains(l)), "{limits:?}");
        assert_eq!(g.limit(), 50);
        g.reconfigure(5, 30, 2.0);
        assert_eq!(g.limit(), 30);
        assert_eq!(g.base(), Some(Duration::from_millis(10)));
        let mut g = Gradient::new(0, 0, 0.0);
        assert_eq!((g.limit(), g.min, g.max, g.tolerance), (1, 1, 1, 1.0));
        g.observe(Duration::ZERO, 1, Signal::Answered);
        let g = Gradient::new(10, 5, f64::NAN).starting_at(500);
        assert_eq!((g.limit(), g.min, g.max, g.tolerance), (5, 5, 5, 1.5));
    }
}

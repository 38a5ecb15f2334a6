//! The adaptive inbound limit: how many requests an application is sent at once, found
//! from how fast it answers rather than written down. Pure; `inbound/shed.rs` feeds it
//! each request's latency and resizes the limiter with what it decides.
//!
//! An application that can work on W requests at once answers in its base time up to W
//! in flight; beyond, requests queue inside it and the time to answer grows with the
//! queue. The limit is moved, once per window of samples, so that the application's
//! latency stays within `tolerance` × its base latency:
//!
//! - the window's mean latency (`short`) against the base (`base`, the latency of the
//!   application when it is not queueing) gives the gradient
//!   `clamp(tolerance × base / short, 0.5, 1)`;
//! - below 1 (queueing beyond the tolerance) the limit is multiplied by it; a window in
//!   which the application said it was overloaded (503, 429, refused connections, time
//!   outs: more than 1 in 20 samples) takes at most 0.8;
//! - at 1 the limit grows by √limit, but only if the window used at least half of it (an
//!   idle application does not earn a higher limit);
//! - the limit stays between `min` and `max`.
//!
//! The base is the latency the application shows when it is not saturated: it follows a
//! faster window at once, and a slower one only slowly and only when the window used
//! under half the limit (so that a queue does not pass for the new normal). At the
//! `min` limit the application is as unloaded as the mesh will make it, so a window
//! there sets the base outright: an application that became slower for good (a slow
//! database) gets a limit that fits it again instead of staying at `min`.
//!
//! The same family as Netflix's gradient limiter and Envoy's adaptive concurrency filter;
//! what differs is written above (no periodic pinning to the minimum to measure the base).

use std::time::Duration;

/// Where the limit starts, within `[min, max]`.
pub const INITIAL: u32 = 20;
/// Fewest samples in a window (more when the limit is higher: one per request admitted).
const MIN_WINDOW: u32 = 10;
/// Most samples in a window.
const MAX_WINDOW: u32 = 250;
/// The share of the way a slower unsaturated window moves the base.
const BASE_RISE: f64 = 0.1;
/// The gradient's floor: the limit at most halves per window.
const MIN_GRADIENT: f64 = 0.5;
/// The gradient a window with overload signals takes at most.
const OVERLOADED_GRADIENT: f64 = 0.8;

/// How one request went, for the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered (whatever the status, other than those below).
    Answered,
    /// The application said it is overloaded (503, 429) or could not be reached in
    /// time (refused connection, timeout).
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
    /// Latencies of the answered samples (an overload answer is no measure of how long
    /// the application takes to work on a request).
    answered: u32,
    latency_sum: f64,
    most_in_flight: u32,
    overloaded: u32,
}

impl Gradient {
    /// A controller keeping the limit within `[min, max]` and the latency within
    /// `tolerance` × the base; `min` is at least 1, `tolerance` at least 1.
    pub fn new(min: u32, max: u32, tolerance: f64) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Gradient {
            limit: f64::from(INITIAL.clamp(min, max)),
            min,
            max,
            tolerance: tolerance.max(1.0),
            base: None,
            window: Window::default(),
        }
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
            w.answered += 1;
            w.latency_sum += latency.as_secs_f64();
        }
        w.most_in_flight = w.most_in_flight.max(in_flight);
        w.overloaded += u32::from(signal == Signal::Overloaded);
        if w.samples < self.limit().clamp(MIN_WINDOW, MAX_WINDOW) {
            return None;
        }
        let w = std::mem::take(&mut self.window);
        let before = self.limit();
        self.close(&w);
        (self.limit() != before).then(|| self.limit())
    }

    fn close(&mut self, w: &Window) {
        let saturated = f64::from(w.most_in_flight) >= self.limit / 2.0;
        let at_floor = self.limit() <= self.min;
        let mut gradient = 1.0;
        if w.answered > 0 {
            let short = w.latency_sum / f64::from(w.answered);
            let base = match self.base {
                None => short,
                Some(b) if short <= b || at_floor => short,
                Some(b) if !saturated => b + (short - b) * BASE_RISE,
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
    }
}

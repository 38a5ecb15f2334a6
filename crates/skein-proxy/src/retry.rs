//! Route retries (HTTPRoute `retry`): which outcomes of a try are retried, which requests
//! can be, and the retry budget that keeps retries from multiplying an overload. Pure;
//! `outbound/http.rs` drives the tries.
//!
//! A request whose rule sets no `retry` (or that no rule took) still gets one more try on
//! another endpoint ([`UNSENT_ONLY`]) when the first provably reached no application, or
//! broke before any answer and only reads ([`safe`]): an endpoint whose proxy died then
//! costs callers latency, not failures. `retry: {attempts: 0}` turns that off too.
//!
//! A request is sent again by replaying its body through a bounded tee
//! ([`crate::http::replay`]): the first try streams it, keeping a copy of up to
//! [`MAX_REPLAY_BYTES`]; a try whose body went beyond that before its answer came is not
//! retried (`skein_route_retries_total{result="body_too_large"}`).
//!
//! The budget (per destination service, per proxy) is the destination's `BackendPolicy`
//! `retryBudget`: over the last `ttl`, retries may number `ratio` × the original requests
//! plus `minPerSecond` × `ttl`, so a failing backend sees at most about `1 + ratio` times
//! the load instead of `1 + attempts` times. The window is kept in ten slots of `ttl`/10.

use foldhash::HashMap;
use skein_model::resource::{RetryBudget, RouteRetry};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most of a request body kept for a retry (and the largest body held for a
/// mirror).
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// What one try came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered with this status.
    Status(u16),
    /// The try's own deadline (`backendRequest`) passed: counts as a `504`.
    TryTimedOut,
    /// Nothing reached the application (connect failure, no endpoints): safe to resend.
    NotSent,
    /// The connection failed before any answer came, for a request that may be sent
    /// twice ([`safe`], or [`idempotent`] under a rule's `retry`) and that the proxy can
    /// send again whole.
    Broken,
    /// Any other failure.
    Failed,
}

/// What a request gets when its rule sets no `retry`: one more try, only if the first
/// reached no application or broke before an answer ([`Outcome::NotSent`],
/// [`Outcome::Broken`]); no status is retried, and there is no pause (the next try goes
/// to another endpoint).
pub static UNSENT_ONLY: RouteRetry = RouteRetry {
    attempts: 1,
    codes: Vec::new(),
    backoff: Duration::ZERO,
};

/// Whether to try again after `tries` tries ended in `outcome`.
pub fn should_retry(retry: &RouteRetry, tries: u32, outcome: Outcome) -> bool {
    if tries > retry.attempts {
        return false;
    }
    match outcome {
        Outcome::Status(code) => retry.codes.contains(&code),
        Outcome::TryTimedOut => retry.codes.contains(&504),
        Outcome::NotSent | Outcome::Broken => true,
        Outcome::Failed => false,
    }
}

/// Whether a request with `method` means the same sent twice as once (RFC 9110 §9.2.2),
/// so that a try which may have reached the application can be made again when a rule's
/// `retry` asks for retries.
pub fn idempotent(method: &http::Method) -> bool {
    use http::Method as M;
    safe(method) || [M::PUT, M::DELETE].contains(method)
}

/// Whether `method` only reads (RFC 9110 §9.2.1): what a try that may have reached the
/// application is sent again for without a rule `retry`. Not `PUT` or `DELETE`: sent
/// twice, a `DELETE` that took effect answers `404` and a conditional `PUT` `412`, so
/// the caller would see a failure for a request that succeeded.
pub fn safe(method: &http::Method) -> bool {
    use http::Method as M;
    [M::GET, M::HEAD, M::OPTIONS, M::TRACE].contains(method)
}

/// Whether the peer proxy answered for itself that the request reached no application:
/// `502` because it could not connect to its application, or `503` because it is
/// shutting down or at its own ceiling on requests (the `skein-error` reason `reason`). Only proxies set `skein-error`:
/// the peer's inbound side strips it from what its application answers (upgrades
/// included), so an application cannot make a request it handled look unsent; and the
/// caller believes it only from a peer whose certificate proved it a mesh proxy.
pub fn unsent_by_peer(status: u16, reason: &str) -> bool {
    matches!(
        (status, reason),
        (502, "connect") | (503, "shutting_down") | (503, "proxy_overloaded")
    )
}

/// Whether the peer proxy answered for itself that its application's connection broke
/// before any answer (`502`, reason `upstream`: reset, closed, or an answer hyper could
/// not read): the application may have had the request, so this is
/// [`Outcome::Broken`], which only a request that may be sent twice goes again after.
/// Believed on the same terms as [`unsent_by_peer`].
pub fn broken_at_peer(status: u16, reason: &str) -> bool {
    (status, reason) == (502, "upstream")
}

/// Whether a request whose body has this size hint (and end-of-stream flag) can be held
/// whole before it is sent (for a mirror).
pub fn replayable(end_of_stream: bool, exact_len: Option<u64>) -> bool {
    end_of_stream || exact_len.is_some_and(|n| n <= MAX_REPLAY_BYTES)
}

/// Retries allowed per destination service, by its `retryBudget`: in the last `ttl`,
/// `ratio` × original requests + `minPerSecond` × `ttl` − retries already made.
#[derive(Default)]
pub struct Budget {
    services: Mutex<HashMap<String, Window>>,
}

/// Slots a window is cut into.
const SLOTS: usize = 10;

/// Requests and retries in the last `ttl`, in [`SLOTS`] slots.
#[derive(Debug, Clone)]
struct Window {
    requests: [u64; SLOTS],
    retries: [u64; SLOTS],
    /// The slot `now` falls in, and when it began.
    current: usize,
    began: Instant,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            requests: [0; SLOTS],
            retries: [0; SLOTS],
            current: 0,
            began: now,
        }
    }

    /// Moves the window to `now`, clearing the slots that fell out of it.
    fn advance(&mut self, now: Instant, ttl: Duration) {
        let slot = (ttl / SLOTS as u32).max(Duration::from_millis(1));
        let mut steps = 0;
        while now.saturating_duration_since(self.began) >= slot && steps <= SLOTS {
            self.current = (self.current + 1) % SLOTS;
            self.requests[self.current] = 0;
            self.retries[self.current] = 0;
            self.began += slot;
            steps += 1;
        }
        if steps > SLOTS {
            // Idle for longer than the window: start afresh.
            *self = Window::new(now);
        }
    }
}

impl Budget {
    fn with<T>(
        &self,
        service: &str,
        ttl: Duration,
        now: Instant,
        f: impl FnOnce(&mut Window) -> T,
    ) -> T {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        // Look up before inserting, so that the name is copied once per service, not
        // once per request.
        if !services.contains_key(service) {
            services.insert(service.to_string(), Window::new(now));
        }
        let Some(window) = services.get_mut(service) else {
            unreachable!("inserted above")
        };
        window.advance(now, ttl);
        f(window)
    }

    /// Forgets the services `keep` says no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.retain(|k, _| keep(k));
    }

    /// An original request to `service` (one that may be retried) earns its share.
    pub fn deposit(&self, service: &str, budget: &RetryBudget, now: Instant) {
        self.with(service, budget.ttl, now, |w| w.requests[w.current] += 1);
    }

    /// Takes one retry for `service`, if its budget has one.
    pub fn withdraw(&self, service: &str, budget: &RetryBudget, now: Instant) -> bool {
        self.with(service, budget.ttl, now, |w| {
            let requests: u64 = w.requests.iter().sum();
            let retries: u64 = w.retries.iter().sum();
            let allowed = budget.ratio.clamp(0.0, 1.0) * requests as f64
                + f64::from(budget.min_per_second) * budget.ttl.as_secs_f64();
            if (retries as f64) + 1.0 <= allowed {
                w.retries[w.current] += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(attempts: u32, codes: &[u16]) -> RouteRetry {
        RouteRetry {
            attempts,
            codes: codes.to_vec(),
            ..RouteRetry::default()
        }
    }

    #[test]
    fn without_a_retry_setting_only_unsent_and_broken_tries_are_made_again_once() {
        let r = &UNSENT_ONLY;
        assert!(should_retry(r, 1, Outcome::NotSent));
        assert!(should_retry(r, 1, Outcome::Broken));
        assert!(broken_at_peer(502, "upstream") && !broken_at_peer(502, "connect"));
        assert!(!broken_at_peer(503, "upstream") && !broken_at_peer(502, ""));
        assert!(!should_retry(r, 2, Outcome::NotSent), "one retry at most");
        for code in [500, 502, 503, 504] {
            assert!(!should_retry(r, 1, Outcome::Status(code)), "{code}");
        }
        assert!(!should_retry(r, 1, Outcome::TryTimedOut));
        assert!(!should_retry(r, 1, Outcome::Failed));
        assert_eq!(r.backoff, Duration::ZERO);
    }

    #[test]
    fn only_idempotent_methods_may_be_sent_twice() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(safe(&m.parse().unwrap()), "{m}");
        }
        for m in ["PUT", "DELETE", "POST"] {
            assert!(!safe(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn retries_listed_codes_and_unsent_requests_until_attempts_run_out() {
        let r = retry(2, &[502, 503]);
        assert!(should_retry(&r, 1, Outcome::Status(503)));
        assert!(should_retry(&r, 2, Outcome::Status(502)));
        assert!(
            !should_retry(&r, 3, Outcome::Status(503)),
            "two retries, three tries"
        );
        assert!(!should_retry(&r, 1, Outcome::Status(500)), "500 not listed");
        assert!(!should_retry(&r, 1, Outcome::Status(200)));
        assert!(should_retry(&r, 1, Outcome::NotSent));
        assert!(
            !should_retry(&r, 1, Outcome::Failed),
            "may have reached the app"
        );
        assert!(!should_retry(&r, 1, Outcome::TryTimedOut), "504 not listed");
        assert!(should_retry(&retry(1, &[504]), 1, Outcome::TryTimedOut));
        assert!(
            !should_retry(&retry(0, &[503]), 1, Outcome::Status(503)),
            "0 disables"
        );
    }

    #[test]
    fn a_peer_that_reached_no_application_says_so_in_its_reason() {
        assert!(unsent_by_peer(502, "connect"));
        assert!(unsent_by_peer(503, "shutting_down"));
        assert!(
            !unsent_by_peer(502, "upstream"),
            "the application may have seen it"
        );
        assert!(!unsent_by_peer(502, ""), "an application's own 502");
        assert!(!unsent_by_peer(504, "timeout"));
        assert!(
            !unsent_by_peer(503, "connect"),
            "not what a peer answers for connect"
        );
    }

    #[test]
    fn only_small_known_bodies_are_held() {
        assert!(replayable(true, None), "no body");
        assert!(replayable(false, Some(MAX_REPLAY_BYTES)));
        assert!(!replayable(false, Some(MAX_REPLAY_BYTES + 1)));
        assert!(!replayable(false, None), "unknown length (chunked)");
    }

    fn budget(ratio: f64, min_per_second: u32, ttl_secs: u64) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_second,
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    #[test]
    fn the_budget_allows_the_minimum_plus_the_ratio_over_the_ttl() {
        let b = Budget::default();
        let p = budget(0.2, 1, 10);
        let t0 = Instant::now();
        // One retry a second, over ten seconds, is always allowed...
        let mut granted = (0..50).filter(|_| b.withdraw("web", &p, t0)).count();
        assert_eq!(granted, 10);
        // ...and 100 requests earn 20 more.
        for _ in 0..100 {
            b.deposit("web", &p, t0);
        }
        granted = (0..50).filter(|_| b.withdraw("web", &p, t0)).count();
        assert_eq!(granted, 20);
        // Other services have their own, until forgotten.
        assert!(b.withdraw("api", &p, t0));
        b.retain(|k| k == "web");
        assert_eq!(b.services.lock().unwrap().len(), 1);
        // Past the ttl, what was earned and spent has left the window.
        let later = t0 + Duration::from_secs(11);
        granted = (0..50).filter(|_| b.withdraw("web", &p, later)).count();
        assert_eq!(granted, 10, "only the minimum again");
    }

    #[test]
    fn a_zero_budget_allows_nothing_and_the_defaults_allow_a_fifth() {
        let b = Budget::default();
        let t0 = Instant::now();
        let none = budget(0.0, 0, 10);
        for _ in 0..100 {
            b.deposit("x", &none, t0);
        }
        assert!(!b.withdraw("x", &none, t0));
        let defaults = RetryBudget::default();
        for _ in 0..1000 {
            b.deposit("y", &defaults, t0);
        }
        let granted = (0..1000).filter(|_| b.withdraw("y", &defaults, t0)).count();
        assert_eq!(granted, 200 + 100, "20 % of 1000, plus 10/s over 10 s");
    }
}

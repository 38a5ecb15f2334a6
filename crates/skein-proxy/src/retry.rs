//! Route retries (HTTPRoute `retry`): which outcomes of a try are retried, which requests
//! can be, and the retry budget that keeps retries from multiplying an overload. Pure;
//! `outbound/http.rs` drives the tries.
//!
//! A request can be retried only if the proxy can send it again: its body is known to be
//! at most [`MAX_REPLAY_BYTES`] (or absent), so it is held in memory for the tries. Any
//! other request is sent once, as if the rule had no `retry`.
//!
//! The budget (per destination service, per proxy) follows the shape of `BackendPolicy`'s
//! `retryBudget` with its defaults: every original request earns `ratio` of a retry, and
//! `minPerSecond` retries per second are always allowed, so a failing backend sees at
//! most about `1 + ratio` times the load instead of `1 + attempts` times. `BackendPolicy`
//! does not reach proxies yet, so every destination has the defaults (20 %, 10/s).

use skein_model::resource::RouteRetry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The largest request body held for retries; larger or unknown-length bodies are
/// streamed and not retried.
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
    /// Any other failure.
    Failed,
}

/// Whether to try again after `tries` tries ended in `outcome`.
pub fn should_retry(retry: &RouteRetry, tries: u32, outcome: Outcome) -> bool {
    if tries > retry.attempts {
        return false;
    }
    match outcome {
        Outcome::Status(code) => retry.codes.contains(&code),
        Outcome::TryTimedOut => retry.codes.contains(&504),
        Outcome::NotSent => true,
        Outcome::Failed => false,
    }
}

/// Whether a request whose body has this size hint (and end-of-stream flag) can be held
/// for retries.
pub fn replayable(end_of_stream: bool, exact_len: Option<u64>) -> bool {
    end_of_stream || exact_len.is_some_and(|n| n <= MAX_REPLAY_BYTES)
}

/// Retries allowed per destination service: `ratio` per original request plus
/// `min_per_second`, saved up to ten seconds of the minimum plus a hundred earned. Kept
/// in thousandths of a retry, so that sums are exact.
pub struct Budget {
    /// Thousandths earned per original request.
    per_request: u64,
    /// Thousandths earned per millisecond (= retries per second).
    per_ms: u64,
    cap: u64,
    services: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    last: Instant,
}

impl Default for Budget {
    /// `BackendPolicy`'s defaults: 20 % plus 10 per second.
    fn default() -> Self {
        Budget::new(0.2, 10)
    }
}

impl Budget {
    /// A budget of `ratio` retries per request plus `min_per_second`.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let per_request = (ratio.clamp(0.0, 1.0) * 1000.0).round() as u64;
        let per_ms = u64::from(min_per_second);
        Budget {
            per_request,
            per_ms,
            cap: per_ms * 10_000 + per_request * 100,
            services: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, service: &str, now: Instant, f: impl FnOnce(&mut u64) -> T) -> T {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        // Look up before inserting, so that the name is copied once per service, not
        // once per request.
        if !services.contains_key(service) {
            services.insert(
                service.to_string(),
                Bucket {
                    // A new service starts with one second of the minimum.
                    milli: (self.per_ms * 1000).min(self.cap),
                    last: now,
                },
            );
        }
        let Some(bucket) = services.get_mut(service) else {
            unreachable!("inserted above")
        };
        let elapsed_ms = now.saturating_duration_since(bucket.last).as_millis() as u64;
        if elapsed_ms > 0 {
            bucket.milli = (bucket.milli + elapsed_ms * self.per_ms).min(self.cap);
            bucket.last = now;
        }
        let out = f(&mut bucket.milli);
        bucket.milli = bucket.milli.min(self.cap);
        out
    }

    /// An original request to `service` (one that may be retried) earns its share.
    pub fn deposit(&self, service: &str, now: Instant) {
        let earned = self.per_request;
        self.with(service, now, |m| *m += earned);
    }

    /// Takes one retry for `service`, if the budget has one.
    pub fn withdraw(&self, service: &str, now: Instant) -> bool {
        self.with(service, now, |m| {
            if *m >= 1000 {
                *m -= 1000;
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
    use std::time::Duration;

    fn retry(attempts: u32, codes: &[u16]) -> RouteRetry {
        RouteRetry {
            attempts,
            codes: codes.to_vec(),
            ..RouteRetry::default()
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
    fn only_small_known_bodies_are_held() {
        assert!(replayable(true, None), "no body");
        assert!(replayable(false, Some(MAX_REPLAY_BYTES)));
        assert!(!replayable(false, Some(MAX_REPLAY_BYTES + 1)));
        assert!(!replayable(false, None), "unknown length (chunked)");
    }

    #[test]
    fn the_budget_allows_the_minimum_plus_the_ratio() {
        let b = Budget::new(0.2, 10);
        let t0 = Instant::now();
        // Ten retries a second are always allowed...
        let mut granted = (0..50).filter(|_| b.withdraw("web", t0)).count();
        assert_eq!(granted, 10);
        // ...and 100 requests earn 20 more.
        for _ in 0..100 {
            b.deposit("web", t0);
        }
        granted = (0..50).filter(|_| b.withdraw("web", t0)).count();
        assert_eq!(granted, 20);
        // Time refills the minimum; other services have their own.
        let later = t0 + Duration::from_millis(500);
        granted = (0..50).filter(|_| b.withdraw("web", later)).count();
        assert_eq!(granted, 5);
        assert!(b.withdraw("api", t0));
    }

    #[test]
    fn savings_are_capped() {
        let b = Budget::new(0.2, 10);
        let t0 = Instant::now();
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..10_000 {
            b.deposit("web", t0);
        }
        let granted = (0..1000).filter(|_| b.withdraw("web", much_later)).count();
        assert_eq!(granted, 120, "10 s of the minimum plus 100 × 0.2");
    }
}

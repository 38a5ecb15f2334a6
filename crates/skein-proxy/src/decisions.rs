//! The proxy's memory of requests the mesh failed or slowed: one record per request it
//! answered itself (a denial, a timeout, an overloaded or unreachable endpoint, no route,
//! bad input) or retried, with the request ID and, in plain words, what decided (the
//! resource and field, as the error the caller got says). Bounded: the newest
//! [`CAPACITY`] records; older ones go first. Served on the admin listener
//! (`/decisions`, `?request_id=ID`); the seam `skein why` and the spans it will be sent
//! with build on. Nothing is recorded for a request the application answered on its
//! first try.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// Records kept.
pub const CAPACITY: usize = 1024;
/// Records waiting for the next telemetry summary (the oldest go first beyond it).
pub const PENDING: usize = 256;
/// The most characters of a record's `why` kept (an error may quote a caller's path):
/// with [`PENDING`], a summary's decisions stay far below gRPC's 4 MiB message limit.
pub const MAX_WHY: usize = 512;

/// `s` cut to at most `max` characters, marked with `…` when cut.
pub fn bounded(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s,
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// What happened to one request at this proxy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Its `skein-request-id`.
    pub request_id: String,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `outbound` (the caller's proxy) or `inbound` (the callee's).
    pub direction: &'static str,
    /// The service called, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The HTTPRoute (`namespace/name`) and rule index that handled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The rule index in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u16>,
    /// The last try's peer proxy (outbound) or application (inbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Tries made.
    pub tries: u32,
    /// The status the caller got.
    pub status: u16,
    /// `skein-error`'s reason when the mesh answered (`denied`, `timeout`, …); empty
    /// when the application did (after retries).
    pub reason: &'static str,
    /// What decided, in words.
    pub why: String,
}

/// The bounded record.
#[derive(Debug, Default)]
pub struct DecisionLog {
    ring: Mutex<VecDeque<Decision>>,
    /// Not yet sent to the control plane.
    pending: Mutex<VecDeque<Decision>>,
    /// Tokens for records of requests refused before they were parsed.
    refusals: Mutex<Option<(f64, std::time::Instant)>>,
}

/// Records a second of requests refused before they were parsed, at most (a burst of
/// twice that): a client sending bad heads as fast as it can must not wash the log out.
pub const REFUSALS_PER_SEC: f64 = 20.0;

impl DecisionLog {
    /// Whether one more refusal may be recorded now.
    pub fn allow_refusal(&self) -> bool {
        let mut b = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        let (tokens, at) = b.get_or_insert((2.0 * REFUSALS_PER_SEC, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * REFUSALS_PER_SEC;
        *tokens = (*tokens + refill).min(2.0 * REFUSALS_PER_SEC);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return true;
        }
        false
    }

    /// Keeps `d`, dropping the oldest record when full.
    pub fn record(&self, d: Decision) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() >= PENDING {
                pending.pop_front();
            }
            pending.push_back(d.clone());
        }
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= CAPACITY {
            ring.pop_front();
        }
        ring.push_back(d);
    }

    /// The records made since the last call, for the control plane.
    pub fn take_pending(&self) -> Vec<Decision> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.drain(..).collect()
    }

    /// The records of `request_id` (oldest first), or the newest `limit` of all (newest
    /// first) without one.
    pub fn find(&self, request_id: Option<&str>, limit: usize) -> Vec<Decision> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        match request_id {
            Some(id) => ring
                .iter()
                .filter(|d| d.request_id == id)
                .cloned()
                .collect(),
            None => ring.iter().rev().take(limit).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: &str) -> Decision {
        Decision {
            request_id: id.into(),
            at_unix_ms: 1,
            direction: "inbound",
            service: None,
            route: None,
            rule: None,
            endpoint: None,
            tries: 1,
            status: 403,
            reason: "denied",
            why: "denied by default/web".into(),
        }
    }

    #[test]
    fn long_words_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("abc".into(), 3), "abc");
        assert_eq!(bounded("äbcd".into(), 2), "äb…");
        assert_eq!(
            bounded("x".repeat(5000), MAX_WHY).chars().count(),
            MAX_WHY + 1
        );
    }

    #[test]
    fn the_newest_are_kept_and_found_by_request_id() {
        let log = DecisionLog::default();
        for i in 0..CAPACITY + 10 {
            log.record(decision(&format!("r{i}")));
        }
        assert!(log.find(Some("r9"), 10).is_empty(), "the oldest went first");
        assert_eq!(log.find(Some("r10"), 10).len(), 1);
        let newest = log.find(None, 3);
        let ids: Vec<_> = newest.iter().map(|d| d.request_id.as_str()).collect();
        assert_eq!(ids, ["r1033", "r1032", "r1031"]);
        let json = serde_json::to_value(&newest[0]).unwrap();
        assert_eq!(json["requestId"], "r1033");
        assert!(json.get("route").is_none(), "unknown parts are left out");
    }

    #[test]
    fn refusals_are_recorded_at_a_bounded_rate() {
        let log = DecisionLog::default();
        let allowed = (0..500).filter(|_| log.allow_refusal()).count();
        let burst = 2 * REFUSALS_PER_SEC as usize;
        assert!((burst..burst + 5).contains(&allowed), "{allowed}");
    }
}

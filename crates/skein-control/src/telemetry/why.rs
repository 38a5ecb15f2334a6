//! `skein why`: what each proxy decided about a request the mesh failed or retried,
//! gathered from their summaries (`Summary.decisions`) under the request's ID. Bounded:
//! the newest [`CAPACITY`] records of the whole mesh; older ones go first.

use serde::Serialize;
use skein_api::v1 as pb;
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// Records kept for the whole mesh.
pub const CAPACITY: usize = 10_000;
/// Records taken from one summary (a proxy sends at most this many; more is ignored).
pub const PER_SUMMARY: usize = 256;
/// The longest text kept of a record's `why` (a proxy's words, bounded before storing).
const MAX_WHY: usize = 1024;

/// One proxy's record of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    /// The request.
    pub request_id: String,
    /// When the proxy ended it, ms since the Unix epoch.
    pub at_unix_ms: i64,
    /// The proxy's workload, `namespace/name`.
    pub workload: String,
    /// `outbound` (the caller's proxy) or `inbound` (the callee's).
    pub direction: &'static str,
    /// The service called.
    pub service: String,
    /// The HTTPRoute that handled it, if any.
    pub route: String,
    /// Its rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The last try's peer proxy or application.
    pub endpoint: String,
    /// Tries made.
    pub tries: u32,
    /// What the caller got.
    pub status: u32,
    /// `skein-error` reason; empty when the application answered.
    pub reason: String,
    /// What decided, in words.
    pub why: String,
}

/// The mesh's recent records.
#[derive(Debug, Default)]
pub struct Why {
    hops: Mutex<VecDeque<Hop>>,
}

impl Why {
    /// Takes in the decisions of one summary from `workload`'s proxy.
    pub fn add(&self, workload: &str, decisions: &[pb::Decision]) {
        if decisions.is_empty() {
            return;
        }
        let mut hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        let usable = |id: &str| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        };
        for d in decisions.iter().take(PER_SUMMARY) {
            if !usable(&d.request_id) {
                continue;
            }
            if hops.len() >= CAPACITY {
                hops.pop_front();
            }
            let bounded = |s: &str, n: usize| s.chars().take(n).collect::<String>();
            hops.push_back(Hop {
                request_id: bounded(&d.request_id, 64),
                at_unix_ms: d.at_unix_ms,
                workload: workload.to_string(),
                direction: if d.inbound { "inbound" } else { "outbound" },
                service: bounded(&d.service, 256),
                route: bounded(&d.route, 256),
                rule: d.rule,
                endpoint: bounded(&d.endpoint, 64),
                tries: d.tries,
                status: d.status,
                reason: bounded(&d.reason, 64),
                why: bounded(&d.why, MAX_WHY),
            });
        }
    }

    /// Every record of `request_id`: the callers' proxies first, then the callees', each
    /// in time order (until spans link hops, direction is the order that holds).
    pub fn of(&self, request_id: &str) -> Vec<Hop> {
        let hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<Hop> = hops
            .iter()
            .filter(|h| h.request_id == request_id)
            .cloned()
            .collect();
        found.sort_by_key(|h| (h.direction != "outbound", h.at_unix_ms));
        found
    }

    /// The ID of the latest request to `service` (`name` or `namespace/name`) the mesh
    /// failed or retried.
    pub fn last_to(&self, service: &str) -> Option<String> {
        let hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        hops.iter()
            .rev()
            .find(|h| {
                h.service == service
                    || h.service
                        .rsplit_once('/')
                        .is_some_and(|(_, n)| n == service)
            })
            .map(|h| h.request_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, at: i64, inbound: bool, service: &str) -> pb::Decision {
        pb::Decision {
            request_id: id.into(),
            at_unix_ms: at,
            inbound,
            service: service.into(),
            status: 504,
            reason: "timeout".into(),
            why: "x".repeat(5000),
            ..Default::default()
        }
    }

    #[test]
    fn a_requests_hops_come_caller_first_and_the_last_failure_to_a_service_is_found() {
        let why = Why::default();
        why.add(
            "default/restaurant-2",
            &[d("r1", 200, true, "default/restaurant")],
        );
        why.add(
            "default/frontend-1",
            &[d("r1", 250, false, "default/restaurant")],
        );
        why.add("default/frontend-1", &[d("r2", 300, false, "default/menu")]);
        let hops = why.of("r1");
        let order: Vec<_> = hops
            .iter()
            .map(|h| (h.workload.as_str(), h.direction))
            .collect();
        assert_eq!(
            order,
            [
                ("default/frontend-1", "outbound"),
                ("default/restaurant-2", "inbound")
            ]
        );
        assert_eq!(hops[0].why.len(), MAX_WHY, "bounded");
        assert_eq!(why.last_to("restaurant").as_deref(), Some("r1"));
        assert_eq!(why.last_to("default/menu").as_deref(), Some("r2"));
        assert_eq!(why.last_to("payments"), None);
        // A proxy sending more than its share, or IDs no proxy makes, is cut short.
        let flood: Vec<_> = (0..1000)
            .map(|i| d(&format!("f{i}"), 0, false, "s"))
            .collect();
        why.add("w", &flood);
        assert!(why.of("f255").len() == 1 && why.of("f256").is_empty());
        why.add("w", &[d("bad id\u{1b}[2J", 0, false, "s")]);
        assert!(why.of("bad id\u{1b}[2J").is_empty());
        for i in 0..CAPACITY {
            why.add("w", &[d(&format!("n{i}"), 0, false, "s")]);
        }
        assert!(why.of("r1").is_empty(), "the oldest went first");
    }
}

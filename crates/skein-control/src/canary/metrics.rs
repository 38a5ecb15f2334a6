//! Where canary analysis reads the canary's traffic: a [`MetricsSource`] gives what each
//! workload served since some point (monotonic totals); the controller keeps the totals at
//! the start of an interval and takes the difference at its end, so intervals of any
//! length are measured exactly, whatever the central view's 10-second slots.

use super::plan::Observation;
use crate::telemetry::{Central, Served};
use std::collections::BTreeMap;

/// The totals the controller differences.
pub trait MetricsSource: Send + Sync {
    /// What each of `workloads` (in `namespace`) served so far; absent: nothing known.
    fn served(&self, namespace: &str, workloads: &[String]) -> BTreeMap<String, Served>;

    /// Whether the source can answer now (a new leader's view of the other replicas is
    /// read first: an interval measured before would count their whole history).
    fn ready(&self) -> bool {
        true
    }
}

impl MetricsSource for Central {
    fn served(&self, namespace: &str, workloads: &[String]) -> BTreeMap<String, Served> {
        Central::served(self, namespace, workloads)
            .into_iter()
            .collect()
    }
}

/// What `now` adds to `base` for the workloads that were the canary's when `base` was
/// taken (`then`, by name; keys are a workload's name, or `replica/name`). A workload of
/// `then` without totals in `base` had served nothing yet and counts whole; one that joined
/// the canary during the interval counts from the next (its totals may span hours before
/// it was the canary's); one that went away counts nothing more.
pub fn observe(
    base: &BTreeMap<String, Served>,
    then: &[String],
    now: &BTreeMap<String, Served>,
) -> Observation {
    let mut sum = Served::default();
    for (key, totals) in now {
        let workload = key.rsplit('/').next().unwrap_or(key);
        match base.get(key) {
            Some(before) => sum.add(&totals.since(before)),
            None if then.iter().any(|w| w == workload) => sum.add(totals),
            None => {}
        }
    }
    Observation {
        requests: sum.requests,
        failures: sum.failures,
        p99_ms: sum.latency.quantile(0.99).map(|d| d.as_secs_f64() * 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(requests: u64, failures: u64, ms: u64) -> Served {
        let mut s = Served {
            requests,
            failures,
            ..Served::default()
        };
        let b = skein_model::latency::bucket_of(ms * 1000);
        s.latency.counts[b] = requests;
        s
    }

    #[test]
    fn differences_over_the_interval() {
        let then = ["a".to_string(), "c".to_string()];
        let base = BTreeMap::from([("a".to_string(), served(100, 1, 5))]);
        let mut now = BTreeMap::from([("a".to_string(), served(150, 11, 5))]);
        let o = observe(&base, &then, &now);
        assert_eq!((o.requests, o.failures), (50, 10));
        assert_eq!(o.success_rate(), Some(80.0));
        assert!(o.p99_ms.unwrap() >= 5.0 && o.p99_ms.unwrap() < 7.0, "{o:?}");
        // A workload that joined the canary during the interval counts from the next one.
        now.insert("b".into(), served(10, 0, 5));
        assert_eq!(observe(&base, &then, &now).requests, 50);
        // One that was the canary's but had served nothing yet counts whole.
        now.insert("c".into(), served(7, 0, 5));
        assert_eq!(observe(&base, &then, &now).requests, 57);
        // Keys of another replica's share: by the workload's name.
        now.insert("r2/c".into(), served(3, 0, 5));
        assert_eq!(observe(&base, &then, &now).requests, 60);
        // One that went away contributes nothing.
        assert_eq!(observe(&base, &then, &BTreeMap::new()).requests, 0);
        assert_eq!(observe(&base, &then, &BTreeMap::new()).success_rate(), None);
    }
}

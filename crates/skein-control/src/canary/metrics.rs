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
}

impl MetricsSource for Central {
    fn served(&self, namespace: &str, workloads: &[String]) -> BTreeMap<String, Served> {
        Central::served(self, namespace, workloads)
            .into_iter()
            .collect()
    }
}

/// What `now` adds to `base`, over the workloads in `now` (a workload new since `base`
/// counts from zero), as an observation.
pub fn observe(base: &BTreeMap<String, Served>, now: &BTreeMap<String, Served>) -> Observation {
    let mut sum = Served::default();
    for (w, totals) in now {
        match base.get(w) {
            Some(before) => sum.add(&totals.since(before)),
            None => sum.add(totals),
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
        let base = BTreeMap::from([("a".to_string(), served(100, 1, 5))]);
        let mut now = BTreeMap::from([("a".to_string(), served(150, 11, 5))]);
        let o = observe(&base, &now);
        assert_eq!((o.requests, o.failures), (50, 10));
        assert_eq!(o.success_rate(), Some(80.0));
        assert!(o.p99_ms.unwrap() >= 5.0 && o.p99_ms.unwrap() < 7.0, "{o:?}");
        // A workload that appeared during the interval counts whole.
        now.insert("b".into(), served(10, 0, 5));
        assert_eq!(observe(&base, &now).requests, 60);
        // A workload that went away contributes nothing.
        assert_eq!(observe(&base, &BTreeMap::new()).requests, 0);
        assert_eq!(observe(&base, &BTreeMap::new()).success_rate(), None);
    }
}

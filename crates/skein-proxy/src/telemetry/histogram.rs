//! Latency histograms recorded into concurrently, on the buckets of
//! [`skein_model::latency`] (100 µs to 30 s; `/metrics` shows a coarse subset, summaries
//! for the control plane every bucket).

pub use skein_model::latency::{bucket_of, Snapshot, BOUNDS_US, BUCKETS, EXPOSED};
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram recorded into concurrently.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts per bucket and the sum, now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn observations_land_in_their_bucket_and_sum() {
        let h = Histogram::default();
        h.record(Duration::from_millis(51));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count(), 2);
        assert_eq!(s.sum_us, 60_051_000);
        let exposed = s.exposed();
        assert_eq!(exposed.len(), EXPOSED.len() + 1);
        assert_eq!(exposed.iter().find(|(b, _)| *b == 0.05).unwrap().1, 0);
        assert_eq!(exposed.iter().find(|(b, _)| *b == 0.1).unwrap().1, 1);
        assert_eq!(
            exposed.iter().find(|(b, _)| *b == 0.25).unwrap().1,
            0,
            "per bucket, not cumulative: the encoder adds them up"
        );
        assert_eq!(
            exposed.last().unwrap(),
            &(f64::INFINITY, 1),
            "60 s is above 30 s"
        );
        assert_eq!(exposed.iter().map(|(_, n)| n).sum::<u64>(), s.count());
    }
}

//! Latency histogram buckets shared by proxies and the control plane: fixed log-linear
//! buckets from 100 µs to 30 s, fine enough that a percentile read from them is within one
//! bucket of the truth (a bucket spans at most a third of its lower bound).
//!
//! Bucket bounds are 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8 and 9 times each power of ten,
//! so the usual Prometheus bounds (1, 2.5, 5 per decade) are among them: a proxy's
//! `/metrics` exposes that coarse subset ([`EXPOSED`]), while summaries for the control
//! plane carry every bucket. Pure: recording lives in the proxy.

/// Upper bounds of the buckets, in microseconds; a last bucket above them holds the rest.
pub const BOUNDS_US: [u32; 66] = {
    const MANTISSAS: [u32; 12] = [10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90];
    let mut out = [0u32; 66];
    let mut i = 0;
    let mut scale = 10; // 10 × 10 µs = 100 µs
    while i < 60 {
        let mut m = 0;
        while m < 12 {
            out[i] = MANTISSAS[m] * scale;
            i += 1;
            m += 1;
        }
        scale *= 10;
    }
    // 10 s to 30 s.
    let tail = [10, 12, 15, 20, 25, 30];
    let mut t = 0;
    while t < 6 {
        out[60 + t] = tail[t] * 1_000_000;
        t += 1;
    }
    out
};

/// Number of buckets, the overflow bucket included.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// The bounds `/metrics` shows, in seconds (each one of [`BOUNDS_US`]).
pub const EXPOSED: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The bucket a duration of `us` microseconds falls in.
pub fn bucket_of(us: u64) -> usize {
    BOUNDS_US.partition_point(|&b| u64::from(b) < us)
}

/// A histogram's values at one moment (or a difference of two moments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Observations per bucket.
    pub counts: [u64; BUCKETS],
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            counts: [0; BUCKETS],
            sum_us: 0,
        }
    }
}

impl Snapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The observations between each of [`EXPOSED`]'s bounds and the one before it (not
    /// cumulative: the exposition encoder adds them up into the `le` buckets), ending
    /// with `+Inf` for those above the last.
    pub fn exposed(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(EXPOSED.len() + 1);
        let mut since_last = 0;
        let mut next = 0;
        for (i, bound) in BOUNDS_US.iter().enumerate() {
            since_last += self.counts[i];
            if next < EXPOSED.len() && (EXPOSED[next] * 1e6).round() as u32 == *bound {
                out.push((EXPOSED[next], since_last));
                since_last = 0;
                next += 1;
            }
        }
        let shown: u64 = out.iter().map(|(_, n)| n).sum();
        out.push((f64::INFINITY, self.count() - shown));
        out
    }
}

impl Snapshot {
    /// The `q` quantile (0 to 1), interpolated linearly inside its bucket; `None` without
    /// observations. Values in the overflow bucket read as its lower bound (30 s).
    pub fn quantile(&self, q: f64) -> Option<std::time::Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the wanted observation, 1-based.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 || seen + n < rank {
                seen += n;
                continue;
            }
            let low = if i == 0 { 0 } else { BOUNDS_US[i - 1] } as f64;
            let Some(&high) = BOUNDS_US.get(i) else {
                return Some(std::time::Duration::from_micros(low as u64));
            };
            let within = (rank - seen) as f64 / n as f64;
            let us = low + (f64::from(high) - low) * within;
            return Some(std::time::Duration::from_micros(us.round() as u64));
        }
        None
    }

    /// Adds `other`'s observations to these.
    pub fn add(&mut self, other: &Snapshot) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// What was observed since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            counts: std::array::from_fn(|i| self.counts[i].saturating_sub(earlier.counts[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_rise_from_100us_to_30s_and_include_every_exposed_bound() {
        assert_eq!(BOUNDS_US[0], 100);
        assert_eq!(BOUNDS_US[65], 30_000_000);
        assert!(BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
        for b in EXPOSED {
            let us = (b * 1e6).round() as u32;
            assert!(BOUNDS_US.contains(&us), "{b} s is a bucket bound");
        }
        // 50 ms and 60 ms are neighbours: a 50–60 ms latency reads as 50–60 ms.
        let i = BOUNDS_US.iter().position(|&b| b == 50_000).unwrap();
        assert_eq!(BOUNDS_US[i + 1], 60_000);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(
            bucket_of(100),
            0,
            "bounds are inclusive, like Prometheus `le`"
        );
        assert_eq!(bucket_of(101), 1);
        assert_eq!(bucket_of(30_000_001), BUCKETS - 1, "overflow");
    }

    #[test]
    fn quantiles_fall_inside_the_bucket_of_the_ranked_observation() {
        let mut s = Snapshot::default();
        s.counts[bucket_of(2_000)] = 90;
        s.counts[bucket_of(52_000)] = 10;
        let ms = |q| s.quantile(q).unwrap().as_secs_f64() * 1e3;
        assert!((1.5..=2.0).contains(&ms(0.5)), "p50 {}", ms(0.5));
        assert!((1.5..=2.0).contains(&ms(0.9)), "p90 {}", ms(0.9));
        assert!((50.0..=60.0).contains(&ms(0.95)), "p95 {}", ms(0.95));
        assert!((50.0..=60.0).contains(&ms(0.99)), "p99 {}", ms(0.99));
        assert_eq!(Snapshot::default().quantile(0.5), None);
        let mut sum = s.clone();
        sum.add(&s);
        assert_eq!(sum.count(), 200);
        assert_eq!(sum.since(&s), s);
    }
}

//! Concord's stand-in for `base2histogram` 0.2.3: the histograms openraft records its runtime
//! statistics in, without the crate's 27 MB of eagerly built lookup tables (see README.md).
//!
//! Buckets are logarithmic with 4 per power of two (the original's width 3): values 0 to 3 each
//! have a bucket of their own, and every larger value `v` falls in the bucket of its highest set
//! bit and the two bits below it. A percentile is reported as the lower bound of its bucket, so
//! it is within 25% below the true value.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::marker::PhantomData;

/// Buckets per power of two.
const GROUP: usize = 4;
/// Buckets covering every `u64`: the exact ones for 0..4, then 4 per power of two from 2^2 on.
const BUCKETS: usize = GROUP + GROUP * 62;

/// The bucket `value` falls in.
fn bucket_of(value: u64) -> usize {
    if value < GROUP as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros() as usize; // 2..=63
    let offset = ((value >> (msb - 2)) & 3) as usize;
    GROUP + (msb - 2) * GROUP + offset
}

/// The smallest value in `bucket`.
fn lower_bound(bucket: usize) -> u64 {
    if bucket < GROUP {
        return bucket as u64;
    }
    let shift = (bucket - GROUP) / GROUP;
    let offset = ((bucket - GROUP) % GROUP) as u64;
    (GROUP as u64 + offset) << shift
}

/// A histogram of `u64` values in logarithmic buckets. `T` is the per-slot data of the
/// original's sliding slots, which openraft does not use; it is kept for the type's signature.
pub struct Histogram<T = ()> {
    counts: Vec<u64>,
    total: u64,
    _slot: PhantomData<fn() -> T>,
}

impl<T> Histogram<T> {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            _slot: PhantomData,
        }
    }

    /// Records one `value`.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `value` `count` times.
    pub fn record_n(&mut self, value: u64, count: u64) {
        self.counts[bucket_of(value)] += count;
        self.total += count;
    }

    /// How many values were recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Forgets every recorded value.
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }

    /// The lower bound of the bucket holding the `p` quantile (`p` in 0..=1); 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return lower_bound(bucket);
            }
        }
        lower_bound(BUCKETS - 1)
    }

    /// The usual percentiles at once.
    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.total,
            p0_1: self.percentile(0.001),
            p1: self.percentile(0.01),
            p5: self.percentile(0.05),
            p10: self.percentile(0.10),
            p50: self.percentile(0.50),
            p90: self.percentile(0.90),
            p99: self.percentile(0.99),
            p99_9: self.percentile(0.999),
        }
    }

    /// Adds every value `other` recorded.
    pub fn merge(&mut self, other: &Histogram<T>) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
    }
}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Histogram<T> {
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
            total: self.total,
            _slot: PhantomData,
        }
    }
}

impl<T> PartialEq for Histogram<T> {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.counts == other.counts
    }
}

impl<T> Eq for Histogram<T> {}

impl<T> fmt::Debug for Histogram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("percentiles", &self.percentile_stats())
            .finish()
    }
}

/// A histogram's usual percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PercentileStats {
    /// Number of samples recorded.
    pub samples: u64,
    /// 0.1th percentile.
    pub p0_1: u64,
    /// 1st percentile.
    pub p1: u64,
    /// 5th percentile.
    pub p5: u64,
    /// 10th percentile.
    pub p10: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
}

impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[samples: {}, P0.1: {}, P1: {}, P5: {}, P10: {}, P50: {}, P90: {}, P99: {}, P99.9: {}]",
            self.samples, self.p0_1, self.p1, self.p5, self.p10, self.p50, self.p90, self.p99, self.p99_9
        )
    }
}

/// Several named histograms shown together, one line of percentiles each.
pub struct AsciiChart<T = ()> {
    series: Vec<(String, Histogram<T>)>,
}

impl<T> AsciiChart<T> {
    /// An empty chart.
    pub fn new() -> Self {
        Self { series: Vec::new() }
    }

    /// Adds `hist` under `name`.
    pub fn add(mut self, name: &str, hist: Histogram<T>) -> Self {
        self.series.push((name.to_string(), hist));
        self
    }

    /// The chart in full (here: the same as its `Display`).
    pub fn detailed(&self) -> &Self {
        self
    }
}

impl<T> Default for AsciiChart<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Display for AsciiChart<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, hist) in &self.series {
            writeln!(f, "{name}: {}", hist.percentile_stats())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_four_per_power_of_two() {
        assert_eq!(BUCKETS, 252);
        for v in 0..4 {
            assert_eq!(bucket_of(v), v as usize);
        }
        // 4, 5, 6, 7 each their own; 8-9, 10-11, 12-13, 14-15 in pairs.
        let got: Vec<usize> = (4..16).map(bucket_of).collect();
        assert_eq!(got, [4, 5, 6, 7, 8, 8, 9, 9, 10, 10, 11, 11]);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for bucket in 0..BUCKETS {
            let low = lower_bound(bucket);
            assert_eq!(bucket_of(low), bucket, "bucket {bucket} starts at {low}");
            if low > 0 {
                assert_eq!(bucket_of(low - 1), bucket - 1, "bucket {bucket} starts at {low}");
            }
        }
    }

    #[test]
    fn percentiles_are_within_a_quarter_below_the_value() {
        let mut h = Histogram::<()>::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let stats = h.percentile_stats();
        assert_eq!(stats.samples, 1000);
        for (got, want) in [
            (stats.p50, 500),
            (stats.p90, 900),
            (stats.p99, 990),
            (stats.p99_9, 999),
        ] {
            assert!(got <= want && got * 4 >= want * 3, "{got} for {want}");
        }
        assert_eq!(Histogram::<()>::new().percentile(0.5), 0);
    }

    #[test]
    fn record_n_merge_and_clear() {
        let mut a = Histogram::<()>::new();
        a.record_n(100, 3);
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.total(), 6);
        assert_ne!(a, b);
        b.clear();
        assert_eq!(b, Histogram::new());
        let chart = AsciiChart::new().add("a", a).to_string();
        assert!(chart.starts_with("a: [samples: 3"), "{chart}");
    }
}

//! Latency summaries built from the kernel's log-linear histograms.
//!
//! Count, total and max are exact (the kernel keeps them beside the histogram).
//! Percentiles come from the histogram: the bucket holding the rank, interpolated
//! linearly inside it and clamped to the exact max, so they are within the
//! bucket width (≤ 25% of the value, ±12.5% around the midpoint).

use serde::Serialize;
use tracer_common::{HIST_SLOTS, WaitStats, slot_bounds};

/// Merged waits of one report row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latency {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Lock waits only (see `WaitStats`): of `count`, those that ended
    /// with a starvation-mode hand-off.
    pub handoffs: u64,
    /// Lock waits only: hand-offs whose end could not be timed.
    pub unmeasured: u64,
    pub hist: Vec<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            count: 0,
            total_ns: 0,
            max_ns: 0,
            handoffs: 0,
            unmeasured: 0,
            hist: vec![0; HIST_SLOTS],
        }
    }
}

/// One non-empty bucket, for JSON output and bar charts.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub lo_ns: u64,
    pub hi_ns: u64,
    pub count: u64,
}

impl Latency {
    /// Adds one CPU's (or one key's) aggregate. Histogram slots wrap: a wait that woke
    /// more than once may have left one CPU's slot below zero and another's
    /// above (see `WaitStats::hist`); their sum is right.
    pub fn add(&mut self, s: &WaitStats) {
        self.count = self.count.saturating_add(s.count);
        self.total_ns = self.total_ns.saturating_add(s.total_ns);
        self.max_ns = self.max_ns.max(s.max_ns);
        self.handoffs = self.handoffs.saturating_add(s.handoffs);
        self.unmeasured = self.unmeasured.saturating_add(s.unmeasured);
        for (a, b) in self.hist.iter_mut().zip(s.hist.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    pub fn merge(&mut self, o: &Latency) {
        self.count = self.count.saturating_add(o.count);
        self.total_ns = self.total_ns.saturating_add(o.total_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
        self.handoffs = self.handoffs.saturating_add(o.handoffs);
        self.unmeasured = self.unmeasured.saturating_add(o.unmeasured);
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// The `q`-quantile (0 < q ≤ 1) in ns; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let n: u64 = self.hist.iter().sum();
        if n == 0 {
            return 0;
        }
        // Rank of the wanted sample, 1-based.
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (slot, &c) in self.hist.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let (lo, hi) = slot_bounds(slot);
                let hi = if hi == u64::MAX {
                    self.max_ns.max(lo)
                } else {
                    hi
                };
                let frac = (rank - seen) as f64 / c as f64;
                let v = lo as f64 + (hi - lo) as f64 * frac;
                return (v as u64).min(self.max_ns).max(lo.min(self.max_ns));
            }
            seen += c;
        }
        self.max_ns
    }

    pub fn buckets(&self) -> Vec<Bucket> {
        self.hist
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(slot, &count)| {
                let (lo_ns, hi_ns) = slot_bounds(slot);
                Bucket {
                    lo_ns,
                    hi_ns,
                    count,
                }
            })
            .collect()
    }
}

/// Formats nanoseconds for tables: `850ns`, `12.3µs`, `4.56ms`, `1.20s`.
pub fn fmt_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", f / 1e6)
    } else {
        format!("{:.2}s", f / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::hist_slot;

    fn from_samples(samples: &[u64]) -> Latency {
        let mut s = WaitStats::default();
        for &v in samples {
            s.count += 1;
            s.total_ns += v;
            s.max_ns = s.max_ns.max(v);
            s.hist[hist_slot(v)] += 1;
        }
        let mut l = Latency::default();
        l.add(&s);
        l
    }

    #[test]
    fn quantiles_within_bucket_error_of_exact() {
        // 1..=10000 µs, uniformly: exact p50 = 5000 µs, p99 = 9900 µs.
        let samples: Vec<u64> = (1..=10_000u64).map(|i| i * 1_000).collect();
        let l = from_samples(&samples);
        for (q, exact) in [(0.5, 5_000_000f64), (0.99, 9_900_000f64)] {
            let got = l.quantile(q) as f64;
            assert!(
                (got - exact).abs() / exact <= 0.25,
                "q={q} got={got} exact={exact}"
            );
        }
        assert_eq!(l.count, 10_000);
        assert_eq!(l.max_ns, 10_000_000);
        assert_eq!(l.quantile(1.0), 10_000_000);
    }

    #[test]
    fn single_sample_is_clamped_to_max() {
        let l = from_samples(&[1234]);
        assert_eq!(l.quantile(0.5), 1234);
        assert_eq!(l.quantile(0.99), 1234);
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Latency::default().quantile(0.5), 0);
        assert!(Latency::default().buckets().is_empty());
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ns(999), "999ns");
        assert_eq!(fmt_ns(12_345), "12.3µs");
        assert_eq!(fmt_ns(4_560_000), "4.56ms");
        assert_eq!(fmt_ns(1_200_000_000), "1.20s");
    }
}

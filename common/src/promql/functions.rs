//! The supported functions: what each computes from a series' samples in a
//! range, or from an instant vector's values.

use crate::metrics::Sample;

/// Every function the evaluator implements.
pub const SUPPORTED_FUNCTIONS: &[&str] = &[
    // Over a range vector selector.
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    // Scalars and conversions.
    "time",
    "vector",
    "scalar",
    // Element-wise on an instant vector.
    "abs",
    "ceil",
    "floor",
    "round",
    "sqrt",
    "exp",
    "ln",
    "log2",
    "log10",
    "sgn",
    "clamp",
    "clamp_min",
    "clamp_max",
    // Ordering.
    "sort",
    "sort_desc",
    // Classic histograms.
    "histogram_quantile",
];

/// The `q` quantile of cumulative `(upper bound, count)` buckets, as
/// Prometheus interpolates it: linearly inside the bucket the rank falls
/// in; NaN without a `+Inf` bucket or observations.
pub(super) fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.len() < 2 || buckets[buckets.len() - 1].0 != f64::INFINITY {
        return f64::NAN;
    }
    // Counts scraped at slightly different moments can dip: keep them monotonic.
    for i in 1..buckets.len() {
        buckets[i].1 = buckets[i].1.max(buckets[i - 1].1);
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations <= 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = buckets.iter().position(|(_, count)| *count >= rank).unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// Functions whose argument is a range vector selector.
pub(super) fn is_range_function(name: &str) -> bool {
    matches!(
        name,
        "rate"
            | "irate"
            | "increase"
            | "delta"
            | "idelta"
            | "avg_over_time"
            | "min_over_time"
            | "max_over_time"
            | "sum_over_time"
            | "count_over_time"
            | "last_over_time"
    )
}

/// The window a range function sees: the samples in `(start_ms, end_ms]`
/// and the selector's range.
pub(super) struct Window<'a> {
    pub samples: &'a [Sample],
    pub start_ms: i64,
    pub end_ms: i64,
    pub range_secs: f64,
}

/// A range function's value for one series, or None when the series has no
/// result (too few samples).
pub(super) fn range_function(name: &str, w: &Window<'_>) -> Option<f64> {
    let s = w.samples;
    if s.is_empty() {
        return None;
    }
    match name {
        "rate" => extrapolated_delta(w, true, true),
        "increase" => extrapolated_delta(w, true, false),
        "delta" => extrapolated_delta(w, false, false),
        "irate" => instant_delta(s, true),
        "idelta" => instant_delta(s, false),
        "avg_over_time" => Some(mean(s.iter().map(|p| p.value))),
        "min_over_time" => Some(s.iter().map(|p| p.value).fold(f64::NAN, |acc, v| if acc.is_nan() || v < acc { v } else { acc })),
        "max_over_time" => Some(s.iter().map(|p| p.value).fold(f64::NAN, |acc, v| if acc.is_nan() || v > acc { v } else { acc })),
        "sum_over_time" => Some(KahanSum::of(s.iter().map(|p| p.value))),
        "count_over_time" => Some(s.len() as f64),
        "last_over_time" => s.last().map(|p| p.value),
        _ => None,
    }
}

/// Prometheus's extrapolated rate: the change over the samples in the
/// window (for counters, every drop counts as a reset to zero), stretched
/// to the window's edges. An edge is reached when the first (last) sample
/// is within 1.1 average sample intervals of it; otherwise the series is
/// taken to start (end) half an average interval beyond its first (last)
/// sample. A counter is never extrapolated below zero.
fn extrapolated_delta(w: &Window<'_>, is_counter: bool, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let first = s[0];
    let last = s[s.len() - 1];
    let mut change = last.value - first.value;
    if is_counter {
        let mut prev = first.value;
        for p in &s[1..] {
            if p.value < prev {
                change += prev;
            }
            prev = p.value;
        }
    }
    let sampled_secs = (last.ts_ms - first.ts_ms) as f64 / 1000.0;
    let avg_gap = sampled_secs / (s.len() - 1) as f64;
    let threshold = avg_gap * 1.1;
    let mut to_start = (first.ts_ms - w.start_ms) as f64 / 1000.0;
    let mut to_end = (w.end_ms - last.ts_ms) as f64 / 1000.0;
    if to_start >= threshold {
        to_start = avg_gap / 2.0;
    }
    if is_counter && change > 0.0 && first.value >= 0.0 {
        // Where a line through the samples would reach zero.
        let to_zero = sampled_secs * (first.value / change);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg_gap / 2.0;
    }
    let mut factor = (sampled_secs + to_start + to_end) / sampled_secs;
    if is_rate {
        factor /= w.range_secs;
    }
    Some(change * factor)
}

/// irate / idelta: from the last two samples.
fn instant_delta(s: &[Sample], is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let last = s[s.len() - 1];
    let prev = s[s.len() - 2];
    let mut v = if is_rate && last.value < prev.value { last.value } else { last.value - prev.value };
    let gap_ms = last.ts_ms - prev.ts_ms;
    if gap_ms == 0 {
        return None;
    }
    if is_rate {
        v /= gap_ms as f64 / 1000.0;
    }
    Some(v)
}

/// A compensated (Neumaier) sum: exact for the small integers tests use,
/// and steady over long windows.
pub(super) struct KahanSum {
    sum: f64,
    c: f64,
}

impl KahanSum {
    pub fn new() -> KahanSum {
        KahanSum { sum: 0.0, c: 0.0 }
    }

    pub fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if t.is_infinite() {
            self.c = 0.0;
        } else if self.sum.abs() >= v.abs() {
            self.c += (self.sum - t) + v;
        } else {
            self.c += (v - t) + self.sum;
        }
        self.sum = t;
    }

    pub fn value(&self) -> f64 {
        if self.sum.is_infinite() || self.sum.is_nan() {
            self.sum
        } else {
            self.sum + self.c
        }
    }

    pub fn of(values: impl Iterator<Item = f64>) -> f64 {
        let mut k = KahanSum::new();
        values.for_each(|v| k.add(v));
        k.value()
    }
}

/// The mean: sum / count, or a running mean when the sum would overflow.
pub(super) fn mean(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let mut k = KahanSum::new();
    let mut n = 0usize;
    let mut any_infinite = false;
    for v in values.clone() {
        k.add(v);
        n += 1;
        any_infinite |= v.is_infinite();
    }
    if n == 0 {
        return f64::NAN;
    }
    let sum = k.value();
    if sum.is_finite() || any_infinite || sum.is_nan() {
        return sum / n as f64;
    }
    let mut m = 0.0;
    for (i, v) in values.enumerate() {
        m += (v - m) / (i + 1) as f64;
    }
    m
}

/// Go's math.Max: +Inf wins, then NaN.
pub(super) fn go_max(a: f64, b: f64) -> f64 {
    if a == f64::INFINITY || b == f64::INFINITY {
        f64::INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's math.Min: -Inf wins, then NaN.
pub(super) fn go_min(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY || b == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a < b {
        a
    } else {
        b
    }
}

/// An element-wise function of one value (with its scalar arguments).
pub(super) fn elementwise(name: &str, v: f64, args: &[f64]) -> f64 {
    let arg = |i: usize, default: f64| args.get(i).copied().unwrap_or(default);
    match name {
        "abs" => v.abs(),
        "ceil" => v.ceil(),
        "floor" => v.floor(),
        "round" => {
            let inverse = 1.0 / arg(0, 1.0);
            (v * inverse + 0.5).floor() / inverse
        }
        "sqrt" => v.sqrt(),
        "exp" => v.exp(),
        "ln" => v.ln(),
        "log2" => v.log2(),
        "log10" => v.log10(),
        "sgn" => {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        }
        "clamp" => go_max(arg(0, f64::NAN), go_min(arg(1, f64::NAN), v)),
        "clamp_min" => go_max(arg(0, f64::NAN), v),
        "clamp_max" => go_min(arg(0, f64::NAN), v),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(points: &[(i64, f64)]) -> Vec<Sample> {
        points.iter().map(|&(ts_ms, value)| Sample { ts_ms, value }).collect()
    }

    #[test]
    fn rate_extrapolates_to_both_edges_when_samples_are_close() {
        // Window (0, 60s]; samples every 10 s from 5 s to 55 s, +1 per sample.
        let s = samples(&[(5_000, 1.0), (15_000, 2.0), (25_000, 3.0), (35_000, 4.0), (45_000, 5.0), (55_000, 6.0)]);
        let w = Window { samples: &s, start_ms: 0, end_ms: 60_000, range_secs: 60.0 };
        // change 5 over 50 s, stretched to 60 s → 6; per second 0.1.
        assert!((range_function("increase", &w).unwrap() - 6.0).abs() < 1e-12);
        assert!((range_function("rate", &w).unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn counters_are_not_extrapolated_below_zero() {
        // Starts at 1 and grows 10 per 10 s: zero is reached 1 s before the
        // first sample, earlier than the window start (5 s before).
        let s = samples(&[(5_000, 1.0), (15_000, 11.0), (25_000, 21.0)]);
        let w = Window { samples: &s, start_ms: 0, end_ms: 30_000, range_secs: 30.0 };
        // change 20 over 20 s; start extends 1 s (to zero), end 5 s → 26 s.
        assert!((range_function("increase", &w).unwrap() - 26.0).abs() < 1e-12);
        // delta is not a counter: 5 s at both ends → 30 s.
        assert!((range_function("delta", &w).unwrap() - 30.0).abs() < 1e-12);
    }

    #[test]
    fn helpers_follow_go_and_prometheus() {
        assert!(go_max(f64::NAN, 1.0).is_nan());
        assert_eq!(go_max(f64::NAN, f64::INFINITY), f64::INFINITY);
        assert_eq!(elementwise("round", 2.5, &[]), 3.0);
        // histogram_quantile: 10 observations, 4 <= 0.1, 8 <= 0.2, 10 <= +Inf.
        let buckets = || vec![(0.2, 8.0), (f64::INFINITY, 10.0), (0.1, 4.0)];
        assert!((bucket_quantile(0.5, &mut buckets()) - 0.125).abs() < 1e-12);
        assert!((bucket_quantile(0.2, &mut buckets()) - 0.05).abs() < 1e-12);
        assert_eq!(bucket_quantile(0.95, &mut buckets()), 0.2, "in the +Inf bucket: the highest finite bound");
        assert!(bucket_quantile(0.5, &mut [(0.1, 1.0)]).is_nan(), "no +Inf bucket");
        assert_eq!(bucket_quantile(2.0, &mut buckets()), f64::INFINITY);
        assert_eq!(elementwise("round", -2.5, &[]), -2.0);
        assert_eq!(elementwise("round", 17.0, &[5.0]), 15.0);
        assert_eq!(elementwise("sgn", -0.0, &[]), 0.0);
        assert_eq!(KahanSum::of([1e100, 1.0, -1e100].into_iter()), 1.0);
        assert_eq!(mean([f64::MAX, f64::MAX].into_iter()), f64::MAX);
    }
}

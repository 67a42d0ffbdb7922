//! The node's own recent samples in memory, as a [`SeriesSource`]: what
//! the agent's policies query while it is cut off from the master.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

use fogmesh_common::metrics::{BatchSample, Labels, Matcher, Sample, Series, SeriesSource};

/// How far back queries can see (enough for `rate(...[5m])` and more).
pub const KEEP_MS: i64 = 30 * 60 * 1000;
/// Most series kept: an exporter with runaway labels cannot eat the node.
const MAX_SERIES: usize = 20_000;

#[derive(Default)]
pub struct RecentSamples {
    series: RwLock<HashMap<Labels, VecDeque<Sample>>>,
}

impl RecentSamples {
    /// Adds one collection's samples and forgets what is older than [`KEEP_MS`].
    pub fn add(&self, samples: &[BatchSample], now_ms: i64) {
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        for s in samples {
            if !series.contains_key(&s.labels) && series.len() >= MAX_SERIES {
                continue;
            }
            let points = series.entry(s.labels.clone()).or_default();
            if points.back().is_none_or(|p| p.ts_ms < s.ts_ms) {
                points.push_back(Sample { ts_ms: s.ts_ms, value: s.value });
            }
        }
        let cutoff = now_ms - KEEP_MS;
        series.retain(|_, points| {
            while points.front().is_some_and(|p| p.ts_ms < cutoff) {
                points.pop_front();
            }
            !points.is_empty()
        });
    }
}

impl SeriesSource for RecentSamples {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Series> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        series
            .iter()
            .filter(|(labels, _)| matchers.iter().all(|m| m.matches(labels)))
            .filter_map(|(labels, points)| {
                let samples: Vec<Sample> = points.iter().filter(|p| p.ts_ms >= start_ms && p.ts_ms <= end_ms).copied().collect();
                (!samples.is_empty()).then(|| Series { labels: labels.clone(), samples })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogmesh_common::metrics::MatchOp;

    #[test]
    fn recent_samples_answer_promql_and_forget_the_old() {
        let r = RecentSamples::default();
        let l = Labels::metric("c", &[("node", "n")]);
        for i in 0..10i64 {
            r.add(&[BatchSample { labels: l.clone(), value: (i * 10) as f64, ts_ms: i * 1000 }], i * 1000);
        }
        let v = fogmesh_common::promql::instant(&r, "rate(c[10s])", 9000).unwrap();
        let fogmesh_common::promql::Value::Vector(v) = v else { panic!("{v:?}") };
        // 90 over 9 s sampled; the counter started at 0, so no extrapolation before it: 90 / 10 s.
        assert!((v[0].value - 9.0).abs() < 1e-9, "{v:?}");
        r.add(&[], KEEP_MS + 20_000);
        assert!(r.select(&[Matcher::new("__name__", MatchOp::Equal, "c").unwrap()], 0, i64::MAX).is_empty());
    }
}

//! Metric samples as they travel and are stored: label sets, samples,
//! series, the batches an agent publishes, and series selection.

pub mod batch;
pub mod selector;

use serde::{Deserialize, Serialize};

pub use batch::{Batch, BatchAck, BatchSample};
pub use selector::{MatchOp, Matcher, SeriesSource};

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// A series' identity: label pairs sorted by name, names unique,
/// `__name__` among them.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Sorts and deduplicates (the last value of a repeated name wins);
    /// drops empty values, which in Prometheus mean "no such label".
    pub fn new(mut pairs: Vec<(String, String)>) -> Labels {
        pairs.retain(|(_, v)| !v.is_empty());
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|a, b| a.0 == b.0);
        Labels(pairs)
    }

    /// `name{k="v",...}` as labels.
    pub fn metric(name: &str, pairs: &[(&str, &str)]) -> Labels {
        let mut all: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.push((METRIC_NAME.to_string(), name.to_string()));
        Labels::new(all)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy without the metric name (what most functions return).
    pub fn without_name(&self) -> Labels {
        Labels(self.0.iter().filter(|(k, _)| k != METRIC_NAME).cloned().collect())
    }

    /// A copy keeping only `names` (or all but them with `keep == false`).
    pub fn filtered(&self, names: &[String], keep: bool) -> Labels {
        Labels(self.0.iter().filter(|(k, _)| names.contains(k) == keep).cloned().collect())
    }

    /// A copy with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut pairs: Vec<(String, String)> = self.0.iter().filter(|(k, _)| k != name).cloned().collect();
        pairs.push((name.to_string(), value.to_string()));
        Labels::new(pairs)
    }
}

impl std::fmt::Display for Labels {
    /// `name{a="1",b="2"}`, as Prometheus writes a series.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name().unwrap_or("");
        let rest: Vec<String> = self.0.iter().filter(|(k, _)| k != METRIC_NAME).map(|(k, v)| format!("{k}={v:?}")).collect();
        write!(f, "{name}{{{}}}", rest.join(","))
    }
}

/// One value at one time (unix milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub ts_ms: i64,
    pub value: f64,
}

/// A series and its samples in time order (no two with one timestamp).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_sort_dedupe_and_drop_empty_values() {
        let l = Labels::new(vec![("b".into(), "1".into()), ("a".into(), "x".into()), ("b".into(), "2".into()), ("c".into(), String::new())]);
        assert_eq!(l.pairs(), &[("a".to_string(), "x".to_string()), ("b".to_string(), "2".to_string())]);
        let m = Labels::metric("up", &[("job", "node")]);
        assert_eq!(m.name(), Some("up"));
        assert_eq!(m.to_string(), "up{job=\"node\"}");
        assert_eq!(m.without_name().name(), None);
    }
}

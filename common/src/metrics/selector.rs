//! Which series a query reads: label matchers, and where series come from.

use regex::Regex;

use super::{Labels, Series};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    /// Fully anchored, as in Prometheus.
    Regex,
    NotRegex,
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    /// A matcher; a regex that does not compile is an error naming it.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(Regex::new(&format!("^(?:{value})$")).map_err(|e| format!("invalid regular expression {value:?} for label {name}: {e}"))?)
            }
            _ => None,
        };
        Ok(Matcher { name: name.to_string(), op, value: value.to_string(), regex })
    }

    /// Whether a series' labels satisfy this matcher (a missing label is "").
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).unwrap_or("");
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

/// Where a query reads series: the master's store, or an agent's recent
/// local samples.
pub trait SeriesSource {
    /// Every series matching all `matchers`, with its samples in
    /// `[start_ms, end_ms]`, in time order.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Series>;

    /// Why the source cannot answer yet (it would answer from part of its
    /// data), or `None` when it can.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

//! Evaluating a checked expression at one instant. Each selector's series
//! are read from the source once per query, over the whole span the query
//! needs, and cut to each step's window here.

use std::collections::{HashMap, HashSet};

use promql_parser::label::MatchOp as ParserOp;
use promql_parser::parser::{AggregateExpr, BinaryExpr, Call, Expr, MatrixSelector, Offset, VectorSelector};

use super::functions::{bucket_quantile, elementwise, is_range_function, range_function, Window, SUPPORTED_FUNCTIONS};
use super::validate::unwrap_parens;
use super::{aggregate, binary, PromqlError, Value, VectorSample, LOOKBACK_MS};
use crate::metrics::{Labels, MatchOp, Matcher, Series, SeriesSource, METRIC_NAME};

pub(super) struct Evaluator<'a> {
    src: &'a dyn SeriesSource,
    /// First and last instant the query is evaluated at.
    start_ms: i64,
    end_ms: i64,
    /// Series read per selector (keyed by the selector's address in the
    /// tree, which does not move while the query runs).
    fetched: HashMap<usize, Vec<Series>>,
}

/// The fault of a broken invariant: an error, never a panic.
fn internal(what: &str) -> PromqlError {
    PromqlError::eval(format!("internal error: {what}"))
}

fn millis(d: &std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(vs: &VectorSelector) -> i64 {
    match &vs.offset {
        None => 0,
        Some(Offset::Pos(d)) => millis(d),
        Some(Offset::Neg(d)) => millis(d).saturating_neg(),
    }
}

/// The selector's matchers in this crate's form (the metric name first).
fn matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, PromqlError> {
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::new(METRIC_NAME, MatchOp::Equal, name).map_err(PromqlError::eval)?);
    }
    for m in &vs.matchers.matchers {
        // For regexes, the pattern the parser compiled (it escapes Go-style
        // literal braces Rust's regex would refuse), without its anchors.
        let compiled = |r: &regex::Regex| {
            r.as_str().strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).map(str::to_string).unwrap_or_else(|| m.value.clone())
        };
        let (op, value) = match &m.op {
            ParserOp::Equal => (MatchOp::Equal, m.value.clone()),
            ParserOp::NotEqual => (MatchOp::NotEqual, m.value.clone()),
            ParserOp::Re(r) => (MatchOp::Regex, compiled(r)),
            ParserOp::NotRe(r) => (MatchOp::NotRegex, compiled(r)),
        };
        out.push(Matcher::new(&m.name, op, &value).map_err(PromqlError::eval)?);
    }
    Ok(out)
}

/// The samples in `(from_ms, to_ms]` of time-ordered `samples`.
fn window(samples: &[crate::metrics::Sample], from_ms: i64, to_ms: i64) -> &[crate::metrics::Sample] {
    let lo = samples.partition_point(|s| s.ts_ms <= from_ms);
    let hi = samples.partition_point(|s| s.ts_ms <= to_ms);
    if lo < hi {
        &samples[lo..hi]
    } else {
        &[]
    }
}

/// An error when two samples of a vector have one label set (which a
/// function or operator dropping the metric name can cause).
pub(super) fn check_unique_labels(v: &[VectorSample]) -> Result<(), PromqlError> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen = HashSet::with_capacity(v.len());
    for s in v {
        if !seen.insert(&s.labels) {
            return Err(PromqlError::eval(format!("vector cannot contain metrics with the same labelset {}", s.labels)));
        }
    }
    Ok(())
}

impl<'a> Evaluator<'a> {
    pub(super) fn new(src: &'a dyn SeriesSource, start_ms: i64, end_ms: i64) -> Evaluator<'a> {
        Evaluator { src, start_ms, end_ms, fetched: HashMap::new() }
    }

    /// The selector's series with every sample any step can need: those in
    /// `(start - offset - lookback, end - offset]`.
    fn fetch(&mut self, vs: &VectorSelector, lookback_ms: i64) -> Result<&[Series], PromqlError> {
        let key = vs as *const VectorSelector as usize;
        if !self.fetched.contains_key(&key) {
            let off = offset_ms(vs);
            let from = self.start_ms.saturating_sub(off).saturating_sub(lookback_ms).saturating_add(1);
            let to = self.end_ms.saturating_sub(off);
            let mut series = self.src.select(&matchers(vs)?, from, to);
            for s in &mut series {
                if !s.samples.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms) {
                    s.samples.sort_by_key(|p| p.ts_ms);
                    s.samples.dedup_by_key(|p| p.ts_ms);
                }
            }
            self.fetched.insert(key, series);
        }
        self.fetched.get(&key).map(Vec::as_slice).ok_or_else(|| internal("selector not fetched"))
    }

    /// The value of `expr` at `t`.
    ///
    /// The functions on this recursive path keep their frames small (the
    /// work that does not recurse lives in `#[inline(never)]` helpers), so
    /// a tree of `MAX_DEPTH` levels fits a 2 MiB stack even unoptimised.
    pub(super) fn eval(&mut self, expr: &Expr, t: i64) -> Result<Value, PromqlError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => {
                let v = self.eval(&u.expr, t)?;
                negate(v)
            }
            Expr::VectorSelector(vs) => self.instant_selector(vs, t),
            Expr::MatrixSelector(ms) => self.range_selector(ms, t),
            Expr::Binary(b) => {
                let lhs = self.eval(&b.lhs, t)?;
                let rhs = self.eval(&b.rhs, t)?;
                combine(b, lhs, rhs)
            }
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Subquery(_) | Expr::Extension(_) => Err(not_evaluable(expr)),
        }
    }

    fn eval_vector(&mut self, expr: &Expr, t: i64) -> Result<Vec<VectorSample>, PromqlError> {
        match self.eval(expr, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(wrong_type("an instant vector", &other)),
        }
    }

    fn eval_scalar(&mut self, expr: &Expr, t: i64) -> Result<f64, PromqlError> {
        match self.eval(expr, t)? {
            Value::Scalar(v) => Ok(v),
            other => Err(wrong_type("a scalar", &other)),
        }
    }

    /// Each series' newest sample in `(t - offset - 5m, t - offset]`.
    #[inline(never)]
    fn instant_selector(&mut self, vs: &VectorSelector, t: i64) -> Result<Value, PromqlError> {
        let at = t.saturating_sub(offset_ms(vs));
        let series = self.fetch(vs, LOOKBACK_MS)?;
        let mut out = Vec::new();
        for s in series {
            if let Some(p) = window(&s.samples, at.saturating_sub(LOOKBACK_MS), at).last() {
                out.push(VectorSample { labels: s.labels.clone(), value: p.value });
            }
        }
        Ok(Value::Vector(out))
    }

    /// The selected series' samples in `(t - offset - range, t - offset]`.
    #[inline(never)]
    fn range_selector(&mut self, ms: &MatrixSelector, t: i64) -> Result<Value, PromqlError> {
        let range = millis(&ms.range);
        let at = t.saturating_sub(offset_ms(&ms.vs));
        let series = self.fetch(&ms.vs, range)?;
        let out = series
            .iter()
            .filter_map(|s| {
                let w = window(&s.samples, at.saturating_sub(range), at);
                (!w.is_empty()).then(|| Series { labels: s.labels.clone(), samples: w.to_vec() })
            })
            .collect();
        Ok(Value::Matrix(out))
    }

    fn aggregate(&mut self, a: &AggregateExpr, t: i64) -> Result<Value, PromqlError> {
        let param = match &a.param {
            Some(p) => Some(self.eval_scalar(p, t)?),
            None => None,
        };
        let input = self.eval_vector(&a.expr, t)?;
        finish_aggregate(a, param, input)
    }

    fn call(&mut self, c: &Call, t: i64) -> Result<Value, PromqlError> {
        let name = c.func.name;
        if is_range_function(name) {
            return self.range_call(c, t);
        }
        if name == "time" {
            return Ok(Value::Scalar(t as f64 / 1000.0));
        }
        if name == "histogram_quantile" {
            let (Some(q), Some(buckets)) = (c.args.args.first(), c.args.args.get(1)) else { return Err(missing_argument(name)) };
            let q = self.eval_scalar(q, t)?;
            return Ok(Value::Vector(histogram_quantile(q, self.eval_vector(buckets, t)?)));
        }
        // Every other function: its first argument, then scalar arguments.
        let first = match c.args.args.first() {
            Some(a) => self.eval(a, t)?,
            None => return Err(missing_argument(name)),
        };
        let mut scalars = Vec::new();
        for a in c.args.args.iter().skip(1) {
            scalars.push(self.eval_scalar(a, t)?);
        }
        apply_function(name, first, &scalars)
    }

    /// A function of a range vector selector, for every selected series.
    #[inline(never)]
    fn range_call(&mut self, c: &Call, t: i64) -> Result<Value, PromqlError> {
        let name = c.func.name;
        let Some(Expr::MatrixSelector(ms)) = c.args.args.first().map(|a| unwrap_parens(a)) else {
            return Err(PromqlError::unsupported(format!(
                "function '{name}' needs a range vector selector such as foo[5m] as its argument"
            )));
        };
        let range = millis(&ms.range);
        let range_secs = ms.range.as_secs_f64();
        let at = t.saturating_sub(offset_ms(&ms.vs));
        let from = at.saturating_sub(range);
        let keep_name = name == "last_over_time";
        let series = self.fetch(&ms.vs, range)?;
        let mut out = Vec::new();
        for s in series {
            let w = Window { samples: window(&s.samples, from, at), start_ms: from, end_ms: at, range_secs };
            if let Some(value) = range_function(name, &w) {
                let labels = if keep_name { s.labels.clone() } else { s.labels.without_name() };
                out.push(VectorSample { labels, value });
            }
        }
        check_unique_labels(&out)?;
        Ok(Value::Vector(out))
    }
}

#[cold]
#[inline(never)]
fn wrong_type(expected: &str, got: &Value) -> PromqlError {
    PromqlError::eval(format!("expected {expected}, got {}", got.type_name()))
}

#[cold]
#[inline(never)]
fn missing_argument(name: &str) -> PromqlError {
    PromqlError::eval(format!("{name}: missing argument"))
}

#[cold]
#[inline(never)]
fn not_evaluable(expr: &Expr) -> PromqlError {
    match expr {
        Expr::Subquery(_) => PromqlError::unsupported("subqueries are not supported"),
        _ => PromqlError::unsupported("extension expressions are not supported"),
    }
}

/// Unary minus: negated values, without the metric name.
#[inline(never)]
fn negate(v: Value) -> Result<Value, PromqlError> {
    match v {
        Value::Scalar(v) => Ok(Value::Scalar(-v)),
        Value::Vector(v) => {
            let out: Vec<VectorSample> = v.into_iter().map(|s| VectorSample { labels: s.labels.without_name(), value: -s.value }).collect();
            check_unique_labels(&out)?;
            Ok(Value::Vector(out))
        }
        other => Err(wrong_type("a scalar or an instant vector for unary minus", &other)),
    }
}

/// A binary operator applied to its evaluated sides.
#[inline(never)]
fn combine(b: &BinaryExpr, lhs: Value, rhs: Value) -> Result<Value, PromqlError> {
    let op = b.op.id();
    let return_bool = b.return_bool();
    let out = match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => return binary::scalar_scalar(op, l, r, return_bool).map(Value::Scalar),
        (Value::Vector(l), Value::Scalar(r)) => binary::vector_scalar(op, l, r, false, return_bool)?,
        (Value::Scalar(l), Value::Vector(r)) => binary::vector_scalar(op, r, l, true, return_bool)?,
        (Value::Vector(l), Value::Vector(r)) => {
            let matching = b.modifier.as_ref().and_then(|m| m.matching.as_ref());
            binary::vector_vector(op, l, r, matching, return_bool)?
        }
        (l, r) => return Err(PromqlError::eval(format!("operator '{}' cannot combine {} and {}", b.op, l.type_name(), r.type_name()))),
    };
    if !binary::is_set(op) {
        check_unique_labels(&out)?;
    }
    Ok(Value::Vector(out))
}

#[inline(never)]
fn finish_aggregate(a: &AggregateExpr, param: Option<f64>, input: Vec<VectorSample>) -> Result<Value, PromqlError> {
    aggregate::aggregate(a.op.id(), param, a.modifier.as_ref(), input).map(Value::Vector)
}

/// `histogram_quantile(q, buckets)`: per series without `le`, the
/// quantile interpolated within its classic `_bucket` counts. Series
/// without a parseable `le` are ignored, as Prometheus does.
#[inline(never)]
fn histogram_quantile(q: f64, input: Vec<VectorSample>) -> Vec<VectorSample> {
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    for s in input {
        let Some(le) = s.labels.get("le").and_then(|le| le.parse::<f64>().ok()) else { continue };
        let labels = s.labels.without_name().with("le", "");
        match groups.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, buckets)) => buckets.push((le, s.value)),
            None => groups.push((labels, vec![(le, s.value)])),
        }
    }
    groups.into_iter().map(|(labels, mut buckets)| VectorSample { labels, value: bucket_quantile(q, &mut buckets) }).collect()
}

/// A function of an instant value (and scalar arguments).
#[inline(never)]
fn apply_function(name: &str, first: Value, scalars: &[f64]) -> Result<Value, PromqlError> {
    match (name, first) {
        ("vector", Value::Scalar(v)) => Ok(Value::Vector(vec![VectorSample { labels: Labels::default(), value: v }])),
        ("scalar", Value::Vector(v)) => Ok(Value::Scalar(if v.len() == 1 { v[0].value } else { f64::NAN })),
        ("sort" | "sort_desc", Value::Vector(v)) => Ok(Value::Vector(aggregate::sort(v, name == "sort_desc"))),
        (
            "abs" | "ceil" | "floor" | "round" | "sqrt" | "exp" | "ln" | "log2" | "log10" | "sgn" | "clamp" | "clamp_min" | "clamp_max",
            Value::Vector(v),
        ) => {
            if name == "clamp" && scalars.len() == 2 && scalars[1] < scalars[0] {
                return Ok(Value::Vector(Vec::new()));
            }
            let out: Vec<VectorSample> = v
                .into_iter()
                .map(|s| VectorSample { labels: s.labels.without_name(), value: elementwise(name, s.value, scalars) })
                .collect();
            check_unique_labels(&out)?;
            Ok(Value::Vector(out))
        }
        ("vector", other) => Err(wrong_type("a scalar in vector()", &other)),
        (_, other) if SUPPORTED_FUNCTIONS.contains(&name) => Err(wrong_type(&format!("an instant vector in {name}()"), &other)),
        _ => Err(PromqlError::unsupported(format!("unsupported function '{name}'"))),
    }
}

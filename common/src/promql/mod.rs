//! A PromQL evaluator over a [`SeriesSource`]: the subset of Prometheus's
//! query language that scaling policies use, with Prometheus's semantics.
//!
//! ```text
//! query ──syntax::parse_expr──▶ Expr ──validate::check──▶ Expr ──eval::Evaluator (per step)──▶ Value
//!           (promql-parser,                (unsupported            │ selectors fetched once per query
//!            limits, positions)             constructs named)       ▼ from the SeriesSource
//! ```
//!
//! Supported: instant and range vector selectors (`=`, `!=`, `=~`, `!~`,
//! `offset`), number and string literals, parentheses, unary minus, the
//! binary operators `+ - * / % ^ atan2`, comparisons (filtering, or `bool`),
//! `and`/`or`/`unless`, one-to-one vector matching with `on`/`ignoring`,
//! the aggregations `sum avg min max count topk bottomk` with
//! `by`/`without`, and the functions listed in [`SUPPORTED_FUNCTIONS`].
//! Everything else (subqueries, `@`, `group_left`/`group_right`, other
//! functions and aggregations) is refused up front with an error naming it.
//!
//! Evaluation never panics on any query: limits on size and nesting are
//! checked before the parser runs, and arithmetic follows IEEE 754 (division
//! by zero gives ±Inf or NaN, as in Prometheus).

mod aggregate;
mod binary;
mod eval;
mod functions;
mod syntax;
mod validate;

use std::collections::HashMap;
use std::fmt;

pub use promql_parser::parser::Expr;

pub use functions::SUPPORTED_FUNCTIONS;
pub use syntax::{MAX_DEPTH, MAX_NESTING_TOKENS, MAX_QUERY_BYTES};

use crate::metrics::{Labels, Sample, Series, SeriesSource};

/// How far back an instant vector selector looks for a sample: it returns
/// a series' newest sample in `(t - LOOKBACK_MS, t]`.
pub const LOOKBACK_MS: i64 = 300_000;

/// Most steps in one range query (as Prometheus: 11,000 points per series).
pub const MAX_STEPS: i64 = 11_000;

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorSample {
    pub labels: Labels,
    pub value: f64,
}

/// What an expression evaluates to at one instant.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    /// An instant vector: at most one sample per series.
    Vector(Vec<VectorSample>),
    /// A range vector (only a bare range selector at the top of an instant
    /// query evaluates to one).
    Matrix(Vec<Series>),
}

impl Value {
    /// The type's name as Prometheus writes it in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "instant vector",
            Value::Matrix(_) => "range vector",
        }
    }

    /// The HTTP API's `resultType`.
    pub fn result_type(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// What went wrong with a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not valid PromQL.
    Parse,
    /// Valid PromQL this evaluator does not implement.
    Unsupported,
    /// Too long, too deeply nested, or too many steps.
    Limit,
    /// Invalid query parameters, or an error while evaluating (e.g.
    /// many-to-many matching).
    Eval,
}

/// A place in the query text: 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromqlError {
    kind: ErrorKind,
    message: String,
    position: Option<Position>,
}

impl PromqlError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> PromqlError {
        PromqlError { kind, message: message.into(), position: None }
    }

    pub(crate) fn parse(message: String, position: Option<Position>) -> PromqlError {
        PromqlError { kind: ErrorKind::Parse, message, position }
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> PromqlError {
        PromqlError::new(ErrorKind::Unsupported, message)
    }

    pub(crate) fn eval(message: impl Into<String>) -> PromqlError {
        PromqlError::new(ErrorKind::Eval, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the position.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn position(&self) -> Option<Position> {
        self.position
    }
}

impl fmt::Display for PromqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, self.position) {
            (ErrorKind::Parse, Some(p)) => write!(f, "parse error at {p}: {}", self.message),
            (ErrorKind::Parse, None) => write!(f, "parse error: {}", self.message),
            (_, Some(p)) => write!(f, "{} (at {p})", self.message),
            (_, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PromqlError {}

/// Parses `query` and checks that it uses only supported constructs.
pub fn parse(query: &str) -> Result<Expr, PromqlError> {
    let expr = syntax::parse_expr(query)?;
    validate::check(&expr)?;
    Ok(expr)
}

/// Evaluates `query` at `at_ms` (unix milliseconds).
pub fn instant(src: &dyn SeriesSource, query: &str, at_ms: i64) -> Result<Value, PromqlError> {
    let expr = parse(query)?;
    let mut ev = eval::Evaluator::new(src, at_ms, at_ms);
    let value = ev.eval(&expr, at_ms)?;
    if let Value::Vector(v) = &value {
        eval::check_unique_labels(v)?;
    }
    Ok(value)
}

/// Evaluates `query` at `start_ms`, `start_ms + step_ms`, ... up to
/// `end_ms`: one series per label set with a sample at each step where it
/// had a value (a scalar result is a series with empty labels), sorted by
/// labels.
pub fn range(src: &dyn SeriesSource, query: &str, start_ms: i64, end_ms: i64, step_ms: i64) -> Result<Vec<Series>, PromqlError> {
    if step_ms <= 0 {
        return Err(PromqlError::eval(format!("step must be positive, got {step_ms} ms")));
    }
    if end_ms < start_ms {
        return Err(PromqlError::eval("end must not be before start"));
    }
    let steps = (end_ms as i128 - start_ms as i128) / step_ms as i128 + 1;
    if steps > MAX_STEPS as i128 {
        return Err(PromqlError::new(
            ErrorKind::Limit,
            format!("exceeded maximum resolution of {MAX_STEPS} points per series ({steps} steps); increase the step"),
        ));
    }
    let expr = parse(query)?;
    let ty = expr.value_type();
    if !matches!(ty, promql_parser::parser::value::ValueType::Scalar | promql_parser::parser::value::ValueType::Vector) {
        return Err(PromqlError::eval(format!("a range query needs a scalar or instant vector expression, got {ty}")));
    }
    let mut ev = eval::Evaluator::new(src, start_ms, end_ms);
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<Series> = Vec::new();
    let mut add = |labels: Labels, ts_ms: i64, value: f64| -> Result<(), PromqlError> {
        let i = *index.entry(labels.clone()).or_insert_with(|| {
            out.push(Series { labels, samples: Vec::new() });
            out.len() - 1
        });
        let samples = &mut out[i].samples;
        if samples.last().is_some_and(|s| s.ts_ms == ts_ms) {
            return Err(PromqlError::eval("vector cannot contain metrics with the same labelset"));
        }
        samples.push(Sample { ts_ms, value });
        Ok(())
    };
    for n in 0..steps as i64 {
        let t = start_ms + n * step_ms;
        match ev.eval(&expr, t)? {
            Value::Scalar(v) => add(Labels::default(), t, v)?,
            Value::Vector(v) => {
                for s in v {
                    add(s.labels, t, s.value)?;
                }
            }
            other => {
                return Err(PromqlError::eval(format!(
                    "a range query needs a scalar or instant vector expression, got {}",
                    other.type_name()
                )))
            }
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

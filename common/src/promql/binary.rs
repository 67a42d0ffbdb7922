//! Binary operators: arithmetic, comparisons (filtering or `bool`), and the
//! set operators, between scalars and instant vectors, with one-to-one
//! vector matching on all labels but the name, `on(...)` or `ignoring(...)`.

use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::{
    TokenId, T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD, T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::LabelModifier;

use super::{PromqlError, VectorSample};
use crate::metrics::{Labels, METRIC_NAME};

pub(super) fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

pub(super) fn is_set(op: TokenId) -> bool {
    matches!(op, T_LAND | T_LOR | T_LUNLESS)
}

/// Arithmetic drops the metric name; comparisons keep it (unless `bool`).
fn drops_name(op: TokenId) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW | T_ATAN2)
}

/// One operation on two values: the result, and whether a comparison holds
/// (always true for arithmetic).
pub(super) fn apply(op: TokenId, l: f64, r: f64) -> Result<(f64, bool), PromqlError> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        // IEEE remainder with the dividend's sign, as Go's math.Mod.
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => return Err(PromqlError::unsupported("unsupported binary operator")),
    })
}

/// scalar op scalar.
pub(super) fn scalar_scalar(op: TokenId, l: f64, r: f64, return_bool: bool) -> Result<f64, PromqlError> {
    if is_set(op) {
        return Err(PromqlError::eval("set operators are not allowed between scalars"));
    }
    let (v, keep) = apply(op, l, r)?;
    if is_comparison(op) {
        if !return_bool {
            return Err(PromqlError::eval("comparisons between scalars must use the bool modifier"));
        }
        return Ok(if keep { 1.0 } else { 0.0 });
    }
    Ok(v)
}

/// vector op scalar, or scalar op vector when `scalar_on_left`.
pub(super) fn vector_scalar(
    op: TokenId,
    v: Vec<VectorSample>,
    s: f64,
    scalar_on_left: bool,
    return_bool: bool,
) -> Result<Vec<VectorSample>, PromqlError> {
    if is_set(op) {
        return Err(PromqlError::eval("set operators are not allowed between a vector and a scalar"));
    }
    let mut out = Vec::with_capacity(v.len());
    for sample in v {
        let (l, r) = if scalar_on_left { (s, sample.value) } else { (sample.value, s) };
        let (mut value, mut keep) = apply(op, l, r)?;
        if is_comparison(op) {
            // A filter keeps the vector's value, whichever side it is on.
            value = sample.value;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            let labels = if drops_name(op) || return_bool { sample.labels.without_name() } else { sample.labels };
            out.push(VectorSample { labels, value });
        }
    }
    Ok(out)
}

/// How two vectors' samples are paired: the label set they match on.
struct Matching<'a> {
    on: bool,
    names: &'a [String],
}

impl Matching<'_> {
    fn from(m: Option<&LabelModifier>) -> Matching<'_> {
        match m {
            Some(LabelModifier::Include(l)) => Matching { on: true, names: &l.labels },
            Some(LabelModifier::Exclude(l)) => Matching { on: false, names: &l.labels },
            None => Matching { on: false, names: &[] },
        }
    }

    fn signature(&self, labels: &Labels) -> Labels {
        if self.on {
            labels.filtered(self.names, true)
        } else {
            let mut names = self.names.to_vec();
            names.push(METRIC_NAME.to_string());
            labels.filtered(&names, false)
        }
    }
}

/// vector op vector, one-to-one (arithmetic and comparisons).
pub(super) fn vector_vector(
    op: TokenId,
    lhs: Vec<VectorSample>,
    rhs: Vec<VectorSample>,
    matching: Option<&LabelModifier>,
    return_bool: bool,
) -> Result<Vec<VectorSample>, PromqlError> {
    if is_set(op) {
        return Ok(set_operation(op, lhs, rhs, matching));
    }
    if lhs.is_empty() || rhs.is_empty() {
        // Nothing can match (and no duplicate can matter).
        return Ok(Vec::new());
    }
    let m = Matching::from(matching);
    let mut right: HashMap<Labels, usize> = HashMap::with_capacity(rhs.len());
    for (i, s) in rhs.iter().enumerate() {
        let sig = m.signature(&s.labels);
        if let Some(&j) = right.get(&sig) {
            return Err(PromqlError::eval(format!(
                "found duplicate series for the match group {sig} on the right-hand side of the operation: [{}, {}]; many-to-many matching not allowed: matching labels must be unique on one side",
                rhs[j].labels, s.labels
            )));
        }
        right.insert(sig, i);
    }
    let mut matched: HashSet<Labels> = HashSet::new();
    let mut out = Vec::new();
    for l in lhs {
        let sig = m.signature(&l.labels);
        let Some(&j) = right.get(&sig) else { continue };
        let (mut value, keep) = apply(op, l.value, rhs[j].value)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut labels = if drops_name(op) || return_bool { l.labels.without_name() } else { l.labels };
        labels = if m.on { labels.filtered(m.names, true) } else { labels.filtered(m.names, false) };
        if !matched.insert(sig) {
            return Err(PromqlError::eval(format!(
                "multiple matches for labels {}: many-to-one matching must be explicit (group_left/group_right are not supported)",
                labels
            )));
        }
        out.push(VectorSample { labels, value });
    }
    Ok(out)
}

/// `and`, `or`, `unless`: the left side's samples (and for `or` the right
/// side's unmatched ones), unchanged.
fn set_operation(op: TokenId, lhs: Vec<VectorSample>, rhs: Vec<VectorSample>, matching: Option<&LabelModifier>) -> Vec<VectorSample> {
    let m = Matching::from(matching);
    match op {
        T_LAND | T_LUNLESS => {
            let right: HashSet<Labels> = rhs.iter().map(|s| m.signature(&s.labels)).collect();
            let want = op == T_LAND;
            lhs.into_iter().filter(|s| right.contains(&m.signature(&s.labels)) == want).collect()
        }
        _ => {
            let left: HashSet<Labels> = lhs.iter().map(|s| m.signature(&s.labels)).collect();
            let mut out = lhs;
            out.extend(rhs.into_iter().filter(|s| !left.contains(&m.signature(&s.labels))));
            out
        }
    }
}

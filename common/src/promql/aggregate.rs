//! Aggregation operators over an instant vector: sum, avg, min, max, count,
//! topk, bottomk, grouped `by` or `without` labels.

use std::cmp::Ordering;
use std::collections::HashMap;

use promql_parser::parser::token::TokenId;
use promql_parser::parser::token::{T_AVG, T_BOTTOMK, T_COUNT, T_MAX, T_MIN, T_SUM, T_TOPK};
use promql_parser::parser::LabelModifier;

use super::functions::{mean, KahanSum};
use super::{PromqlError, VectorSample};
use crate::metrics::{Labels, METRIC_NAME};

/// The label set a sample's group is known by.
fn group_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::default(),
        Some(LabelModifier::Include(by)) => labels.filtered(&by.labels, true),
        Some(LabelModifier::Exclude(without)) => {
            let mut names = without.labels.clone();
            names.push(METRIC_NAME.to_string());
            labels.filtered(&names, false)
        }
    }
}

pub(super) fn aggregate(
    op: TokenId,
    param: Option<f64>,
    modifier: Option<&LabelModifier>,
    input: Vec<VectorSample>,
) -> Result<Vec<VectorSample>, PromqlError> {
    // Groups in the order they first appear.
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<VectorSample>)> = Vec::new();
    for s in input {
        let key = group_labels(&s.labels, modifier);
        let i = match index.get(&key) {
            Some(&i) => i,
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, Vec::new()));
                groups.len() - 1
            }
        };
        groups[i].1.push(s);
    }

    if op == T_TOPK || op == T_BOTTOMK {
        let name = if op == T_TOPK { "topk" } else { "bottomk" };
        let k = param.ok_or_else(|| PromqlError::eval(format!("{name} needs a parameter")))?;
        if k.is_nan() {
            return Err(PromqlError::eval(format!("{name}: parameter value is NaN")));
        }
        // As Go's int64(): toward zero, saturating.
        let k = if k >= 1.0 { k.min(usize::MAX as f64) as usize } else { 0 };
        let mut out = Vec::new();
        for (_, mut members) in groups {
            // Larger first for topk, smaller first for bottomk; NaN last in
            // both; ties keep input order (the sort is stable).
            members.sort_by(|a, b| rank(a.value, b.value, op == T_TOPK));
            members.truncate(k);
            out.extend(members);
        }
        return Ok(out);
    }

    let mut out = Vec::with_capacity(groups.len());
    for (labels, members) in groups {
        let values = members.iter().map(|s| s.value);
        let value = match op {
            T_SUM => KahanSum::of(values),
            T_AVG => mean(values),
            T_COUNT => members.len() as f64,
            T_MIN => values.fold(f64::NAN, |acc, v| if acc.is_nan() || v < acc { v } else { acc }),
            T_MAX => values.fold(f64::NAN, |acc, v| if acc.is_nan() || v > acc { v } else { acc }),
            _ => return Err(PromqlError::unsupported("unsupported aggregation")),
        };
        out.push(VectorSample { labels, value });
    }
    Ok(out)
}

fn rank(a: f64, b: f64, descending: bool) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => {
            let o = a.partial_cmp(&b).unwrap_or(Ordering::Equal);
            if descending {
                o.reverse()
            } else {
                o
            }
        }
    }
}

/// `sort` / `sort_desc`: by value, NaN last.
pub(super) fn sort(mut v: Vec<VectorSample>, descending: bool) -> Vec<VectorSample> {
    v.sort_by(|a, b| rank(a.value, b.value, descending));
    v
}

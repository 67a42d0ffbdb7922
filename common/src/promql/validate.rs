//! Refuses, before evaluation, every construct the evaluator does not
//! implement, with a message naming it; and trees too deep to evaluate.

use promql_parser::parser::token::{T_AVG, T_BOTTOMK, T_COUNT, T_MAX, T_MIN, T_SUM, T_TOPK};
use promql_parser::parser::{Expr, VectorMatchCardinality, VectorSelector};

use super::functions::{is_range_function, SUPPORTED_FUNCTIONS};
use super::syntax::MAX_DEPTH;
use super::{ErrorKind, PromqlError};

pub(super) fn check(expr: &Expr) -> Result<(), PromqlError> {
    if depth(expr, MAX_DEPTH + 1) > MAX_DEPTH {
        return Err(PromqlError::new(ErrorKind::Limit, format!("query is nested too deeply (at most {MAX_DEPTH} levels)")));
    }
    walk(expr)
}

/// The tree's depth, counting no further than `limit`.
fn depth(expr: &Expr, limit: usize) -> usize {
    if limit == 0 {
        return 0;
    }
    let below = |e: &Expr| depth(e, limit - 1);
    1 + match expr {
        Expr::Aggregate(a) => below(&a.expr).max(a.param.as_deref().map(below).unwrap_or(0)),
        Expr::Unary(u) => below(&u.expr),
        Expr::Binary(b) => below(&b.lhs).max(below(&b.rhs)),
        Expr::Paren(p) => below(&p.expr),
        Expr::Subquery(s) => below(&s.expr),
        Expr::Call(c) => c.args.args.iter().map(|a| below(a)).max().unwrap_or(0),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::VectorSelector(_) | Expr::MatrixSelector(_) | Expr::Extension(_) => 0,
    }
}

fn walk(expr: &Expr) -> Result<(), PromqlError> {
    match expr {
        Expr::Aggregate(a) => {
            let id = a.op.id();
            if ![T_SUM, T_AVG, T_MIN, T_MAX, T_COUNT, T_TOPK, T_BOTTOMK].contains(&id) {
                return Err(PromqlError::unsupported(format!("unsupported aggregation '{}'", a.op)));
            }
            if let Some(p) = &a.param {
                walk(p)?;
            }
            walk(&a.expr)
        }
        Expr::Unary(u) => walk(&u.expr),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                match m.card {
                    VectorMatchCardinality::ManyToOne(_) => return Err(PromqlError::unsupported("group_left is not supported")),
                    VectorMatchCardinality::OneToMany(_) => return Err(PromqlError::unsupported("group_right is not supported")),
                    _ => {}
                }
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err(PromqlError::unsupported("fill, fill_left and fill_right are not supported"));
                }
            }
            walk(&b.lhs)?;
            walk(&b.rhs)
        }
        Expr::Paren(p) => walk(&p.expr),
        Expr::Subquery(_) => Err(PromqlError::unsupported("subqueries are not supported")),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(vs) => selector(vs),
        Expr::MatrixSelector(ms) => selector(&ms.vs),
        Expr::Call(c) => {
            let name = c.func.name;
            if !SUPPORTED_FUNCTIONS.contains(&name) {
                return Err(PromqlError::unsupported(format!("unsupported function '{name}'")));
            }
            for a in &c.args.args {
                walk(a)?;
            }
            if is_range_function(name) {
                let arg = c.args.args.first().map(|a| unwrap_parens(a));
                if !matches!(arg, Some(Expr::MatrixSelector(_))) {
                    return Err(PromqlError::unsupported(format!(
                        "function '{name}' needs a range vector selector such as foo[5m] as its argument"
                    )));
                }
            }
            Ok(())
        }
        Expr::Extension(_) => Err(PromqlError::unsupported("extension expressions are not supported")),
    }
}

fn selector(vs: &VectorSelector) -> Result<(), PromqlError> {
    if vs.at.is_some() {
        return Err(PromqlError::unsupported("the @ modifier is not supported"));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(PromqlError::unsupported("'or' between label matchers is not supported"));
    }
    Ok(())
}

pub(super) fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn refused(q: &str) -> String {
        let e = parse(q).expect_err(q);
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{q}: {e}");
        e.to_string()
    }

    #[test]
    fn unsupported_constructs_are_named() {
        assert!(refused("a * on(x) group_left(y) b").contains("group_left is not supported"));
        assert!(refused("a * on(x) group_right b").contains("group_right is not supported"));
        assert!(refused("max_over_time(rate(a[5m])[1h:1m])").contains("subqueries are not supported"));
        assert!(refused("a @ 100").contains("@ modifier"));
        assert!(refused("quantile(0.9, a)").contains("unsupported aggregation 'quantile'"));
        assert!(refused("label_replace(a, \"x\", \"$1\", \"y\", \"(.*)\")").contains("unsupported function 'label_replace'"));
        assert!(refused("predict_linear(a[5m], 60)").contains("unsupported function 'predict_linear'"));
        assert!(refused("a{x=\"1\" or y=\"2\"}").contains("'or' between label matchers"));
    }

    #[test]
    fn supported_constructs_pass() {
        for q in [
            "sum by (job) (rate(http_requests_total{code=~\"5..\"}[5m] offset 1m))",
            "avg without (instance) (a) > bool 0.5",
            "topk(2, a) or bottomk(1, b) unless c and d",
            "-a % on(x) b ^ ignoring(y) c",
            "clamp_min(round(a), 0) + scalar(vector(time()))",
            "rate((a[5m]))",
        ] {
            parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}1{}", "(".repeat(MAX_DEPTH + 5), ")".repeat(MAX_DEPTH + 5));
        let e = parse(&deep).expect_err("too deep");
        assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
        let ok = format!("{}1{}", "(".repeat(50), ")".repeat(50));
        parse(&ok).unwrap();
    }
}

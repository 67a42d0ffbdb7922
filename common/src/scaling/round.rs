//! One round of one scaling policy, as MiCADO's policy keeper runs it: the
//! same for the master's policy keeper and an agent deciding on its own
//! while cut off. Only where the metrics come from and where the decision
//! goes differ between the two.
//!
//! A round: the rule's inputs (constants, then the queries and alerts the
//! rule names, read from a [`SeriesSource`], then the `m_*` variables) →
//! the rule, in the sandbox → its outputs clamped to the policy's bounds.
//! A query without a result is `None` (with a warning naming it), a
//! `[EXPR, LABEL]` query a list of label values, an alert `True` once its
//! expression has had results for its `for` duration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{RuleLimits, RuleOutcome, RuleRequest};
use crate::adt::plan::{Plan, Policy, Query, TargetKind};
use crate::metrics::SeriesSource;
use crate::promql::{self, Value as PromValue};

/// A node the policy's targets run on, as rules see it (`m_nodes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub id: String,
    pub addr: String,
}

/// What the rule is told about its targets now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Situation {
    pub now_ms: i64,
    /// Replicas of a container target (within bounds).
    pub container_count: u32,
    /// Nodes of a node-set target, or the nodes the container target runs on.
    pub node_count: u32,
    pub nodes: Vec<NodeRef>,
    /// Seconds since `m_node_count` last changed (as MiCADO: 0 when unknown).
    pub time_since_node_count_changed: f64,
    /// One value per app, shared by its rules (None at first).
    pub userdata: Value,
}

/// When each alert of a policy started firing (unix ms), kept between rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertClock {
    pub firing_since: BTreeMap<String, i64>,
}

/// The rule's request, and what went into it.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub request: RuleRequest,
    /// Query and alert values the rule reads, for the event record.
    pub readings: Map<String, Value>,
    /// Queries that failed or had no result, naming each.
    pub warnings: Vec<String>,
}

/// What the round decided, after clamping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// For a container target: replicas before and after.
    pub containers: Option<(u32, u32)>,
    /// For a node-set target: nodes before and after.
    pub nodes: Option<(u32, u32)>,
    pub nodes_todrop: Vec<String>,
    pub userdata: Value,
    pub printed: Vec<String>,
    /// Why the rule's answer was changed (out of bounds, not a number).
    pub adjusted: Option<String>,
}

impl Decision {
    pub fn changes(&self) -> bool {
        self.containers.is_some_and(|(a, b)| a != b) || self.nodes.is_some_and(|(a, b)| a != b) || !self.nodes_todrop.is_empty()
    }
}

/// Time between two rounds: the policy's `interval`, else `default`.
pub fn period(policy: &Policy, default: std::time::Duration) -> std::time::Duration {
    policy.interval_seconds.map(|s| std::time::Duration::from_secs(s.max(1))).unwrap_or(default)
}

/// The least time between two changes of one target: the policy's
/// `cooldown` property (fogmesh), else two periods.
pub fn cooldown(policy: &Policy, default_period: std::time::Duration) -> std::time::Duration {
    let from_adt = policy.properties.get("cooldown").and_then(|v| match v {
        Value::String(s) => crate::adt::quantity::parse_duration_seconds(s),
        Value::Number(n) => n.as_u64(),
        _ => None,
    });
    from_adt.map(std::time::Duration::from_secs).unwrap_or(period(policy, default_period) * 2)
}

/// The policy's bounds for its targets.
pub fn bounds(policy: &Policy, plan: &Plan) -> (u32, Option<u32>) {
    let from_target = policy.targets.first().and_then(|t| match policy.target_kind {
        TargetKind::Workloads => plan.workload(t).map(|w| (w.min_instances, w.max_instances)),
        TargetKind::Nodes => plan.node(t).map(|n| (n.min_instances, n.max_instances)),
        TargetKind::None => None,
    });
    let (min, max) = from_target.unwrap_or((0, None));
    (policy.min_instances.unwrap_or(min), policy.max_instances.or(max))
}

/// Builds the rule's request: evaluates the queries and alerts the rule
/// names against `source` at `situation.now_ms`, and advances the alert clock.
pub fn prepare(policy: &Policy, plan: &Plan, source: &dyn SeriesSource, situation: &Situation, clock: &mut AlertClock, limits: RuleLimits) -> Option<Prepared> {
    let rule = policy.scaling_rule.as_deref()?;
    let mut inputs = constants(policy, plan);
    let mut readings = Map::new();
    let mut warnings = Vec::new();
    for (name, query) in visible_queries(policy, plan) {
        if !names(rule, name) {
            continue;
        }
        let value = match evaluate_query(source, query, situation.now_ms) {
            Ok(v) => v,
            Err(why) => {
                warnings.push(format!("query {name} ({}) {why}: the rule reads None", query.expr()));
                Value::Null
            }
        };
        readings.insert(name.clone(), value.clone());
        inputs.insert(name.clone(), value);
    }
    for alert in &policy.alerts {
        if !names(rule, &alert.name) {
            continue;
        }
        let active = match promql::instant(source, &alert.expr, situation.now_ms) {
            Ok(PromValue::Vector(v)) => !v.is_empty(),
            Ok(PromValue::Scalar(s)) => s != 0.0 && !s.is_nan(),
            Ok(_) => false,
            Err(e) => {
                warnings.push(format!("alert {} ({}) cannot be evaluated: {e}", alert.name, alert.expr));
                false
            }
        };
        let firing = if active {
            let since = *clock.firing_since.entry(alert.name.clone()).or_insert(situation.now_ms);
            situation.now_ms - since >= alert.for_seconds as i64 * 1000
        } else {
            clock.firing_since.remove(&alert.name);
            false
        };
        readings.insert(alert.name.clone(), json!(firing));
        inputs.insert(alert.name.clone(), json!(firing));
    }
    inputs.extend(m_inputs(situation));
    let request = RuleRequest { source: rule.to_string(), inputs, now_unix: situation.now_ms as f64 / 1000.0, limits };
    Some(Prepared { request, readings, warnings })
}

/// A request for a dry run (`fogmesh policy test`): constants from the ADT,
/// the queries the rule names as None and its alerts as False unless
/// `overrides` sets them, the `m_*` inputs from `situation`, then every
/// override (any input by name).
pub fn dry_run_request(policy: &Policy, plan: &Plan, situation: &Situation, overrides: Map<String, Value>, limits: RuleLimits) -> Option<RuleRequest> {
    let rule = policy.scaling_rule.as_deref()?;
    let mut inputs = constants(policy, plan);
    for (name, _) in visible_queries(policy, plan) {
        if names(rule, name) {
            inputs.insert(name.clone(), Value::Null);
        }
    }
    for alert in &policy.alerts {
        inputs.insert(alert.name.clone(), json!(false));
    }
    inputs.extend(m_inputs(situation));
    inputs.extend(overrides);
    Some(RuleRequest { source: rule.to_string(), inputs, now_unix: situation.now_ms as f64 / 1000.0, limits })
}

/// ADT-wide constants, the policy's own winning.
fn constants(policy: &Policy, plan: &Plan) -> Map<String, Value> {
    plan.constants.iter().chain(policy.constants.iter()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The policy's own queries first, then those other policies declare.
fn visible_queries<'a>(policy: &'a Policy, plan: &'a Plan) -> Vec<(&'a String, &'a Query)> {
    let mut queries: Vec<(&String, &Query)> = policy.queries.iter().collect();
    for (k, q) in &plan.queries {
        if !policy.queries.contains_key(k) {
            queries.push((k, q));
        }
    }
    queries
}

/// The `m_*` variables rules read.
fn m_inputs(situation: &Situation) -> Map<String, Value> {
    let nodes: Vec<Value> = situation.nodes.iter().map(|n| json!({"ID": n.id, "Addr": n.addr})).collect();
    let mut m = Map::new();
    m.insert("m_nodes".into(), Value::Array(nodes));
    m.insert("m_node_count".into(), json!(situation.node_count));
    m.insert("m_container_count".into(), json!(situation.container_count));
    m.insert("m_time_since_node_count_changed".into(), json!(situation.time_since_node_count_changed));
    m.insert("m_nodes_todrop".into(), json!([]));
    m.insert("m_userdata".into(), situation.userdata.clone());
    m
}

/// What a rule starts from when nothing ran yet: its target at its minimum.
pub fn initial_situation(policy: &Policy, plan: &Plan, now_ms: i64) -> Situation {
    let (min, _) = bounds(policy, plan);
    let target = policy.targets.first().map(String::as_str).unwrap_or("");
    let container_count = match policy.target_kind {
        TargetKind::Workloads => plan.workload(target).map(|w| w.replicas).unwrap_or(min),
        _ => 0,
    };
    Situation {
        now_ms,
        container_count,
        node_count: if policy.target_kind == TargetKind::Nodes { min } else { 0 },
        nodes: Vec::new(),
        time_since_node_count_changed: 0.0,
        userdata: Value::Null,
    }
}

/// Whether `rule` mentions `name` as a whole word.
fn names(rule: &str, name: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    rule.match_indices(name).any(|(i, _)| {
        let before = rule[..i].chars().next_back();
        let after = rule[i + name.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// A query's value for a rule: the first result's value; for `[EXPR,
/// LABEL]` the list of that label's values.
fn evaluate_query(source: &dyn SeriesSource, query: &Query, now_ms: i64) -> Result<Value, String> {
    let value = promql::instant(source, query.expr(), now_ms).map_err(|e| format!("failed: {e}"))?;
    match (query, value) {
        (Query::LabelValues(_, label), PromValue::Vector(v)) => {
            Ok(Value::Array(v.iter().filter_map(|s| s.labels.get(label)).map(|l| json!(l)).collect()))
        }
        (Query::LabelValues(..), _) => Err("is not a vector".into()),
        (Query::Expr(_), PromValue::Scalar(s)) => Ok(number(s)),
        (Query::Expr(_), PromValue::Vector(v)) => match v.first() {
            Some(s) => Ok(number(s.value)),
            None => Err("has no result".into()),
        },
        (Query::Expr(_), _) => Err("is neither a number nor a vector".into()),
    }
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

/// The rule's outputs clamped to the policy's bounds.
pub fn decide(policy: &Policy, plan: &Plan, situation: &Situation, outcome: &RuleOutcome) -> Decision {
    let (min, max) = bounds(policy, plan);
    let mut adjusted = Vec::new();
    let mut clamp = |name: &str, asked: &Value, current: u32| -> u32 {
        let wanted = match asked {
            Value::Number(n) => n.as_f64().map(|f| f.trunc().max(0.0).min(u32::MAX as f64) as u32),
            Value::Null => None,
            other => {
                adjusted.push(format!("{name} = {other} is not a number: kept {current}"));
                return current;
            }
        };
        let Some(wanted) = wanted else { return current };
        let clamped = wanted.max(min).min(max.unwrap_or(u32::MAX));
        if clamped != wanted {
            adjusted.push(format!("{name} = {wanted} is outside {min}..{}: {clamped}", max.map_or("unbounded".to_string(), |m| m.to_string())));
        }
        clamped
    };
    let get = |k: &str| outcome.outputs.get(k).cloned().unwrap_or(Value::Null);
    let mut decision = Decision {
        containers: None,
        nodes: None,
        nodes_todrop: Vec::new(),
        userdata: get("m_userdata"),
        printed: outcome.printed.clone(),
        adjusted: None,
    };
    match policy.target_kind {
        TargetKind::Workloads => {
            let to = clamp("m_container_count", &get("m_container_count"), situation.container_count);
            decision.containers = Some((situation.container_count, to));
        }
        TargetKind::Nodes => {
            let todrop: Vec<String> = match get("m_nodes_todrop") {
                Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            };
            // As MiCADO: nodes to drop replace a count change in this round.
            let to = if todrop.is_empty() {
                clamp("m_node_count", &get("m_node_count"), situation.node_count)
            } else {
                let wanted = situation.node_count.saturating_sub(todrop.len() as u32);
                if wanted < min {
                    adjusted.push(format!("dropping {} node(s) would go below {min}: kept {min}", todrop.len()));
                }
                wanted.max(min)
            };
            decision.nodes = Some((situation.node_count, to));
            decision.nodes_todrop = todrop;
        }
        TargetKind::None => {}
    }
    if !adjusted.is_empty() {
        decision.adjusted = Some(adjusted.join("; "));
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adt::{compile, CompileOptions};
    use crate::metrics::{Labels, Matcher, Sample, Series};

    /// Fixed series: `load{node}` and a counter.
    struct Fixed(Vec<Series>);

    impl SeriesSource for Fixed {
        fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Vec<Series> {
            self.0
                .iter()
                .filter(|s| matchers.iter().all(|m| m.matches(&s.labels)))
                .map(|s| Series { labels: s.labels.clone(), samples: s.samples.iter().filter(|p| p.ts_ms >= start && p.ts_ms <= end).copied().collect() })
                .filter(|s| !s.samples.is_empty())
                .collect()
        }
    }

    const ADT: &str = r#"
tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    web:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      properties: {image: nginx}
  policies:
    - scale:
        type: tosca.policies.Scaling.MiCADO
        targets: [web]
        properties:
          constants: {MAXC: 4}
          queries:
            LOAD: 'max(load)'
            NODES: ['load > 0.5', 'node']
            GONE: 'absent_metric'
          alerts:
            - alert: hot
              expr: 'max(load) > 0.8'
              for: 20s
          min_instances: 1
          max_instances: '{{MAXC}}'
          scaling_rule: |
            m_container_count = 10 if hot else 2
            x = [LOAD, NODES, GONE]
"#;

    fn setup() -> (Plan, Fixed) {
        let plan = compile(ADT, &CompileOptions::default()).unwrap();
        let series = |node: &str, v: f64| Series { labels: Labels::metric("load", &[("node", node)]), samples: (0..100).map(|i| Sample { ts_ms: i * 10_000, value: v }).collect() };
        (plan, Fixed(vec![series("a", 0.9), series("b", 0.2)]))
    }

    fn situation(now_ms: i64) -> Situation {
        Situation { now_ms, container_count: 1, node_count: 1, nodes: vec![], time_since_node_count_changed: 0.0, userdata: Value::Null }
    }

    #[test]
    fn queries_lists_missing_results_and_alerts_with_their_for_duration() {
        let (plan, source) = setup();
        let policy = &plan.policies[0];
        let mut clock = AlertClock::default();
        let p = prepare(policy, &plan, &source, &situation(500_000), &mut clock, RuleLimits::default()).unwrap();
        assert_eq!(p.request.inputs["LOAD"], json!(0.9));
        assert_eq!(p.request.inputs["NODES"], json!(["a"]), "[EXPR, LABEL] is the list of label values");
        assert_eq!(p.request.inputs["GONE"], Value::Null);
        assert!(p.warnings.iter().any(|w| w.contains("GONE") && w.contains("no result")), "{:?}", p.warnings);
        assert_eq!(p.request.inputs["MAXC"], json!(4));
        assert_eq!(p.request.inputs["hot"], json!(false), "active, but not for 20 s yet");
        let p = prepare(policy, &plan, &source, &situation(515_000), &mut clock, RuleLimits::default()).unwrap();
        assert_eq!(p.request.inputs["hot"], json!(false));
        let p = prepare(policy, &plan, &source, &situation(521_000), &mut clock, RuleLimits::default()).unwrap();
        assert_eq!(p.request.inputs["hot"], json!(true), "firing after its for duration");
    }

    #[test]
    fn outputs_are_clamped_to_the_policy_bounds_and_say_why() {
        let (plan, _) = setup();
        let policy = &plan.policies[0];
        let outcome = |n: Value| RuleOutcome { outputs: [("m_container_count".to_string(), n)].into_iter().collect(), printed: vec![] };
        let d = decide(policy, &plan, &situation(0), &outcome(json!(10)));
        assert_eq!(d.containers, Some((1, 4)));
        assert!(d.adjusted.unwrap().contains("outside 1..4"));
        let d = decide(policy, &plan, &situation(0), &outcome(json!(2.7)));
        assert_eq!(d.containers, Some((1, 2)), "counts are whole numbers, as int() makes them");
        let d = decide(policy, &plan, &situation(0), &outcome(json!("lots")));
        assert_eq!(d.containers, Some((1, 1)));
        assert!(d.adjusted.unwrap().contains("not a number"));
        assert!(!decide(policy, &plan, &situation(0), &outcome(json!(1))).changes());
    }

    #[test]
    fn names_match_whole_words_only() {
        assert!(names("if LOAD > 3: pass", "LOAD"));
        assert!(!names("if LOADAVG > 3: pass", "LOAD"));
        assert!(!names("x = MY_LOAD", "LOAD"));
        assert!(names("print(LOAD)", "LOAD"));
    }
}

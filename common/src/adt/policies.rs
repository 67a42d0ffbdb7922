//! Policies -> plan policies: type defaults inherited, `{{CONST}}`
//! substituted, targets resolved to workloads or node sets.
//!
//! MiCADO's semantics, which real ADTs rely on:
//! - `policies` is a list of one-key maps and keys repeat (several
//!   `- scalability:`); a policy is its key and its position.
//! - The `constants` and `queries` of all scaling policies form one ADT-wide
//!   set, later policies winning. A policy renders `{{NAME}}` from its own
//!   constants first, then from that set; a name defined nowhere renders
//!   empty (a warning here, silence in MiCADO).

use indexmap::IndexMap;

use super::diagnostics::{did_you_mean, Diagnostics};
use super::inputs::{Inputs, Site};
use super::plan::{Alert, Policy, PolicyKind, Query, TargetKind};
use super::props::{describe, Reader};
use super::quantity::parse_duration_seconds;
use super::templating::{constant_text, render};
use super::types::{NodeCategory, TypeLibrary, TypeSpace, MONITORING_POLICY, SCALING_POLICY};
use super::yaml::{Key, Node, Pos, Value};

/// What each node template became: its category and its instance names
/// (one, or one per `instance_count` copy).
pub type Targets = IndexMap<String, (NodeCategory, Vec<String>)>;

/// Properties read into dedicated plan fields; the rest are kept as given.
const KNOWN_PROPERTIES: &[&str] = &["sources", "constants", "queries", "alerts", "scaling_rule", "min_instances", "max_instances", "interval"];

/// Keys a policy definition may have (TOSCA).
const POLICY_KEYS: &[&str] = &["type", "description", "metadata", "properties", "targets", "triggers"];

/// A policy entry read far enough to know its kind and properties.
struct Entry<'a> {
    key: &'a Key,
    index: u32,
    subject: String,
    def: &'a Node,
    tosca_type: String,
    kind: PolicyKind,
    /// Properties over the type's defaults, inputs resolved.
    props: Node,
}

/// The policies section of an ADT. `rejected` names templates already
/// reported as broken: targets naming them are not reported again.
pub struct PolicyInput<'a> {
    pub lib: &'a TypeLibrary,
    pub targets: &'a Targets,
    pub rejected: &'a [String],
    pub inputs: &'a Inputs,
}

/// The policies, and the ADT-wide constants and queries.
pub struct Compiled {
    pub policies: Vec<Policy>,
    pub constants: IndexMap<String, serde_json::Value>,
    pub queries: IndexMap<String, Query>,
}

pub fn compile_policies(section: &Node, input: &PolicyInput, diags: &mut Diagnostics) -> Compiled {
    let items: &[Node] = match &section.value {
        Value::Seq(items) => items,
        Value::Null => &[],
        _ => {
            diags.push(section.pos, "document", format!("policies must be a list of {{name: definition}}, found {}", section.kind()));
            &[]
        }
    };
    let keys: Vec<&str> = items.iter().filter_map(|i| i.as_map()).filter_map(|m| m.first()).map(|(k, _)| k.name.as_str()).collect();
    let mut entries = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some([(key, def)]) = item.as_map() else {
            diags.push(item.pos, "document", "each policies entry must be a mapping with one key, the policy name");
            continue;
        };
        let index = i as u32 + 1;
        // Name the position only when the key alone does not say which policy.
        let subject = if keys.iter().filter(|k| **k == key.name).count() > 1 {
            format!("policy '{}' (#{index})", key.name)
        } else {
            format!("policy '{}'", key.name)
        };
        if let Some(e) = read_entry(key, index, subject, def, input, diags) {
            entries.push(e);
        }
    }

    // The ADT-wide set: constants first (queries may use them), later policies winning.
    let mut constants: IndexMap<String, serde_json::Value> = IndexMap::new();
    for e in entries.iter().filter(|e| e.kind == PolicyKind::Scaling) {
        let mut r = Reader { subject: e.subject.clone(), diags };
        constants.extend(read_constants(&e.props, &mut r));
    }
    let mut queries: IndexMap<String, Query> = IndexMap::new();
    for e in entries.iter().filter(|e| e.kind == PolicyKind::Scaling) {
        let own = {
            let mut r = Reader { subject: e.subject.clone(), diags: &mut *diags };
            read_constants(&e.props, &mut r)
        };
        let mut r = Reader { subject: e.subject.clone(), diags: &mut *diags };
        let scope = Scope { own: &own, shared: &constants };
        queries.extend(read_queries(&e.props, &scope, &mut r, false));
    }

    let policies = entries.iter().map(|e| compile_policy(e, &constants, input.targets, input.rejected, diags)).collect();
    Compiled { policies, constants, queries }
}

fn read_entry<'a>(key: &'a Key, index: u32, subject: String, def: &'a Node, input: &PolicyInput, diags: &mut Diagnostics) -> Option<Entry<'a>> {
    let Some(entries) = def.as_map() else {
        diags.push(def.pos, &subject, format!("a policy must be a mapping with a type, found {}", def.kind()));
        return None;
    };
    for (k, _) in entries {
        if !POLICY_KEYS.contains(&k.name.as_str()) {
            diags.push(
                k.pos,
                &subject,
                format!("'{}' is not a policy key TOSCA knows{}", k.name, did_you_mean(&k.name, POLICY_KEYS.iter().copied())),
            );
        }
    }
    let Some(type_node) = def.get("type") else {
        diags.push(key.pos, &subject, "missing type");
        return None;
    };
    let Some(requested) = type_node.as_str() else {
        diags.push(type_node.pos, &subject, format!("type must be a type name, found {}", type_node.kind()));
        return None;
    };
    let lib = input.lib;
    let tosca_type = lib.resolve(TypeSpace::Policy, requested, type_node.pos, &subject, diags)?;
    let is = |ancestor: &str| lib.is_a(TypeSpace::Policy, &tosca_type, ancestor);
    let kind = if is(MONITORING_POLICY) || is("tosca.policies.Monitoring") {
        PolicyKind::Monitoring
    } else if is(SCALING_POLICY) || is("tosca.policies.Scaling") {
        PolicyKind::Scaling
    } else if is("tosca.policies.Security.MiCADO.Secret") {
        PolicyKind::Secret
    } else if is("tosca.policies.Security") {
        PolicyKind::Security
    } else if is("tosca.policies.Alerting") {
        PolicyKind::Alerting
    } else {
        PolicyKind::Other
    };
    let site = Site { subject: &subject, copy: None };
    let written = def.get("properties").map(|p| input.inputs.resolve(p, &site, diags)).unwrap_or_else(Node::null);
    let mut r = Reader { subject: subject.clone(), diags };
    let props = with_type_defaults(&written, lib, &tosca_type, &mut r);
    lib.check_properties(TypeSpace::Policy, &tosca_type, &props, &mut r);
    for required in lib.required_properties(TypeSpace::Policy, &tosca_type) {
        if props.get(&required).is_none_or(Node::is_null) {
            r.problem_at(key.pos, format!("missing required property '{required}' (required by {tosca_type})"));
        }
    }
    Some(Entry { key, index, subject, def, tosca_type, kind, props })
}

/// Where `{{NAME}}` looks: the policy's own constants, then the ADT-wide set.
struct Scope<'a> {
    own: &'a IndexMap<String, serde_json::Value>,
    shared: &'a IndexMap<String, serde_json::Value>,
}

impl Scope<'_> {
    /// Renders one policy string; a name defined nowhere renders empty and
    /// is warned about (once per place, unless `quiet`).
    fn render(&self, node: &Node, what: &str, r: &mut Reader, quiet: bool) -> Option<String> {
        let text = r.text(node, what)?;
        let rendered = render(&text, |name| self.own.get(name).or_else(|| self.shared.get(name)).map(constant_text));
        if !quiet {
            for m in &rendered.missing {
                let known = self.own.keys().chain(self.shared.keys()).map(String::as_str);
                r.warn(
                    node,
                    format!(
                        "{{{{{m}}}}} in {what} is not a constant of any scaling policy; it renders empty, as in MiCADO{}",
                        did_you_mean(m, known)
                    ),
                );
            }
        }
        Some(rendered.text)
    }
}

fn read_constants(props: &Node, r: &mut Reader) -> IndexMap<String, serde_json::Value> {
    let Some(c) = props.get("constants").filter(|c| !c.is_null()) else { return IndexMap::new() };
    r.mapping(c, "constants")
        .iter()
        .filter_map(|(k, v)| match &v.value {
            Value::Seq(_) | Value::Map(_) => {
                r.problem(v, format!("constant '{}' must be a number or a string, found {}", k.name, v.kind()));
                None
            }
            _ => Some((k.name.clone(), v.to_json())),
        })
        .collect()
}

/// `queries`: a string, or `[EXPR, LABEL]` for the list of a label's values.
fn read_queries(props: &Node, scope: &Scope, r: &mut Reader, quiet: bool) -> IndexMap<String, Query> {
    let Some(q) = props.get("queries").filter(|q| !q.is_null()) else { return IndexMap::new() };
    let mut out = IndexMap::new();
    for (k, v) in r.mapping(q, "queries").to_vec() {
        let what = format!("query '{}'", k.name);
        let query = match &v.value {
            Value::Seq(items) => match items.as_slice() {
                [expr, label] => {
                    let expr = scope.render(expr, &what, r, quiet);
                    let label = r.text(label, &format!("{what} label"));
                    match (expr, label) {
                        (Some(e), Some(l)) => Some(Query::LabelValues(e, l)),
                        _ => None,
                    }
                }
                _ => {
                    r.problem(&v, format!("{what} must be a PromQL string or [EXPR, LABEL], found a list of {}", items.len()));
                    None
                }
            },
            _ => scope.render(&v, &what, r, quiet).map(Query::Expr),
        };
        if let Some(query) = query {
            out.insert(k.name.clone(), query);
        }
    }
    out
}

fn compile_policy(e: &Entry, shared: &IndexMap<String, serde_json::Value>, targets: &Targets, rejected: &[String], diags: &mut Diagnostics) -> Policy {
    let mut r = Reader { subject: e.subject.clone(), diags };
    let props = &e.props;
    let constants = if e.kind == PolicyKind::Scaling { read_constants(props, &mut r) } else { IndexMap::new() };
    let scope = Scope { own: &constants, shared };
    let render = |node: &Node, what: &str, r: &mut Reader| scope.render(node, what, r, false);

    let (mut sources, mut queries, mut alerts, mut scaling_rule) = (Vec::new(), IndexMap::new(), Vec::new(), None);
    let (mut min_instances, mut max_instances, mut interval_seconds) = (None, None, None);
    if e.kind == PolicyKind::Scaling {
        sources = props.get("sources").filter(|s| !s.is_null()).map(|s| r.list(s, "sources").to_vec()).unwrap_or_default()
            .iter()
            .filter_map(|i| render(i, "a source", &mut r))
            .collect();
        // Warned about already when the ADT-wide set was built.
        queries = read_queries(props, &scope, &mut r, true);
        alerts = props
            .get("alerts")
            .filter(|a| !a.is_null())
            .map(|a| r.list(a, "alerts").to_vec())
            .unwrap_or_default()
            .iter()
            .filter_map(|al| read_alert(al, &scope, &mut r))
            .collect();
        scaling_rule = props.get("scaling_rule").filter(|s| !s.is_null()).and_then(|s| {
            let rule = render(s, "scaling_rule", &mut r)?;
            warn_python2_prints(s, &rule, &mut r);
            Some(rule)
        });
        let bound = |field: &str, r: &mut Reader| -> Option<u32> {
            let node = props.get(field).filter(|n| !n.is_null())?;
            let text = render(node, field, r)?;
            match text.trim().parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    let written = node.scalar_text().unwrap_or_default();
                    let why = if written.contains("{{") { format!(" (from \"{written}\": a constant it names is defined nowhere)") } else { String::new() };
                    r.problem(node, format!("{field} must be a whole number from 0, found \"{text}\"{why}"));
                    None
                }
            }
        };
        min_instances = bound("min_instances", &mut r);
        max_instances = bound("max_instances", &mut r);
        interval_seconds = props.get("interval").filter(|n| !n.is_null()).and_then(|n| {
            let secs = n.scalar_text().and_then(|t| parse_duration_seconds(&t)).filter(|s| *s > 0);
            if secs.is_none() {
                r.problem(n, format!("interval must be a duration like 10s or 1m, found {}", describe(n)));
            }
            secs
        });
        if let (Some(min), Some(max)) = (min_instances, max_instances) {
            if min > max {
                let at = props.get("min_instances").unwrap_or(e.def);
                r.problem(at, format!("min_instances {min} is larger than max_instances {max}"));
            }
        }
    }
    let properties = r
        .mapping(props, "properties")
        .iter()
        .filter(|(k, _)| e.kind != PolicyKind::Scaling || !KNOWN_PROPERTIES.contains(&k.name.as_str()))
        .map(|(k, v)| (k.name.clone(), v.to_json()))
        .collect();
    let (targets, target_kind) = resolve_targets(e, targets, rejected, &mut r);
    Policy {
        name: e.key.name.clone(),
        index: e.index,
        kind: e.kind,
        tosca_type: e.tosca_type.clone(),
        targets,
        target_kind,
        min_instances,
        max_instances,
        sources,
        constants,
        queries,
        alerts,
        scaling_rule,
        interval_seconds,
        properties,
    }
}

/// Python 2 `print "..."` statements: MiCADO's policy keeper fails such a
/// rule without a word; fogmesh runs them as `print(...)` and says so.
fn warn_python2_prints(node: &Node, rule: &str, r: &mut Reader) {
    // A block scalar's position is its first content line and column.
    let block = rule.contains('\n');
    for (i, line) in rule.lines().enumerate() {
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix("print") else { continue };
        let next = rest.chars().next();
        // `print x`, `print "x"`: a statement. `print(x)`, `print = ..`, `printer` are not.
        let statement = matches!(next, Some(' ' | '\t')) && !rest.trim_start().starts_with(['(', '=']) && !rest.trim().is_empty()
            || matches!(next, Some('"' | '\''));
        if statement {
            let indent = (line.len() - t.len()) as u32;
            let pos = if block { Pos { line: node.pos.line + i as u32, column: node.pos.column + indent } } else { node.pos };
            r.warn_at(
                pos,
                "this scaling_rule line uses a Python 2 print statement; MiCADO's policy keeper fails the whole rule without a word, fogmesh runs it as print(...)",
            );
        }
    }
}

/// The policy's properties over its type's defaults. A mapping set on both
/// (constants, queries) is merged key by key; otherwise the policy's value wins.
fn with_type_defaults(written: &Node, lib: &TypeLibrary, tosca_type: &str, r: &mut Reader) -> Node {
    let mut merged: Vec<(Key, Node)> = if written.is_null() { Vec::new() } else { r.mapping(written, "properties").to_vec() };
    for (prop, default) in lib.property_defaults(TypeSpace::Policy, tosca_type) {
        match merged.iter_mut().find(|(k, _)| k.name == prop) {
            None => merged.push((Key { name: prop, pos: default.pos }, default)),
            Some((_, own)) => {
                if let (Value::Map(own_entries), Value::Map(default_entries)) = (&mut own.value, &default.value) {
                    for (dk, dv) in default_entries {
                        if !own_entries.iter().any(|(k, _)| k.name == dk.name) {
                            own_entries.push((dk.clone(), dv.clone()));
                        }
                    }
                }
            }
        }
    }
    Node::new(Value::Map(merged), written.pos)
}

fn read_alert(node: &Node, scope: &Scope, r: &mut Reader) -> Option<Alert> {
    if node.as_map().is_none() {
        r.problem(node, format!("an alert must be a mapping {{alert, expr, for}}, found {}", node.kind()));
        return None;
    }
    let Some(name_node) = node.get("alert") else {
        r.problem(node, "an alert needs a name under 'alert'");
        return None;
    };
    let name = r.text(name_node, "alert name")?;
    let Some(expr_node) = node.get("expr") else {
        r.problem(node, format!("alert '{name}' needs an expr"));
        return None;
    };
    let expr = scope.render(expr_node, &format!("alert '{name}' expr"), r, false);
    let for_seconds = match node.get("for") {
        None => Some(0),
        Some(f) => {
            let text = scope.render(f, &format!("alert '{name}' for"), r, true);
            let secs = text.as_deref().and_then(parse_duration_seconds);
            if secs.is_none() {
                r.problem(f, format!("cannot parse {} as a duration (expected e.g. 30s, 5m, 1h30m)", describe(f)));
            }
            secs
        }
    };
    Some(Alert { name, expr: expr?, for_seconds: for_seconds? })
}

fn resolve_targets(e: &Entry, targets: &Targets, rejected: &[String], r: &mut Reader) -> (Vec<String>, TargetKind) {
    let mut names = Vec::new();
    let mut target_kind = TargetKind::None;
    let items = e.def.get("targets").map(|t| r.list(t, "targets").to_vec()).unwrap_or_default();
    for item in &items {
        let Some(target) = r.text(item, "target") else { continue };
        let Some((category, instances)) = targets.get(&target) else {
            // A template already reported as broken is not reported again here.
            if !rejected.contains(&target) {
                r.problem(
                    item,
                    format!("target '{target}' is not a node template in this ADT{}", did_you_mean(&target, targets.keys().map(String::as_str))),
                );
            }
            continue;
        };
        if !e.kind.enforced() {
            // Security, secret and alerting policies: kept as written.
            names.extend(instances.iter().cloned());
            continue;
        }
        let this_kind = match category {
            NodeCategory::Container(_) | NodeCategory::Pod => TargetKind::Workloads,
            NodeCategory::Cloud => TargetKind::Nodes,
            NodeCategory::Edge if e.kind == PolicyKind::Scaling => {
                r.problem(item, format!("target '{target}' is an Edge node, which cannot be scaled; target the containers it hosts"));
                continue;
            }
            NodeCategory::Edge => TargetKind::Nodes,
            _ => {
                r.problem(item, format!("target '{target}' is neither a container nor a node, so nothing can be scaled"));
                continue;
            }
        };
        if target_kind != TargetKind::None && target_kind != this_kind {
            r.problem(item, "a policy's targets must be all containers or all node sets, not both");
            continue;
        }
        target_kind = this_kind;
        names.extend(instances.iter().cloned());
    }
    if e.kind == PolicyKind::Scaling && items.is_empty() {
        r.warn(e.def, "this scaling policy has no targets, so it scales nothing");
    }
    (names, target_kind)
}

//! Policies -> plan policies: type defaults inherited, `{{CONST}}`
//! substituted, targets resolved to workloads or node sets.

use indexmap::IndexMap;

use super::diagnostics::{did_you_mean, list_names, Diagnostics};
use super::inputs::{Inputs, Site};
use super::plan::{Alert, Policy, PolicyKind, TargetKind};
use super::props::{describe, Reader};
use super::quantity::parse_duration_seconds;
use super::templating::substitute;
use super::types::{NodeCategory, TypeLibrary, TypeSpace, MONITORING_POLICY, SCALING_POLICY};
use super::yaml::{Key, Node, Value};

/// What each node template became: its category and its instance names
/// (one, or one per `instance_count` copy).
pub type Targets = IndexMap<String, (NodeCategory, Vec<String>)>;

/// Properties read into dedicated plan fields; the rest are kept as given.
const KNOWN_PROPERTIES: &[&str] = &[
    "sources",
    "constants",
    "queries",
    "alerts",
    "scaling_rule",
    "min_instances",
    "max_instances",
];

pub fn compile_policies(
    section: &Node,
    lib: &TypeLibrary,
    targets: &Targets,
    inputs: &Inputs,
    diags: &mut Diagnostics,
) -> Vec<Policy> {
    let mut out = Vec::new();
    let entries: &[Node] = match &section.value {
        Value::Seq(items) => items,
        Value::Null => &[],
        _ => {
            diags.push(section.pos, "document", format!("policies must be a list of {{name: definition}}, found {}", section.kind()));
            &[]
        }
    };
    for entry in entries {
        match entry.as_map() {
            Some([(name, def)]) => {
                if out.iter().any(|p: &Policy| p.name == name.name) {
                    diags.push(name.pos, format!("policy '{}'", name.name), "a policy with this name is defined twice");
                }
                if let Some(p) = compile_policy(name, def, lib, targets, inputs, diags) {
                    out.push(p);
                }
            }
            _ => diags.push(entry.pos, "document", "each policies entry must be a mapping with one key, the policy name"),
        }
    }
    out
}

fn compile_policy(
    name: &Key,
    def: &Node,
    lib: &TypeLibrary,
    targets: &Targets,
    inputs: &Inputs,
    diags: &mut Diagnostics,
) -> Option<Policy> {
    let subject = format!("policy '{}'", name.name);
    let Some(type_node) = def.get("type") else {
        diags.push(name.pos, &subject, "missing type");
        return None;
    };
    let Some(tosca_type) = type_node.as_str() else {
        diags.push(type_node.pos, &subject, format!("type must be a type name, found {}", type_node.kind()));
        return None;
    };
    if !lib.contains(TypeSpace::Policy, tosca_type) {
        diags.push(type_node.pos, &subject, lib.unknown_type_message(TypeSpace::Policy, tosca_type));
        return None;
    }
    let kind = if lib.is_a(TypeSpace::Policy, tosca_type, MONITORING_POLICY) || lib.is_a(TypeSpace::Policy, tosca_type, "tosca.policies.Monitoring") {
        PolicyKind::Monitoring
    } else if lib.is_a(TypeSpace::Policy, tosca_type, SCALING_POLICY) || lib.is_a(TypeSpace::Policy, tosca_type, "tosca.policies.Scaling") {
        PolicyKind::Scaling
    } else {
        // Placement, security and other policies do not act at the edge.
        return None;
    };

    let site = Site { subject: &subject, copy: None };
    let written = def.get("properties").map(|p| inputs.resolve(p, &site, diags)).unwrap_or_else(Node::null);
    let mut r = Reader { subject: subject.clone(), diags };
    let props = with_type_defaults(&written, lib, tosca_type, &mut r);

    let constants: IndexMap<String, serde_json::Value> = props
        .get("constants")
        .map(|c| {
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
        })
        .unwrap_or_default();
    let mut render = |node: &Node, what: &str, r: &mut Reader| -> Option<String> {
        let text = r.text(node, what)?;
        match substitute(&text, &constants) {
            Ok(s) => Some(s),
            Err(missing) => {
                for m in missing {
                    r.problem(
                        node,
                        format!(
                            "constant '{m}' is not defined{} (constants: {})",
                            did_you_mean(&m, constants.keys().map(String::as_str)),
                            list_names(constants.keys().map(String::as_str))
                        ),
                    );
                }
                None
            }
        }
    };

    let sources = props
        .get("sources")
        .map(|s| r.list(s, "sources").iter().filter_map(|i| render(i, "a source", &mut r)).collect())
        .unwrap_or_default();
    let queries = props
        .get("queries")
        .map(|q| {
            r.mapping(q, "queries")
                .iter()
                .filter_map(|(k, v)| Some((k.name.clone(), render(v, &format!("query '{}'", k.name), &mut r)?)))
                .collect()
        })
        .unwrap_or_default();
    let alerts = props
        .get("alerts")
        .map(|a| r.list(a, "alerts").iter().filter_map(|al| read_alert(al, &mut render, &mut r)).collect())
        .unwrap_or_default();
    let scaling_rule = props.get("scaling_rule").and_then(|s| render(s, "scaling_rule", &mut r));
    let bound = |field: &str, r: &mut Reader| -> Option<u32> {
        let node = props.get(field).filter(|n| !n.is_null())?;
        let text = render(node, field, r)?;
        match text.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                r.problem(node, format!("{field} must be a whole number from 0, found \"{text}\""));
                None
            }
        }
    };
    let min_instances = bound("min_instances", &mut r);
    let max_instances = bound("max_instances", &mut r);
    if let (Some(min), Some(max)) = (min_instances, max_instances) {
        if min > max {
            let at = props.get("min_instances").unwrap_or(def);
            r.problem(at, format!("min_instances {min} is larger than max_instances {max}"));
        }
    }
    let properties = r
        .mapping(&props, "properties")
        .iter()
        .filter(|(k, _)| !KNOWN_PROPERTIES.contains(&k.name.as_str()))
        .map(|(k, v)| (k.name.clone(), v.to_json()))
        .collect();

    let (targets, target_kind) = resolve_targets(def, kind, targets, &mut r);
    Some(Policy {
        name: name.name.clone(),
        kind,
        tosca_type: tosca_type.to_string(),
        targets,
        target_kind,
        min_instances,
        max_instances,
        sources,
        constants,
        queries,
        alerts,
        scaling_rule,
        properties,
    })
}

/// The policy's properties over its type's defaults. A mapping set on both
/// (constants, queries) is merged key by key; otherwise the policy's value wins.
fn with_type_defaults(written: &Node, lib: &TypeLibrary, tosca_type: &str, r: &mut Reader) -> Node {
    let mut merged: Vec<(Key, Node)> = r.mapping(written, "properties").to_vec();
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

fn read_alert(
    node: &Node,
    render: &mut impl FnMut(&Node, &str, &mut Reader) -> Option<String>,
    r: &mut Reader,
) -> Option<Alert> {
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
    let expr = render(expr_node, &format!("alert '{name}' expr"), r);
    let for_seconds = match node.get("for") {
        None => Some(0),
        Some(f) => {
            let secs = f.scalar_text().and_then(|t| parse_duration_seconds(&t));
            if secs.is_none() {
                r.problem(f, format!("cannot parse {} as a duration (expected e.g. 30s, 5m, 1h30m)", describe(f)));
            }
            secs
        }
    };
    Some(Alert {
        name,
        expr: expr?,
        for_seconds: for_seconds?,
    })
}

fn resolve_targets(def: &Node, kind: PolicyKind, targets: &Targets, r: &mut Reader) -> (Vec<String>, TargetKind) {
    let mut names = Vec::new();
    let mut target_kind = TargetKind::None;
    let items = def.get("targets").map(|t| r.list(t, "targets")).unwrap_or(&[]);
    for item in items {
        let Some(target) = r.text(item, "target") else { continue };
        let Some((category, instances)) = targets.get(&target) else {
            r.problem(
                item,
                format!(
                    "target '{target}' is not a node template in this ADT{}",
                    did_you_mean(&target, targets.keys().map(String::as_str))
                ),
            );
            continue;
        };
        let this_kind = match category {
            NodeCategory::Container(_) => TargetKind::Workloads,
            NodeCategory::Cloud => TargetKind::Nodes,
            NodeCategory::Edge if kind == PolicyKind::Scaling => {
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
    if kind == PolicyKind::Scaling && items.is_empty() {
        r.problem(def, "a scaling policy needs targets: the containers or node sets it scales");
    }
    (names, target_kind)
}

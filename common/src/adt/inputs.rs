//! Topology inputs: declarations with defaults, submit-time parameters, and
//! `get_input` resolution (including `[LIST, INDEX]` for expanded copies).

use indexmap::IndexMap;

use super::diagnostics::{did_you_mean, list_names, Diagnostics};
use super::yaml::{self, Node, Pos, Value};

#[derive(Clone, Debug)]
struct Input {
    /// Submit-time parameter, else the declared default; `None` if neither.
    value: Option<Node>,
    secret: bool,
}

/// The ADT's inputs with the values they take for this submission.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    inputs: IndexMap<String, Input>,
}

/// Where a `get_input` is being resolved: for messages and for `INDEX`.
pub struct Site<'a> {
    pub subject: &'a str,
    /// 1-based copy number inside an `instance_count` expansion.
    pub copy: Option<u32>,
}

/// The input names an ADT declares, read without compiling it (empty when
/// it does not parse: the compiler then reports why).
pub fn declared_input_names(text: &str) -> Vec<String> {
    let Ok(doc) = super::yaml::parse(text) else { return Vec::new() };
    doc.get("topology_template")
        .and_then(|t| t.get("inputs"))
        .and_then(Node::as_map)
        .map(|entries| entries.iter().map(|(k, _)| k.name.clone()).collect())
        .unwrap_or_default()
}

impl Inputs {
    /// Reads `topology_template.inputs` and applies `params` (NAME=VALUE from
    /// the command line or the API) on top of the defaults.
    pub fn collect(declarations: Option<&Node>, params: &[(String, String)], diags: &mut Diagnostics) -> Inputs {
        let mut inputs = IndexMap::new();
        if let Some(decl) = declarations.filter(|d| !d.is_null()) {
            match decl.as_map() {
                Some(entries) => {
                    for (name, def) in entries {
                        let input_type = def.get("type").and_then(Node::as_str).unwrap_or("string");
                        let value = match def.as_map() {
                            Some(_) => def.get("default").cloned(),
                            // `name: value` shorthand: the value is the default.
                            None => Some(def.clone()),
                        };
                        inputs.insert(
                            name.name.clone(),
                            Input {
                                value,
                                secret: input_type == "secret",
                            },
                        );
                    }
                }
                None => diags.push(
                    decl.pos,
                    "document",
                    format!("topology_template.inputs must be a mapping of input names to definitions, found {}", decl.kind()),
                ),
            }
        }
        let mut result = Inputs { inputs };
        for (name, text) in params {
            let declared_type = declarations
                .and_then(|d| d.get(name))
                .and_then(|d| d.get("type"))
                .and_then(Node::as_str)
                .unwrap_or("string")
                .to_string();
            let Some(input) = result.inputs.get_mut(name) else {
                diags.push(
                    Pos::UNKNOWN,
                    format!("parameter '{name}'"),
                    format!(
                        "is not an input of this ADT{} (inputs: {})",
                        did_you_mean(name, result.inputs.keys().map(String::as_str)),
                        list_names(result.inputs.keys().map(String::as_str))
                    ),
                );
                continue;
            };
            input.value = Some(match parse_param(&declared_type, text) {
                Ok(node) => node,
                Err(msg) => {
                    diags.push(Pos::UNKNOWN, format!("parameter '{name}'"), msg);
                    continue;
                }
            });
        }
        result
    }

    /// The declared inputs, in order, and whether each is a secret.
    pub fn declared(&self) -> Vec<super::plan::PlanInput> {
        self.inputs.iter().map(|(name, i)| super::plan::PlanInput { name: name.clone(), secret: i.secret }).collect()
    }

    /// Whether `node` is a `get_input` of a `secret` input.
    pub fn is_secret_call(&self, node: &Node) -> bool {
        get_input_arg(node)
            .and_then(|arg| match &arg.value {
                Value::Str(name) => Some(name.as_str()),
                Value::Seq(items) => items.first().and_then(Node::as_str),
                _ => None,
            })
            .and_then(|name| self.inputs.get(name))
            .is_some_and(|i| i.secret)
    }

    /// A copy of `node` with every `get_input` replaced by its value. A call
    /// that cannot be resolved is reported and becomes [`Value::Invalid`].
    pub fn resolve(&self, node: &Node, site: &Site, diags: &mut Diagnostics) -> Node {
        if let Some(arg) = get_input_arg(node) {
            let Some(mut value) = self.lookup(arg, site, diags) else {
                return Node::invalid(node.pos);
            };
            // Point later messages about this value at the call site.
            value.pos = node.pos;
            return value;
        }
        match &node.value {
            Value::Seq(items) => Node::new(
                Value::Seq(items.iter().map(|i| self.resolve(i, site, diags)).collect()),
                node.pos,
            ),
            Value::Map(entries) => Node::new(
                Value::Map(
                    entries
                        .iter()
                        .map(|(k, v)| (k.clone(), self.resolve(v, site, diags)))
                        .collect(),
                ),
                node.pos,
            ),
            _ => node.clone(),
        }
    }

    fn lookup(&self, arg: &Node, site: &Site, diags: &mut Diagnostics) -> Option<Node> {
        let (name_node, index) = match &arg.value {
            Value::Str(_) => (arg, None),
            Value::Seq(items) if items.len() == 2 => (&items[0], Some(&items[1])),
            _ => {
                diags.push(
                    arg.pos,
                    site.subject,
                    format!("get_input takes an input name or [LIST_INPUT, INDEX], found {}", arg.kind()),
                );
                return None;
            }
        };
        let Some(name) = name_node.as_str() else {
            diags.push(name_node.pos, site.subject, format!("get_input needs an input name, found {}", name_node.kind()));
            return None;
        };
        let Some(input) = self.inputs.get(name) else {
            diags.push(
                name_node.pos,
                site.subject,
                format!(
                    "get_input names '{name}', which is not declared under topology_template.inputs{}",
                    did_you_mean(name, self.inputs.keys().map(String::as_str))
                ),
            );
            return None;
        };
        let Some(value) = &input.value else {
            diags.push(
                name_node.pos,
                site.subject,
                format!("input '{name}' has no default and no value was given (submit with --param {name}=VALUE)"),
            );
            return None;
        };
        let Some(index) = index else {
            return Some(value.clone());
        };
        let position = match (&index.value, site.copy) {
            // INDEX is the copy number: copy k takes the k-th element.
            (Value::Str(s), Some(copy)) if s == "INDEX" => copy as usize - 1,
            (Value::Str(s), None) if s == "INDEX" => {
                diags.push(
                    index.pos,
                    site.subject,
                    "INDEX is only defined in a node template with instance_count",
                );
                return None;
            }
            // A literal index counts from 0, as in TOSCA.
            (Value::Int(i), _) if *i >= 0 => *i as usize,
            _ => {
                diags.push(index.pos, site.subject, "the index of get_input must be INDEX or a whole number from 0");
                return None;
            }
        };
        let Some(items) = value.as_seq() else {
            diags.push(
                name_node.pos,
                site.subject,
                format!("get_input [{name}, ...] needs a list input, but '{name}' is {}", value.kind()),
            );
            return None;
        };
        match items.get(position) {
            Some(item) => Some(item.clone()),
            None => {
                diags.push(
                    index.pos,
                    site.subject,
                    format!(
                        "input '{name}' has {} element{}, too few for element {}",
                        items.len(),
                        if items.len() == 1 { "" } else { "s" },
                        position + 1
                    ),
                );
                None
            }
        }
    }
}

/// The argument of `{get_input: ARG}`, if `node` is such a call.
fn get_input_arg(node: &Node) -> Option<&Node> {
    match node.as_map() {
        Some([(key, arg)]) if key.name == "get_input" => Some(arg),
        _ => None,
    }
}

/// A parameter's text as a value of the input's declared type.
fn parse_param(input_type: &str, text: &str) -> Result<Node, String> {
    if matches!(input_type, "string" | "secret") {
        return Ok(Node::new(Value::Str(text.to_string()), Pos::UNKNOWN));
    }
    let node = yaml::parse(text).map_err(|e| format!("cannot read '{text}' as {input_type}: {}", e.message))?;
    let ok = match input_type {
        "integer" => matches!(node.value, Value::Int(_)),
        "float" => matches!(node.value, Value::Int(_) | Value::Float(_)),
        "boolean" => matches!(node.value, Value::Bool(_)),
        "list" => matches!(node.value, Value::Seq(_)),
        "map" => matches!(node.value, Value::Map(_)),
        _ => true,
    };
    if ok {
        Ok(strip_positions(node))
    } else {
        Err(format!("'{text}' is not a valid {input_type} (found {})", node.kind()))
    }
}

/// Positions inside a parameter's text refer to that text, not the ADT.
fn strip_positions(node: Node) -> Node {
    let value = match node.value {
        Value::Seq(items) => Value::Seq(items.into_iter().map(strip_positions).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(mut k, v)| {
                    k.pos = Pos::UNKNOWN;
                    (k, strip_positions(v))
                })
                .collect(),
        ),
        other => other,
    };
    Node::new(value, Pos::UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(params: &[(&str, &str)]) -> (Inputs, Diagnostics) {
        let doc = yaml::parse("ip: {type: string, default: 1.2.3.4}\nports: {type: list, default: [5001, 5002]}\nneed: {type: integer}\nkey: {type: secret, default: s3cret}\n").unwrap();
        let params: Vec<(String, String)> = params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let mut diags = Diagnostics::default();
        let i = Inputs::collect(Some(&doc), &params, &mut diags);
        (i, diags)
    }

    fn resolve(i: &Inputs, yaml_text: &str, copy: Option<u32>) -> (Node, Diagnostics) {
        let node = yaml::parse(yaml_text).unwrap();
        let mut diags = Diagnostics::default();
        let out = i.resolve(&node, &Site { subject: "node 'n'", copy }, &mut diags);
        (out, diags)
    }

    #[test]
    fn defaults_params_and_index() {
        let (i, d) = inputs(&[("ip", "9.9.9.9"), ("ports", "[1, 2, 3]")]);
        assert!(d.is_empty(), "{d:?}");
        let (out, d) = resolve(&i, "a: {get_input: ip}\nb: [x, {get_input: [ports, INDEX]}]\nc: {get_input: [ports, 0]}\n", Some(3));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(out.get("a").unwrap().as_str(), Some("9.9.9.9"));
        assert_eq!(out.get("b").unwrap().as_seq().unwrap()[1].value, Value::Int(3));
        assert_eq!(out.get("c").unwrap().value, Value::Int(1));
    }

    #[test]
    fn problems_name_the_input_and_place() {
        let (i, _) = inputs(&[]);
        let (_, d) = resolve(&i, "a: {get_input: need}\nb: {get_input: ipp}\nc: {get_input: [ports, INDEX]}\n", Some(5));
        let msgs: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("1:16: node 'n': input 'need' has no default"), "{msgs:?}");
        assert!(msgs[1].contains("'ipp', which is not declared") && msgs[1].contains("did you mean ip"), "{msgs:?}");
        assert!(msgs[2].contains("has 2 elements, too few for element 5"), "{msgs:?}");
    }

    #[test]
    fn bad_params_are_reported() {
        let (_, d) = inputs(&[("nope", "1"), ("need", "many")]);
        let msgs: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        assert!(msgs[0].contains("parameter 'nope': is not an input"), "{msgs:?}");
        assert!(msgs[1].contains("'many' is not a valid integer"), "{msgs:?}");
    }

    #[test]
    fn secrets_are_recognised() {
        let (i, _) = inputs(&[]);
        assert!(i.is_secret_call(&yaml::parse("{get_input: key}").unwrap()));
        assert!(!i.is_secret_call(&yaml::parse("{get_input: ip}").unwrap()));
    }
}

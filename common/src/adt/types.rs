//! The TOSCA type system: the built-in MiCADO library plus the ADT's own
//! `node_types` / `policy_types` / `data_types`, with `derived_from`
//! inheritance of property definitions (type, required, default,
//! constraints) and metadata. Templates are checked against them as
//! MiCADO's parser does: unknown properties, wrong value types and values
//! outside their constraints are errors.

use indexmap::IndexMap;

use super::diagnostics::{did_you_mean, Diagnostics};
use super::plan::WorkloadKind;
use super::props::{describe, Reader};
use super::yaml::{self, Node, Pos, Value};

const BUILTIN_TYPES: &str = include_str!("micado_types.yaml");

/// Longest `derived_from` chain followed; deeper means a cycle or abuse.
const MAX_TYPE_DEPTH: usize = 32;

pub const DOCKER: &str = "tosca.nodes.MiCADO.Container.Application.Docker";
pub const VOLUME: &str = "tosca.nodes.MiCADO.Container.Volume";
pub const CONFIG: &str = "tosca.nodes.MiCADO.Container.Config";
pub const EDGE: &str = "tosca.nodes.MiCADO.Edge";
pub const COMPUTE: &str = "tosca.nodes.Compute";
pub const POD: &str = "tosca.nodes.MiCADO.Container.Application.Pod";
pub const MONITORING_POLICY: &str = "tosca.policies.Monitoring.MiCADO";
pub const SCALING_POLICY: &str = "tosca.policies.Scaling.MiCADO";

#[derive(Clone, Debug)]
pub struct PropertyDef {
    /// `string`, `integer`, `list`, ..., or a data type name; `None` when
    /// the definition gives none (nothing is checked then).
    pub value_type: Option<String>,
    /// TOSCA: a property is required unless it says `required: false`.
    pub required: bool,
    pub default: Option<Node>,
    pub constraints: Vec<Constraint>,
    /// The type of a list's or map's entries.
    pub entry_type: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Constraint {
    ValidValues(Vec<Node>),
    GreaterOrEqual(f64),
    LessOrEqual(f64),
}

#[derive(Clone, Debug)]
pub struct TypeDef {
    pub derived_from: Option<(String, Pos)>,
    pub properties: IndexMap<String, PropertyDef>,
    pub metadata: IndexMap<String, String>,
}

/// What a node template is, decided by its type's ancestry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeCategory {
    Container(WorkloadKind),
    /// Containers that share a node and a network namespace.
    Pod,
    Volume,
    Config,
    Edge,
    Cloud,
    /// Known to TOSCA but not something fogmesh deploys.
    Other,
}

#[derive(Clone, Debug)]
pub struct TypeLibrary {
    node_types: IndexMap<String, TypeDef>,
    policy_types: IndexMap<String, TypeDef>,
    data_types: IndexMap<String, TypeDef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeSpace {
    Node,
    Policy,
    Data,
}

impl TypeSpace {
    fn section(self) -> &'static str {
        match self {
            TypeSpace::Node => "node_types",
            TypeSpace::Policy => "policy_types",
            TypeSpace::Data => "data_types",
        }
    }

    const ALL: [TypeSpace; 3] = [TypeSpace::Node, TypeSpace::Policy, TypeSpace::Data];
}

/// TOSCA's own value types; any other name is a data type.
const PRIMITIVES: &[&str] = &[
    "string", "integer", "float", "boolean", "list", "map", "timestamp", "range", "version",
    "scalar-unit.size", "scalar-unit.time", "scalar-unit.frequency", "scalar-unit.bitrate",
];

/// A value that is a TOSCA function call, checked by whoever evaluates it.
fn is_function(node: &Node) -> bool {
    matches!(node.as_map(), Some([(k, _)]) if matches!(k.name.as_str(), "get_property" | "get_attribute" | "get_input" | "concat" | "join" | "token" | "get_artifact" | "get_operation_output"))
}

impl TypeLibrary {
    /// The built-in MiCADO library, what `micado_types.yaml` imports resolve
    /// to; parsed once per process.
    pub fn builtin() -> TypeLibrary {
        static BUILTIN: std::sync::OnceLock<TypeLibrary> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(TypeLibrary::parse_builtin).clone()
    }

    fn parse_builtin() -> TypeLibrary {
        let mut lib = TypeLibrary { node_types: IndexMap::new(), policy_types: IndexMap::new(), data_types: IndexMap::new() };
        let doc = yaml::parse(BUILTIN_TYPES).expect("built-in type library is valid YAML");
        let mut diags = Diagnostics::default();
        lib.add_definitions(&doc, &mut diags);
        assert!(diags.is_empty(), "built-in type library: {diags:?}");
        lib
    }

    /// Adds the `node_types` and `policy_types` of an ADT or imported file.
    pub fn add_definitions(&mut self, doc: &Node, diags: &mut Diagnostics) {
        for space in TypeSpace::ALL {
            let Some(section) = doc.get(space.section()) else {
                continue;
            };
            let Some(entries) = section.as_map() else {
                diags.push(
                    section.pos,
                    "document",
                    format!("{} must be a mapping of type names to definitions, found {}", space.section(), section.kind()),
                );
                continue;
            };
            for (name, def) in entries {
                let subject = format!("type '{}'", name.name);
                if let Some(parsed) = parse_type_def(def, &subject, diags) {
                    self.types_mut(space).insert(name.name.clone(), parsed);
                }
            }
        }
    }

    /// Checks that every `derived_from` names a known type and that no chain loops.
    pub fn check(&self, diags: &mut Diagnostics) {
        for space in TypeSpace::ALL {
            for (name, def) in self.types(space) {
                if let Some((parent, pos)) = &def.derived_from {
                    if !self.types(space).contains_key(parent) {
                        diags.push(
                            *pos,
                            format!("type '{name}'"),
                            format!(
                                "derived_from names unknown type '{parent}'{}",
                                did_you_mean(parent, self.types(space).keys().map(String::as_str))
                            ),
                        );
                    }
                }
                if self.ancestry(space, name).len() > MAX_TYPE_DEPTH {
                    let pos = def.derived_from.as_ref().map_or(Pos::UNKNOWN, |d| d.1);
                    diags.push(pos, format!("type '{name}'"), "derived_from chain loops or is deeper than 32 types");
                }
            }
        }
    }

    /// Every type name of a space, in definition order.
    pub fn names(&self, space: TypeSpace) -> Vec<String> {
        self.types(space).keys().cloned().collect()
    }

    pub fn contains(&self, space: TypeSpace, name: &str) -> bool {
        self.types(space).contains_key(name)
    }

    /// The type a template names, as the library knows it: an unknown type
    /// is an error (`None`); a type MiCADO removed is read with a warning
    /// naming its current replacement.
    pub fn resolve(&self, space: TypeSpace, name: &str, pos: Pos, subject: &str, diags: &mut Diagnostics) -> Option<String> {
        if !self.contains(space, name) {
            diags.push(pos, subject, self.unknown_type_message(space, name));
            return None;
        }
        if let Some(current) = self.types(space).get(name).and_then(|d| d.metadata.get("replaced_by")) {
            diags.warn(pos, subject, format!("type '{name}' was removed from MiCADO's library; fogmesh reads it as before, but use '{current}'"));
        }
        Some(name.to_string())
    }

    /// Checks a template's properties against the type: every property
    /// must be declared, and each value must fit its declared type and
    /// constraints (as MiCADO's parser checks; text types take any value).
    pub fn check_properties(&self, space: TypeSpace, name: &str, props: &Node, r: &mut Reader) {
        let Some(entries) = props.as_map() else { return };
        let defs = self.property_defs(space, name);
        for (key, value) in entries {
            if !key.pos.is_known() {
                continue; // a default the type itself supplied
            }
            let Some(def) = defs.get(&key.name) else {
                let known: Vec<&str> = defs.keys().map(String::as_str).collect();
                let hint = match did_you_mean(&key.name, known.iter().copied()) {
                    s if s.is_empty() && known.is_empty() => " (it has no properties)".to_string(),
                    s if s.is_empty() && known.len() > 12 => format!(" (it has {}, ... {} in all)", known[..12].join(", "), known.len()),
                    s if s.is_empty() => format!(" (it has: {})", known.join(", ")),
                    s => s,
                };
                r.problem_at(key.pos, format!("unknown property '{}' for type {name}{hint}", key.name));
                continue;
            };
            self.check_value(def.value_type.as_deref(), def.entry_type.as_deref(), &def.constraints, value, &format!("property '{}'", key.name), r);
        }
    }

    /// Every property definition along the ancestry, nearest first.
    pub fn property_defs(&self, space: TypeSpace, name: &str) -> IndexMap<String, PropertyDef> {
        let mut defs = IndexMap::new();
        for (_, def) in self.ancestry(space, name) {
            for (prop, pd) in &def.properties {
                defs.entry(prop.clone()).or_insert_with(|| pd.clone());
            }
        }
        defs
    }

    fn check_value(&self, value_type: Option<&str>, entry_type: Option<&str>, constraints: &[Constraint], value: &Node, what: &str, r: &mut Reader) {
        if value.is_null() || value.is_invalid() || is_function(value) {
            return;
        }
        let Some(t) = value_type else { return };
        let ok = match t {
            // MiCADO's parser turns any value into text for these.
            "string" | "timestamp" | "version" => true,
            t if t.starts_with("scalar-unit.") => value.scalar_text().is_some(),
            "integer" => matches!(&value.value, Value::Int(_)) || value.as_str().is_some_and(|s| s.trim().parse::<i64>().is_ok()),
            "float" => matches!(&value.value, Value::Int(_) | Value::Float(_)) || value.as_str().is_some_and(|s| s.trim().parse::<f64>().is_ok()),
            "boolean" => matches!(&value.value, Value::Bool(_)) || value.as_str().is_some_and(|s| matches!(s.to_ascii_lowercase().as_str(), "true" | "false" | "yes" | "no" | "on" | "off")),
            "list" => matches!(&value.value, Value::Seq(_)),
            "map" => matches!(&value.value, Value::Map(_)),
            "range" => matches!(&value.value, Value::Seq(items) if items.len() == 2),
            // fogmesh also reads Compose's "8080:80" (and says MiCADO does not).
            "ports_type" if value.as_map().is_none() && value.scalar_text().is_some() => true,
            data => {
                if let Some(fields) = self.types(TypeSpace::Data).contains_key(data).then(|| self.property_defs(TypeSpace::Data, data)) {
                    self.check_data(data, &fields, value, what, r);
                }
                true
            }
        };
        if !ok {
            r.problem(value, format!("{what} must be {}, found {}", article(t), describe(value)));
            return;
        }
        if let (Some(entry), Value::Seq(items)) = (entry_type, &value.value) {
            for item in items {
                self.check_value(Some(entry), None, &[], item, &format!("an entry of {what}"), r);
            }
        }
        for c in constraints {
            check_constraint(c, value, what, r);
        }
    }

    /// A data-type value: a mapping whose fields the data type declares.
    fn check_data(&self, data: &str, fields: &IndexMap<String, PropertyDef>, value: &Node, what: &str, r: &mut Reader) {
        let Some(entries) = value.as_map() else {
            r.problem(value, format!("{what} must be a mapping ({data}), found {}", describe(value)));
            return;
        };
        for (key, v) in entries {
            match fields.get(&key.name) {
                Some(f) => self.check_value(f.value_type.as_deref(), f.entry_type.as_deref(), &f.constraints, v, &format!("{what} field '{}'", key.name), r),
                None => r.problem_at(
                    key.pos,
                    format!("{what} has unknown field '{}' ({data}){}", key.name, did_you_mean(&key.name, fields.keys().map(String::as_str))),
                ),
            }
        }
    }

    /// "unknown type 'X'; did you mean ..." for a type name not in the library.
    pub fn unknown_type_message(&self, space: TypeSpace, name: &str) -> String {
        format!(
            "unknown type '{name}'{}",
            did_you_mean(name, self.types(space).keys().map(String::as_str))
        )
    }

    /// The type and its ancestors, most derived first; stops at unknown
    /// parents and after `MAX_TYPE_DEPTH + 1` steps.
    pub fn ancestry(&self, space: TypeSpace, name: &str) -> Vec<(&str, &TypeDef)> {
        let mut chain = Vec::new();
        let mut current = Some(name);
        while let Some(n) = current {
            let Some((key, def)) = self.types(space).get_key_value(n) else {
                break;
            };
            chain.push((key.as_str(), def));
            if chain.len() > MAX_TYPE_DEPTH {
                break;
            }
            current = def.derived_from.as_ref().map(|(p, _)| p.as_str());
        }
        chain
    }

    pub fn is_a(&self, space: TypeSpace, name: &str, ancestor: &str) -> bool {
        self.ancestry(space, name).iter().any(|(n, _)| *n == ancestor)
    }

    pub fn node_category(&self, name: &str) -> NodeCategory {
        let is = |ancestor: &str| self.is_a(TypeSpace::Node, name, ancestor);
        if is(POD) {
            NodeCategory::Pod
        } else if is(DOCKER) {
            let kind = [
                ("Deployment", WorkloadKind::Deployment),
                ("DaemonSet", WorkloadKind::DaemonSet),
                ("StatefulSet", WorkloadKind::StatefulSet),
                ("Job", WorkloadKind::Job),
                ("Init", WorkloadKind::Init),
            ]
            .into_iter()
            .find(|(suffix, _)| is(&format!("{DOCKER}.{suffix}")))
            .map_or(WorkloadKind::Container, |(_, k)| k);
            NodeCategory::Container(kind)
        } else if is(VOLUME) {
            NodeCategory::Volume
        } else if is(CONFIG) {
            NodeCategory::Config
        } else if is(EDGE) {
            NodeCategory::Edge
        } else if is(COMPUTE) {
            NodeCategory::Cloud
        } else {
            NodeCategory::Other
        }
    }

    /// Properties that are required and have no default (the nearest
    /// definition of each property decides).
    pub fn required_properties(&self, space: TypeSpace, name: &str) -> Vec<String> {
        let defaults = self.property_defaults(space, name);
        self.property_defs(space, name)
            .into_iter()
            .filter(|(prop, pd)| pd.required && !defaults.contains_key(prop))
            .map(|(prop, _)| prop)
            .collect()
    }

    /// The nearest `default` of each property along the ancestry.
    pub fn property_defaults(&self, space: TypeSpace, name: &str) -> IndexMap<String, Node> {
        let mut defaults = IndexMap::new();
        for (_, def) in self.ancestry(space, name) {
            for (prop, pd) in &def.properties {
                if let Some(d) = &pd.default {
                    defaults.entry(prop.clone()).or_insert_with(|| d.clone());
                }
            }
        }
        defaults
    }

    /// The nearest metadata value for `key` along the ancestry.
    pub fn metadata(&self, space: TypeSpace, name: &str, key: &str) -> Option<String> {
        self.ancestry(space, name)
            .into_iter()
            .find_map(|(_, def)| def.metadata.get(key).cloned())
    }

    fn types(&self, space: TypeSpace) -> &IndexMap<String, TypeDef> {
        match space {
            TypeSpace::Node => &self.node_types,
            TypeSpace::Policy => &self.policy_types,
            TypeSpace::Data => &self.data_types,
        }
    }

    fn types_mut(&mut self, space: TypeSpace) -> &mut IndexMap<String, TypeDef> {
        match space {
            TypeSpace::Node => &mut self.node_types,
            TypeSpace::Policy => &mut self.policy_types,
            TypeSpace::Data => &mut self.data_types,
        }
    }
}

fn article(t: &str) -> String {
    match t {
        "integer" => "a whole number".into(),
        "float" => "a number".into(),
        "boolean" => "true or false".into(),
        "list" => "a list".into(),
        "map" => "a mapping".into(),
        "range" => "a [MIN, MAX] range".into(),
        other => format!("a {other}"),
    }
}

fn check_constraint(c: &Constraint, value: &Node, what: &str, r: &mut Reader) {
    let number = || value.scalar_text().and_then(|t| t.trim().parse::<f64>().ok());
    match c {
        Constraint::ValidValues(allowed) => {
            let text = value.scalar_text();
            if !allowed.iter().any(|a| a.scalar_text() == text) {
                let list: Vec<String> = allowed.iter().filter_map(Node::scalar_text).collect();
                r.problem(value, format!("{what} must be one of {}, found {}", list.join(", "), describe(value)));
            }
        }
        Constraint::GreaterOrEqual(min) => {
            if number().is_some_and(|n| n < *min) {
                r.problem(value, format!("{what} must be at least {min}, found {}", describe(value)));
            }
        }
        Constraint::LessOrEqual(max) => {
            if number().is_some_and(|n| n > *max) {
                r.problem(value, format!("{what} must be at most {max}, found {}", describe(value)));
            }
        }
    }
}

fn parse_constraints(node: Option<&Node>) -> Vec<Constraint> {
    let Some(Value::Seq(items)) = node.map(|n| &n.value) else { return Vec::new() };
    let number = |n: &Node| n.scalar_text().and_then(|t| t.trim().parse::<f64>().ok());
    items
        .iter()
        .filter_map(|c| match c.as_map() {
            Some([(k, v)]) => match (k.name.as_str(), &v.value) {
                ("valid_values", Value::Seq(values)) => Some(Constraint::ValidValues(values.clone())),
                ("greater_or_equal", _) => number(v).map(Constraint::GreaterOrEqual),
                ("less_or_equal", _) => number(v).map(Constraint::LessOrEqual),
                ("in_range", Value::Seq(range)) if range.len() == 2 => number(&range[0]).map(Constraint::GreaterOrEqual),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn parse_type_def(def: &Node, subject: &str, diags: &mut Diagnostics) -> Option<TypeDef> {
    if def.is_null() {
        return Some(TypeDef {
            derived_from: None,
            properties: IndexMap::new(),
            metadata: IndexMap::new(),
        });
    }
    if def.as_map().is_none() {
        diags.push(def.pos, subject, format!("a type definition must be a mapping, found {}", def.kind()));
        return None;
    }
    let derived_from = match def.get("derived_from") {
        None => None,
        Some(d) => match d.as_str() {
            Some(s) => Some((s.to_string(), d.pos)),
            None => {
                diags.push(d.pos, subject, format!("derived_from must be a type name, found {}", d.kind()));
                None
            }
        },
    };
    let mut properties = IndexMap::new();
    if let Some(props) = def.get("properties") {
        match props.as_map() {
            Some(entries) => {
                for (name, pd) in entries {
                    let required = match pd.get("required").map(|r| &r.value) {
                        Some(yaml::Value::Bool(b)) => *b,
                        // TOSCA: required unless said otherwise.
                        None => true,
                        Some(_) => {
                            diags.push(pd.pos, subject, format!("property '{}': required must be true or false", name.name));
                            false
                        }
                    };
                    let text = |key: &str| pd.get(key).and_then(Node::as_str).map(String::from);
                    let value_type = text("type").filter(|t| PRIMITIVES.contains(&t.as_str()) || !t.starts_with("tosca.datatypes"));
                    properties.insert(
                        name.name.clone(),
                        PropertyDef {
                            value_type,
                            required,
                            // A null default exempts nothing (TOSCA parser).
                            default: pd.get("default").filter(|d| !d.is_null()).cloned(),
                            constraints: parse_constraints(pd.get("constraints")),
                            entry_type: pd.get("entry_schema").and_then(|e| e.get("type").or(Some(e))).and_then(Node::as_str).map(String::from),
                        },
                    );
                }
            }
            None if props.is_null() => {}
            None => diags.push(props.pos, subject, format!("properties must be a mapping, found {}", props.kind())),
        }
    }
    let metadata = def
        .get("metadata")
        .and_then(Node::as_map)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.name.clone(), v.scalar_text()?)))
                .collect()
        })
        .unwrap_or_default();
    Some(TypeDef {
        derived_from,
        properties,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_library_categorises_types() {
        let lib = TypeLibrary::builtin();
        let mut diags = Diagnostics::default();
        lib.check(&mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            lib.node_category("tosca.nodes.MiCADO.Container.Application.Docker.Deployment"),
            NodeCategory::Container(WorkloadKind::Deployment)
        );
        assert_eq!(lib.node_category("tosca.nodes.MiCADO.Edge"), NodeCategory::Edge);
        assert_eq!(lib.node_category("tosca.nodes.MiCADO.Edge.EC2"), NodeCategory::Cloud);
        assert_eq!(lib.node_category("tosca.nodes.MiCADO.Container.Volume.NFS"), NodeCategory::Volume);
        assert_eq!(
            lib.metadata(TypeSpace::Node, "tosca.nodes.MiCADO.Edge.Nova", "cloud").as_deref(),
            Some("nova")
        );
        assert!(lib.required_properties(TypeSpace::Node, "tosca.nodes.MiCADO.Container.Application.Docker.Job").is_empty(), "image may come from artifacts");
        assert_eq!(lib.required_properties(TypeSpace::Node, "tosca.nodes.MiCADO.Edge"), vec!["public_ip".to_string()]);
        // A default exempts a required property (here: redeclared by a subtype).
        let small = lib.required_properties(TypeSpace::Node, "tosca.nodes.MiCADO.CloudSigma.Compute.Occo.small");
        assert!(!small.contains(&"num_cpus".to_string()) && small.contains(&"libdrive_id".to_string()), "{small:?}");
        assert_eq!(lib.node_category("tosca.nodes.MiCADO.Container.Application.Pod.Deployment"), NodeCategory::Pod);
        assert_eq!(lib.node_category("micado.microservice"), NodeCategory::Container(WorkloadKind::Container));
        assert_eq!(lib.node_category("micado.deployment"), NodeCategory::Cloud);
    }

    #[test]
    fn local_types_inherit_and_cycles_are_reported() {
        let mut lib = TypeLibrary::builtin();
        let doc = yaml::parse(
            "policy_types:\n  my.Scale:\n    derived_from: tosca.policies.Scaling.MiCADO\n    properties:\n      constants: {default: {A: 1}}\n  a.A: {derived_from: a.B}\n  a.B: {derived_from: a.A}\n",
        )
        .unwrap();
        let mut diags = Diagnostics::default();
        lib.add_definitions(&doc, &mut diags);
        assert!(lib.is_a(TypeSpace::Policy, "my.Scale", SCALING_POLICY));
        let defaults = lib.property_defaults(TypeSpace::Policy, "my.Scale");
        assert!(defaults["constants"].get("A").is_some());
        assert_eq!(defaults["priority"].value, yaml::Value::Int(100));
        // Scaling.MiCADO requires its bounds and rule, as MiCADO's type does.
        let required = lib.required_properties(TypeSpace::Policy, "my.Scale");
        assert_eq!(required, ["min_instances", "max_instances", "scaling_rule"]);
        lib.check(&mut diags);
        assert_eq!(diags.len(), 2, "{diags:?}");
    }
}

//! The TOSCA type system: the built-in MiCADO library plus the ADT's own
//! `node_types` / `policy_types`, with `derived_from` inheritance of
//! required properties, defaults and metadata.

use indexmap::IndexMap;

use super::diagnostics::{did_you_mean, Diagnostics};
use super::plan::WorkloadKind;
use super::yaml::{self, Node, Pos};

const BUILTIN_TYPES: &str = include_str!("micado_types.yaml");

/// Longest `derived_from` chain followed; deeper means a cycle or abuse.
const MAX_TYPE_DEPTH: usize = 32;

pub const DOCKER: &str = "tosca.nodes.MiCADO.Container.Application.Docker";
pub const VOLUME: &str = "tosca.nodes.MiCADO.Container.Volume";
pub const CONFIG: &str = "tosca.nodes.MiCADO.Container.Config";
pub const EDGE: &str = "tosca.nodes.MiCADO.Edge";
pub const COMPUTE: &str = "tosca.nodes.Compute";
pub const MONITORING_POLICY: &str = "tosca.policies.Monitoring.MiCADO";
pub const SCALING_POLICY: &str = "tosca.policies.Scaling.MiCADO";

#[derive(Clone, Debug)]
pub struct PropertyDef {
    pub required: bool,
    pub default: Option<Node>,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeSpace {
    Node,
    Policy,
}

impl TypeSpace {
    fn section(self) -> &'static str {
        match self {
            TypeSpace::Node => "node_types",
            TypeSpace::Policy => "policy_types",
        }
    }
}

impl TypeLibrary {
    /// The built-in MiCADO library, what `micado_types.yaml` imports resolve to.
    pub fn builtin() -> TypeLibrary {
        let mut lib = TypeLibrary {
            node_types: IndexMap::new(),
            policy_types: IndexMap::new(),
        };
        let doc = yaml::parse(BUILTIN_TYPES).expect("built-in type library is valid YAML");
        let mut diags = Diagnostics::default();
        lib.add_definitions(&doc, &mut diags);
        assert!(diags.is_empty(), "built-in type library: {diags:?}");
        lib
    }

    /// Adds the `node_types` and `policy_types` of an ADT or imported file.
    pub fn add_definitions(&mut self, doc: &Node, diags: &mut Diagnostics) {
        for space in [TypeSpace::Node, TypeSpace::Policy] {
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
        for space in [TypeSpace::Node, TypeSpace::Policy] {
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

    pub fn contains(&self, space: TypeSpace, name: &str) -> bool {
        self.types(space).contains_key(name)
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
        if is(DOCKER) {
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

    /// Properties the type or an ancestor marks `required`.
    pub fn required_properties(&self, space: TypeSpace, name: &str) -> Vec<String> {
        let mut required: Vec<String> = Vec::new();
        for (_, def) in self.ancestry(space, name).iter().rev() {
            for (prop, pd) in &def.properties {
                if pd.required && !required.contains(prop) {
                    required.push(prop.clone());
                }
            }
        }
        required
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
        }
    }

    fn types_mut(&mut self, space: TypeSpace) -> &mut IndexMap<String, TypeDef> {
        match space {
            TypeSpace::Node => &mut self.node_types,
            TypeSpace::Policy => &mut self.policy_types,
        }
    }
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
                        None => false,
                        Some(_) => {
                            diags.push(pd.pos, subject, format!("property '{}': required must be true or false", name.name));
                            false
                        }
                    };
                    properties.insert(
                        name.name.clone(),
                        PropertyDef {
                            required,
                            default: pd.get("default").cloned(),
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
        assert_eq!(
            lib.required_properties(TypeSpace::Node, "tosca.nodes.MiCADO.Container.Application.Docker.Job"),
            vec!["image".to_string()]
        );
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
        assert_eq!(defaults["min_instances"].value, yaml::Value::Int(1));
        lib.check(&mut diags);
        assert_eq!(diags.len(), 2, "{diags:?}");
    }
}

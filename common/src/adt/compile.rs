//! The compiler pass over a whole ADT: document checks, imports, node
//! templates (expansion, hosts, volumes), then policies and instance bounds.

use indexmap::IndexMap;

use super::containers::{build_workload, ContainerTemplate};
use super::diagnostics::{did_you_mean, CompileError, Diagnostics};
use super::inputs::{Inputs, Site};
use super::plan::{FogGroup, Mount, NodeKind, Plan, PlanNode, PolicyKind, TargetKind, VolumeSource};
use super::policies::{compile_policies, PolicyInput, Targets};
use super::props::{describe, Reader};
use super::types::{NodeCategory, TypeLibrary, TypeSpace};
use super::yaml::{self, Key, Node, Pos, Value};

/// Most copies one `instance_count` may make.
pub const MAX_INSTANCE_COUNT: u32 = 1000;

const SUPPORTED_VERSIONS: &[&str] = &["tosca_simple_yaml_1_0", "tosca_simple_yaml_1_2", "tosca_simple_yaml_1_3"];
const BUILTIN_IMPORT: &str = "micado_types.yaml";

const DOCUMENT_KEYS: &[&str] = &[
    "tosca_definitions_version", "description", "metadata", "imports", "repositories",
    "dsl_definitions", "topology_template", "node_types", "policy_types", "data_types",
    "capability_types", "relationship_types", "interface_types", "artifact_types",
    "group_types", "namespace", "template_name", "template_author", "template_version",
];
const TOPOLOGY_KEYS: &[&str] = &[
    "description", "inputs", "node_templates", "policies", "outputs", "groups",
    "relationship_templates", "substitution_mappings", "workflows",
];
const TEMPLATE_KEYS: &[&str] = &[
    "type", "description", "metadata", "directives", "properties", "attributes",
    "requirements", "capabilities", "interfaces", "artifacts", "instance_count",
    "occurrences", "copy",
];

/// Reads a local file named by an `imports` entry.
pub type ImportReader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

#[derive(Default)]
pub struct CompileOptions<'a> {
    /// Submit-time values for inputs, NAME=VALUE.
    pub params: Vec<(String, String)>,
    /// How to read local-file imports; `None` refuses them (ADTs sent to the
    /// master must be self-contained: it reads no files on a user's behalf).
    pub local_imports: Option<ImportReader<'a>>,
    /// Compiling to deploy (the master), not only to check: what is only a
    /// warning at validate time but cannot run (an Edge `public_ip` that is
    /// not an address) is an error.
    pub for_deployment: bool,
}

/// Compiles one ADT document. On failure, every problem found is returned.
pub fn compile(text: &str, options: &CompileOptions) -> Result<Plan, CompileError> {
    let mut diags = Diagnostics::default();
    let plan = match yaml::parse(text) {
        Ok(doc) => Compiler::new(&mut diags).run(&doc, options),
        Err(e) => {
            diags.push(e.pos, "document", format!("invalid YAML: {}", e.message));
            None
        }
    };
    let failed = diags.has_errors();
    let (problems, warnings) = diags.split();
    match plan {
        Some(mut plan) if !failed => {
            plan.warnings = warnings;
            Ok(plan)
        }
        _ => Err(CompileError { problems, warnings }),
    }
}

/// One node template, or one copy of an `instance_count` template.
struct Instance<'a> {
    template: &'a Key,
    /// The plan name: `_` and `.` turned into `-`, `-N` added for copies.
    name: String,
    copy: Option<u32>,
    def: &'a Node,
    tosca_type: String,
    category: NodeCategory,
}

/// `occurrences: [MIN, MAX]` of a template.
#[derive(Clone, Copy)]
struct Bounds {
    min: u32,
    max: Option<u32>,
}

struct Compiler<'d> {
    diags: &'d mut Diagnostics,
    lib: TypeLibrary,
    /// Templates already reported as broken (unknown type, malformed):
    /// requirements and targets that name them are not reported again.
    rejected: Vec<String>,
    version: String,
    for_deployment: bool,
}

/// A pod: the containers it groups and where it runs.
struct PodDef {
    members: Vec<String>,
    hosts: Vec<String>,
}

impl<'d> Compiler<'d> {
    fn new(diags: &'d mut Diagnostics) -> Self {
        Compiler { diags, lib: TypeLibrary::builtin(), rejected: Vec::new(), version: String::new(), for_deployment: false }
    }

    fn run(&mut self, doc: &Node, options: &CompileOptions) -> Option<Plan> {
        let Some(entries) = doc.as_map() else {
            self.diags.push(doc.pos, "document", format!("an ADT must be a YAML mapping, found {}", doc.kind()));
            return None;
        };
        self.for_deployment = options.for_deployment;
        self.check_keys(entries, DOCUMENT_KEYS, "document", "a top-level key");
        self.check_version(doc);
        self.read_imports(doc, options);
        self.lib.add_definitions(doc, self.diags);
        self.lib.check(self.diags);

        let topology = doc.get("topology_template");
        let topo_entries = topology.and_then(Node::as_map).unwrap_or(&[]);
        match topology {
            None => self.diags.push(Pos::UNKNOWN, "document", "missing topology_template"),
            Some(t) if t.as_map().is_none() => {
                self.diags.push(t.pos, "document", format!("topology_template must be a mapping, found {}", t.kind()))
            }
            Some(_) => self.check_keys(topo_entries, TOPOLOGY_KEYS, "document", "a topology_template key"),
        }
        let field = |name: &str| topo_entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v);
        let inputs = Inputs::collect(field("inputs"), &options.params, self.diags);

        let templates = match field("node_templates") {
            Some(n) => n.as_map().unwrap_or_else(|| {
                self.diags.push(n.pos, "document", format!("node_templates must be a mapping of names to templates, found {}", n.kind()));
                &[]
            }),
            None => &[],
        };
        let (instances, bounds) = self.expand(templates, &inputs);
        let mut plan = self.build_nodes(&instances, &bounds, &inputs, doc.get("repositories"));
        plan.description = doc.get("description").and_then(Node::scalar_text);
        plan.inputs = inputs.declared();

        let mut targets = Targets::new();
        for inst in &instances {
            // A pod is scaled through its members.
            let names: Vec<String> = match inst.category {
                NodeCategory::Pod => plan.workloads.iter().filter(|w| w.pod.as_deref() == Some(inst.name.as_str())).map(|w| w.name.clone()).collect(),
                _ => vec![inst.name.clone()],
            };
            targets.entry(inst.template.name.clone()).or_insert_with(|| (inst.category, Vec::new())).1.extend(names);
        }
        if let Some(section) = field("policies") {
            let input = PolicyInput { lib: &self.lib, targets: &targets, rejected: &self.rejected, inputs: &inputs };
            let compiled = compile_policies(section, &input, self.diags);
            plan.policies = compiled.policies;
            plan.constants = compiled.constants;
            plan.queries = compiled.queries;
        }
        self.apply_bounds(&mut plan, &instances, &bounds);
        Some(plan)
    }

    fn check_keys(&mut self, entries: &[(Key, Node)], known: &[&str], subject: &str, what: &str) {
        for (k, _) in entries {
            if !known.contains(&k.name.as_str()) {
                self.diags.push(
                    k.pos,
                    subject,
                    format!("'{}' is not {what} TOSCA knows{}", k.name, did_you_mean(&k.name, known.iter().copied())),
                );
            }
        }
    }

    fn check_version(&mut self, doc: &Node) {
        match doc.get("tosca_definitions_version") {
            None => self.diags.push(
                Pos::UNKNOWN,
                "document",
                format!("missing tosca_definitions_version (one of {})", SUPPORTED_VERSIONS.join(", ")),
            ),
            Some(v) => {
                let text = v.scalar_text().unwrap_or_default();
                self.version = text.clone();
                if !SUPPORTED_VERSIONS.contains(&text.as_str()) {
                    self.diags.push(
                        v.pos,
                        "document",
                        format!("unsupported tosca_definitions_version '{text}' (expected one of {})", SUPPORTED_VERSIONS.join(", ")),
                    );
                }
            }
        }
    }

    /// `micado_types.yaml` (by URL or bare name) is built in; a local file is
    /// read if the caller allows it; anything else is refused.
    fn read_imports(&mut self, doc: &Node, options: &CompileOptions) {
        let Some(imports) = doc.get("imports") else { return };
        let mut r = Reader { subject: "document".into(), diags: self.diags };
        let entries = r.list(imports, "imports").to_vec();
        for entry in &entries {
            let target = match (entry.as_str(), entry.get("file")) {
                (Some(s), _) => Some((s.to_string(), entry.pos)),
                (None, Some(f)) => f.as_str().map(|s| (s.to_string(), f.pos)),
                // The named form: `- name: {file: ...}`.
                (None, None) => entry
                    .as_map()
                    .and_then(|m| m.first())
                    .and_then(|(_, v)| v.get("file"))
                    .and_then(|f| f.as_str().map(|s| (s.to_string(), f.pos))),
            };
            let Some((target, pos)) = target else {
                self.diags.push(entry.pos, "document", "an import must be a file name or URL");
                continue;
            };
            if target.rsplit('/').next() == Some(BUILTIN_IMPORT) {
                continue;
            }
            let refuse = |why: &str| format!("unknown import '{target}': {why}");
            match options.local_imports {
                _ if target.contains("://") => self.diags.push(
                    pos,
                    "document",
                    refuse("only micado_types.yaml is built in, and fogmesh never fetches imports over the network"),
                ),
                None => self.diags.push(
                    pos,
                    "document",
                    refuse("only micado_types.yaml is built in, and ADTs sent to the master must be self-contained (inline the types)"),
                ),
                Some(read) => self.read_local_import(&target, pos, read),
            }
        }
    }

    fn read_local_import(&mut self, target: &str, pos: Pos, read: ImportReader) {
        let text = match read(target) {
            Ok(t) => t,
            Err(e) => {
                self.diags.push(pos, "document", format!("cannot read import '{target}': {e}"));
                return;
            }
        };
        let mut inner = Diagnostics::default();
        match yaml::parse(&text) {
            Ok(types) => self.lib.add_definitions(&types, &mut inner),
            Err(e) => inner.push(e.pos, "document", format!("invalid YAML: {}", e.message)),
        }
        // Report at the import line; the inner position names the place in the imported file.
        for d in inner.iter() {
            self.diags.push(pos, "document", format!("in import '{target}' at {}: {}: {}", d.pos, d.subject, d.message));
        }
    }

    /// Checks each template's shape and type, and expands `instance_count`.
    fn expand<'a>(&mut self, templates: &'a [(Key, Node)], inputs: &Inputs) -> (Vec<Instance<'a>>, IndexMap<String, Bounds>) {
        let mut instances: Vec<Instance> = Vec::new();
        let mut bounds = IndexMap::new();
        for (key, def) in templates {
            let subject = format!("node '{}'", key.name);
            let Some(entries) = def.as_map() else {
                self.diags.push(def.pos, &subject, format!("a node template must be a mapping with a type, found {}", def.kind()));
                self.rejected.push(key.name.clone());
                continue;
            };
            self.check_keys(entries, TEMPLATE_KEYS, &subject, "a node template key");
            let Some(type_node) = def.get("type") else {
                self.diags.push(key.pos, &subject, "missing type");
                self.rejected.push(key.name.clone());
                continue;
            };
            let Some(requested) = type_node.as_str() else {
                self.diags.push(type_node.pos, &subject, format!("type must be a type name, found {}", type_node.kind()));
                self.rejected.push(key.name.clone());
                continue;
            };
            let Some(tosca_type) = self.lib.resolve(TypeSpace::Node, requested, type_node.pos, &subject, self.diags) else {
                self.rejected.push(key.name.clone());
                continue;
            };
            let tosca_type = tosca_type.as_str();
            self.check_interfaces(def, &subject);
            if self.version != "tosca_simple_yaml_1_3" {
                if let Some(k) = entries.iter().map(|(k, _)| k).find(|k| k.name == "instance_count" || k.name == "occurrences") {
                    self.diags.warn(
                        k.pos,
                        &subject,
                        format!("MiCADO accepts {} only in tosca_simple_yaml_1_3 ADTs; fogmesh accepts it in {}", k.name, self.version),
                    );
                }
            }
            let site = Site { subject: &subject, copy: None };
            let mut r = Reader { subject: subject.clone(), diags: self.diags };
            let copies = def
                .get("instance_count")
                .map(|n| inputs.resolve(n, &site, r.diags))
                .and_then(|n| {
                    let count = r.count(&n, "instance_count", MAX_INSTANCE_COUNT)?;
                    if count == 0 {
                        r.problem(&n, "instance_count must be at least 1");
                        return None;
                    }
                    Some(count)
                });
            match def.get("occurrences") {
                // `instance_count` wins: each copy is one instance.
                Some(occ) if copies.is_some() => r.warn(occ, "occurrences is ignored: instance_count sets how many copies there are"),
                Some(occ) => {
                    let occ = inputs.resolve(occ, &site, r.diags);
                    if let Some(b) = read_occurrences(&occ, &mut r) {
                        bounds.insert(key.name.clone(), b);
                    }
                }
                None => {}
            }
            let category = self.lib.node_category(tosca_type);
            let base = key.name.replace(['_', '.'], "-");
            let names: Vec<(String, Option<u32>)> = match copies {
                Some(n) => (1..=n).map(|i| (format!("{base}-{i}"), Some(i))).collect(),
                None => vec![(base, None)],
            };
            for (name, copy) in names {
                if let Some(other) = instances.iter().find(|i| i.name == name) {
                    self.diags.push(
                        key.pos,
                        &subject,
                        format!("its name becomes '{name}', which node '{}' already has ('_' and '.' turn into '-')", other.template.name),
                    );
                    continue;
                }
                instances.push(Instance { template: key, name, copy, def, tosca_type: tosca_type.to_string(), category });
            }
        }
        (instances, bounds)
    }

    fn build_nodes(&mut self, instances: &[Instance], bounds: &IndexMap<String, Bounds>, inputs: &Inputs, repositories: Option<&Node>) -> Plan {
        let mut plan = Plan::default();
        let mut volumes: IndexMap<String, (Option<String>, VolumeSource)> = IndexMap::new();
        let mut containers = Vec::new();

        let mut pods: IndexMap<String, PodDef> = IndexMap::new();
        for inst in instances {
            let subject = format!("node '{}'", inst.name);
            let site = Site { subject: &subject, copy: inst.copy };
            let raw_props = inst.def.get("properties");
            let mut props = raw_props.map(|p| inputs.resolve(p, &site, self.diags)).unwrap_or_else(Node::null);
            let mut r = Reader { subject: subject.clone(), diags: self.diags };
            self.lib.check_properties(TypeSpace::Node, &inst.tosca_type, &props, &mut r);
            warn_placeholders(&props, &mut r);
            self.apply_defaults(inst, &mut props);
            self.check_required(inst, &props);
            if inst.category == NodeCategory::Pod {
                let requirements = inst.def.get("requirements").map(|n| inputs.resolve(n, &site, self.diags));
                let pod = self.read_pod(inst, instances, requirements.as_ref());
                pods.insert(inst.name.clone(), pod);
                continue;
            }
            let mut r = Reader { subject: subject.clone(), diags: self.diags };
            match inst.category {
                NodeCategory::Edge | NodeCategory::Cloud => {
                    if let Some(mut node) = plan_node(&self.lib, inst, &props, bounds, self.for_deployment, &mut r) {
                        node.fog_group = fog_group(&self.lib, inst, &props, instances, &mut r);
                        plan.nodes.push(node);
                    }
                }
                NodeCategory::Volume | NodeCategory::Config => {
                    let path = props.get("path").and_then(|p| r.text(p, "path"));
                    let source = volume_source(inst, &self.lib, &props, &mut r);
                    volumes.insert(inst.name.clone(), (path, source));
                }
                NodeCategory::Container(kind) => containers.push((inst, kind, props, raw_props)),
                NodeCategory::Pod | NodeCategory::Other => {}
            }
        }

        for (inst, kind, props, raw_props) in containers {
            let subject = format!("node '{}'", inst.name);
            let site = Site { subject: &subject, copy: inst.copy };
            let requirements = inst.def.get("requirements").map(|n| inputs.resolve(n, &site, self.diags));
            let (mut hosts, mounts) = self.read_requirements(inst, instances, requirements.as_ref(), &volumes);
            // A pod's members run where the pod runs.
            let pod = pods.iter().find(|(_, p)| p.members.contains(&inst.name));
            if let Some((pod_name, p)) = pod {
                if !hosts.is_empty() && !p.hosts.is_empty() && hosts != p.hosts {
                    self.diags.push(inst.template.pos, &subject, format!("it is a member of pod '{pod_name}', which names other hosts; a pod runs on one node"));
                }
                if hosts.is_empty() {
                    hosts = p.hosts.clone();
                }
            }
            let kubernetes = inst.def.get("interfaces").and_then(|i| i.get("Kubernetes")).map(Node::to_json);
            let artifact_image = artifact_image(inst.def, repositories);
            let mut r = Reader { subject, diags: self.diags };
            let template = ContainerTemplate {
                name: inst.name.clone(),
                template: inst.template.name.clone(),
                kind,
                properties: &props,
                raw_properties: raw_props,
                inputs,
                hosts,
                pod: pod.map(|(name, _)| name.clone()),
                volumes: mounts,
                kubernetes,
                artifact_image,
                pos: inst.template.pos,
            };
            if let Some(w) = build_workload(template, &mut r) {
                plan.workloads.push(w);
            }
        }
        plan
    }

    /// Type defaults for properties the template does not set.
    fn apply_defaults(&mut self, inst: &Instance, props: &mut Node) {
        let defaults = self.lib.property_defaults(TypeSpace::Node, &inst.tosca_type);
        if props.is_null() {
            *props = Node::new(Value::Map(Vec::new()), inst.template.pos);
        }
        match &mut props.value {
            Value::Map(entries) => {
                for (name, default) in defaults {
                    if !entries.iter().any(|(k, _)| k.name == name) {
                        entries.push((Key { name, pos: Pos::UNKNOWN }, default));
                    }
                }
            }
            _ => self.diags.push(props.pos, format!("node '{}'", inst.name), format!("properties must be a mapping, found {}", props.kind())),
        }
    }

    fn check_required(&mut self, inst: &Instance, props: &Node) {
        for required in self.lib.required_properties(TypeSpace::Node, &inst.tosca_type) {
            if props.get(&required).is_none_or(Node::is_null) {
                self.diags.push(
                    inst.template.pos,
                    format!("node '{}'", inst.name),
                    format!("missing required property '{required}' (required by {})", inst.tosca_type),
                );
            }
        }
    }

    /// `host` and `volume` requirements of a container instance.
    fn read_requirements(
        &mut self,
        inst: &Instance,
        instances: &[Instance],
        requirements: Option<&Node>,
        volumes: &IndexMap<String, (Option<String>, VolumeSource)>,
    ) -> (Vec<String>, Vec<Mount>) {
        let mut r = Reader { subject: format!("node '{}'", inst.name), diags: self.diags };
        let mut hosts: Vec<String> = Vec::new();
        let mut mounts = Vec::new();
        let Some(requirements) = requirements else { return (hosts, mounts) };
        for req in r.list(requirements, "requirements") {
            let Some([(req_name, target)]) = req.as_map() else {
                r.problem(req, "each requirement must be a mapping with one key, like '- host: NODE'");
                continue;
            };
            if req_name.name != "host" && req_name.name != "volume" {
                continue; // Other requirements (dependencies, services) do not place anything.
            }
            let (node_ref, location) = match &target.value {
                Value::Map(_) => (
                    target.get("node"),
                    target.get("relationship").and_then(|rel| rel.get("properties")).and_then(|p| p.get("location")),
                ),
                _ => (Some(target), None),
            };
            let Some(node_ref) = node_ref else {
                r.problem(target, format!("requirement '{}' needs a node", req_name.name));
                continue;
            };
            let Some(wanted) = r.text(node_ref, &format!("requirement '{}'", req_name.name)) else { continue };
            if self.rejected.contains(&wanted) {
                continue; // its own problem was reported
            }
            let Some(chosen) = pick_instance(instances, &wanted, inst.copy) else {
                let known = unique_templates(instances);
                let message = if known.contains(&wanted.as_str()) {
                    format!("requirement '{}' names '{wanted}', which has instance_count copies; only a template with as many copies can use it", req_name.name)
                } else {
                    format!(
                        "requirement '{}' names '{wanted}', which is not a node template in this ADT{}",
                        req_name.name,
                        did_you_mean(&wanted, known.iter().copied())
                    )
                };
                r.problem(node_ref, message);
                continue;
            };
            if req_name.name == "host" {
                if !matches!(chosen.category, NodeCategory::Edge | NodeCategory::Cloud) {
                    r.problem(node_ref, format!("host '{wanted}' must be an Edge or Compute node, but it is a {}", chosen.tosca_type));
                } else if !hosts.contains(&chosen.name) {
                    // Several hosts: it may run on any of them.
                    hosts.push(chosen.name.clone());
                }
                continue;
            }
            let Some((path, source)) = volumes.get(&chosen.name) else {
                if !matches!(chosen.category, NodeCategory::Volume | NodeCategory::Config) {
                    r.problem(node_ref, format!("volume '{wanted}' must be a Volume or Config node, but it is a {}", chosen.tosca_type));
                }
                continue;
            };
            let mount_path = match location {
                Some(l) => r.text(l, "location"),
                None => Some(path.clone().unwrap_or_else(|| format!("/mnt/volumes/{}", chosen.name))),
            };
            if let Some(mount_path) = mount_path {
                if !mount_path.starts_with('/') {
                    r.problem(location.unwrap_or(node_ref), format!("mount path \"{mount_path}\" must be absolute"));
                    continue;
                }
                mounts.push(Mount { volume: chosen.name.clone(), mount_path, source: source.clone() });
            }
        }
        (hosts, mounts)
    }

    /// A pod's `container` members and its hosts.
    fn read_pod(&mut self, inst: &Instance, instances: &[Instance], requirements: Option<&Node>) -> PodDef {
        let mut r = Reader { subject: format!("node '{}'", inst.name), diags: self.diags };
        let mut pod = PodDef { members: Vec::new(), hosts: Vec::new() };
        let Some(requirements) = requirements else { return pod };
        for req in r.list(requirements, "requirements") {
            let Some([(req_name, target)]) = req.as_map() else {
                r.problem(req, "each requirement must be a mapping with one key, like '- container: NODE'");
                continue;
            };
            if req_name.name != "container" && req_name.name != "host" {
                continue;
            }
            let node_ref = if target.as_map().is_some() { target.get("node") } else { Some(target) };
            let Some(wanted) = node_ref.and_then(|n| r.text(n, &format!("requirement '{}'", req_name.name))) else { continue };
            if self.rejected.contains(&wanted) {
                continue;
            }
            let Some(chosen) = pick_instance(instances, &wanted, inst.copy) else {
                r.problem(
                    node_ref.unwrap_or(target),
                    format!("requirement '{}' names '{wanted}', which is not a node template in this ADT{}", req_name.name, did_you_mean(&wanted, unique_templates(instances))),
                );
                continue;
            };
            match (req_name.name.as_str(), chosen.category) {
                ("container", NodeCategory::Container(_)) => pod.members.push(chosen.name.clone()),
                ("container", _) => r.problem(node_ref.unwrap_or(target), format!("pod member '{wanted}' must be a container, but it is a {}", chosen.tosca_type)),
                (_, NodeCategory::Edge | NodeCategory::Cloud) => pod.hosts.push(chosen.name.clone()),
                _ => r.problem(node_ref.unwrap_or(target), format!("host '{wanted}' must be an Edge or Compute node, but it is a {}", chosen.tosca_type)),
            }
        }
        if pod.members.is_empty() {
            r.warn(inst.def, "this pod has no 'container' requirements, so it runs nothing");
        }
        pod
    }

    /// MiCADO's interfaces (Kubernetes, Occopus, Terraform, Swarm) have one
    /// operation, `create`; anything else is refused as MiCADO refuses it.
    fn check_interfaces(&mut self, def: &Node, subject: &str) {
        let Some(interfaces) = def.get("interfaces").and_then(Node::as_map) else { return };
        for (name, body) in interfaces {
            if !matches!(name.name.as_str(), "Kubernetes" | "Occopus" | "Terraform" | "Swarm") {
                continue;
            }
            for (op, _) in body.as_map().unwrap_or(&[]) {
                if op.name != "create" {
                    self.diags.push(op.pos, subject, format!("interface '{}' has no operation '{}'; MiCADO's interfaces have only 'create'", name.name, op.name));
                }
            }
        }
    }

    /// Instance bounds and replicas: `occurrences` first, then a scaling
    /// policy that targets the workload or node set, else exactly one.
    fn apply_bounds(&mut self, plan: &mut Plan, instances: &[Instance], bounds: &IndexMap<String, Bounds>) {
        let mut scaled_by: IndexMap<String, String> = IndexMap::new();
        for policy in plan.policies.iter().filter(|p| p.kind == PolicyKind::Scaling) {
            for target in &policy.targets {
                if let Some(first) = scaled_by.get(target) {
                    self.diags.warn(
                        Pos::UNKNOWN,
                        format!("policy '{}' (#{})", policy.name, policy.index),
                        format!("'{target}' is also scaled by policy '{first}'; the first one sets its instance bounds"),
                    );
                } else {
                    scaled_by.insert(target.clone(), policy.name.clone());
                }
            }
        }
        let policy_bounds = |name: &str, plan_policies: &[super::plan::Policy], kind: TargetKind| {
            let policy = plan_policies.iter().find(|p| p.target_kind == kind && p.targets.iter().any(|t| t == name))?;
            let min = policy.min_instances.unwrap_or(1);
            Some(Bounds { min, max: policy.max_instances.or(Some(min.max(1))) })
        };
        for w in &mut plan.workloads {
            // Members of a pod scale with the pod.
            let owner = w.pod.clone().unwrap_or_else(|| w.name.clone());
            let occurrences = instances.iter().find(|i| i.name == owner).and_then(|i| bounds.get(&i.template.name)).copied();
            let b = occurrences
                .or_else(|| policy_bounds(&w.name, &plan.policies, TargetKind::Workloads))
                .unwrap_or(Bounds { min: 1, max: Some(1) });
            w.min_instances = b.min;
            w.max_instances = b.max;
            w.replicas = b.min;
        }
        for n in plan.nodes.iter_mut().filter(|n| n.kind == NodeKind::Cloud) {
            let has_occurrences = instances.iter().any(|i| i.name == n.name && bounds.contains_key(&i.template.name));
            if !has_occurrences {
                if let Some(b) = policy_bounds(&n.name, &plan.policies, TargetKind::Nodes) {
                    n.min_instances = b.min;
                    n.max_instances = b.max;
                }
            }
        }
    }
}

fn plan_node(lib: &TypeLibrary, inst: &Instance, props: &Node, bounds: &IndexMap<String, Bounds>, for_deployment: bool, r: &mut Reader) -> Option<PlanNode> {
    let b = bounds.get(&inst.template.name).copied().unwrap_or(Bounds { min: 1, max: Some(1) });
    let text = |field: &str, r: &mut Reader| props.get(field).filter(|n| !n.is_null()).and_then(|n| r.text(n, field));
    if inst.category == NodeCategory::Edge {
        let ip_node = props.get("public_ip")?;
        if ip_node.is_invalid() || ip_node.is_null() {
            return None;
        }
        // MiCADO takes any text (its placeholders too) and fails at deploy time.
        let ip = ip_node.scalar_text().unwrap_or_else(|| serde_json::to_string(&ip_node.to_json()).unwrap_or_default());
        if ip.parse::<std::net::IpAddr>().is_err() {
            let message = format!("public_ip {} is not an IP address; a fog node registers with its address", describe(ip_node));
            if for_deployment {
                r.problem(ip_node, message);
                return None;
            }
            r.warn(ip_node, format!("{message} (a placeholder? deploying this ADT fails until it is one)"));
        }
        return Some(PlanNode {
            name: inst.name.clone(),
            kind: NodeKind::Edge,
            tosca_type: inst.tosca_type.clone(),
            public_ip: Some(ip),
            ssh_username: text("ssh_username", r),
            cloud: None,
            provisioner: None,
            min_instances: 1,
            max_instances: Some(1),
            properties: redact_key(props.to_json(), "ssh_private_key"),
            fog_group: None,
            scaled_to: None,
            dropped: Vec::new(),
        });
    }
    let provisioner = inst
        .def
        .get("interfaces")
        .and_then(Node::as_map)
        .and_then(|m| m.iter().map(|(k, _)| k.name.to_ascii_lowercase()).find(|k| k == "occopus" || k == "terraform"));
    Some(PlanNode {
        name: inst.name.clone(),
        kind: NodeKind::Cloud,
        tosca_type: inst.tosca_type.clone(),
        public_ip: None,
        ssh_username: None,
        cloud: lib.metadata(TypeSpace::Node, &inst.tosca_type, "cloud"),
        provisioner,
        min_instances: b.min,
        max_instances: b.max,
        properties: props.to_json(),
        fog_group: None,
        scaled_to: None,
        dropped: Vec::new(),
    })
}

/// The members of an `Edge.Group`: `selector` labels and/or `members`
/// (Edge templates of the ADT).
fn fog_group(lib: &TypeLibrary, inst: &Instance, props: &Node, instances: &[Instance], r: &mut Reader) -> Option<FogGroup> {
    if !lib.is_a(TypeSpace::Node, &inst.tosca_type, "tosca.nodes.MiCADO.Edge.Group") {
        return None;
    }
    let mut group = FogGroup::default();
    if let Some(map) = props.get("selector").and_then(Node::as_map) {
        for (k, v) in map {
            if let Some(text) = r.text(v, "selector") {
                group.selector.insert(k.name.clone(), text);
            }
        }
    }
    if let Some(list) = props.get("members").and_then(Node::as_seq) {
        for m in list {
            let Some(name) = r.text(m, "members") else { continue };
            let edges: Vec<&Instance> = instances.iter().filter(|i| i.template.name == name && i.category == NodeCategory::Edge).collect();
            if edges.is_empty() {
                r.problem(m, format!("member '{name}' is not an Edge node template of this ADT"));
            }
            group.members.extend(edges.iter().map(|i| i.name.clone()));
        }
    }
    if group.selector.is_empty() && group.members.is_empty() {
        r.problem(inst.def, "an Edge.Group needs a 'selector' (node labels) or 'members' (Edge templates) to know its nodes");
    }
    Some(group)
}

/// The instance a requirement means: the template itself, or for a template
/// with copies, the copy with the same number as the requiring instance.
fn pick_instance<'i, 'a>(instances: &'i [Instance<'a>], template: &str, copy: Option<u32>) -> Option<&'i Instance<'a>> {
    let mut of_template = instances.iter().filter(|i| i.template.name == template).peekable();
    match of_template.peek()?.copy {
        None => of_template.next(),
        Some(_) => of_template.find(|i| i.copy.is_some() && i.copy == copy),
    }
}

fn unique_templates<'a>(instances: &'a [Instance]) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for i in instances {
        if !names.contains(&i.template.name.as_str()) {
            names.push(&i.template.name);
        }
    }
    names
}

fn read_occurrences(node: &Node, r: &mut Reader) -> Option<Bounds> {
    let items = r.list(node, "occurrences");
    let [min_node, max_node] = items else {
        r.problem(node, "occurrences must be [MIN, MAX], MAX a number or UNBOUNDED");
        return None;
    };
    let min = r.count(min_node, "occurrences minimum", MAX_INSTANCE_COUNT)?;
    let max = match max_node.as_str() {
        Some("UNBOUNDED") => None,
        _ => Some(r.count(max_node, "occurrences maximum", u32::MAX)?),
    };
    if max.is_some_and(|m| m < min) {
        r.problem(node, format!("occurrences minimum {min} is larger than the maximum {}", max.unwrap_or_default()));
        return None;
    }
    Some(Bounds { min, max })
}

fn volume_source(inst: &Instance, lib: &TypeLibrary, props: &Node, r: &mut Reader) -> VolumeSource {
    let is = |suffix: &str| lib.is_a(TypeSpace::Node, &inst.tosca_type, &format!("tosca.nodes.MiCADO.Container.{suffix}"));
    let text = |field: &str, r: &mut Reader| props.get(field).and_then(|n| r.text(n, field)).unwrap_or_default();
    if is("Volume.HostPath") {
        let path = text("path", r);
        if !path.is_empty() && !path.starts_with('/') {
            if let Some(p) = props.get("path") {
                r.problem(p, format!("host path {} must be absolute", describe(p)));
            }
        }
        VolumeSource::HostPath { path }
    } else if is("Volume.EmptyDir") {
        VolumeSource::EmptyDir
    } else if is("Volume.NFS") {
        VolumeSource::Nfs { server: text("server", r), path: text("path", r) }
    } else if is("Config") {
        // MiCADO takes any value; a list here is a placeholder in published ADTs.
        let data = props
            .get("data")
            .map(|d| {
                r.mapping(d, "data")
                    .iter()
                    .map(|(k, v)| {
                        let text = v.scalar_text().unwrap_or_else(|| {
                            r.warn(v, format!("data '{}' is not text (a placeholder?); it is used as written", k.name));
                            serde_json::to_string(&v.to_json()).unwrap_or_default()
                        });
                        (k.name.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        VolumeSource::ConfigMap { data }
    } else {
        VolumeSource::Generic
    }
}

/// `artifacts: {image: {file, repository}}` (or `image: FILE`): the image,
/// with the repository's address in front unless it is Docker Hub.
fn artifact_image(def: &Node, repositories: Option<&Node>) -> Option<String> {
    let image = def.get("artifacts")?.get("image")?;
    let file = match image.get("file") {
        Some(f) => f.scalar_text()?,
        None => image.scalar_text()?,
    };
    let Some(repo) = image.get("repository").and_then(Node::scalar_text) else { return Some(file) };
    let url = repositories.and_then(|r| r.get(&repo)).and_then(|u| u.get("url").or(Some(u))).and_then(Node::scalar_text).unwrap_or(repo);
    let host = url.split("://").last().unwrap_or(&url).trim_end_matches('/').to_string();
    let normalized = host.to_ascii_lowercase().replace(['.', '_', '-'], "");
    if normalized.contains("dockerhub") || normalized.contains("hubdockercom") || normalized.contains("dockerio") || host.is_empty() {
        Some(file)
    } else {
        Some(format!("{host}/{file}"))
    }
}

/// Text that is evidently a placeholder in a published ADT
/// (`ADD_YOUR_ID_HERE`, `<RESOURCE_GROUP_NAME>`, `YOUR_KEY`, ...).
fn is_placeholder(text: &str) -> bool {
    let t = text.trim();
    // `<NAME_IN_CAPITALS>` anywhere in the text.
    let angle = t.split('<').skip(1).any(|rest| {
        rest.split_once('>').is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
    });
    angle || t.contains("ADD_YOUR") || t.contains("YOUR_") || t.contains("_HERE") || t == "000.000.000.000"
}

/// A warning per property that holds a placeholder; MiCADO validates
/// these and fails later, fogmesh says so at once.
fn warn_placeholders(props: &Node, r: &mut Reader) {
    fn first_placeholder(node: &Node) -> Option<String> {
        match &node.value {
            Value::Str(s) if is_placeholder(s) => Some(s.clone()),
            Value::Seq(items) => items.iter().find_map(first_placeholder),
            Value::Map(entries) => entries.iter().find_map(|(_, v)| first_placeholder(v)),
            _ => None,
        }
    }
    for (key, value) in props.as_map().unwrap_or(&[]) {
        if key.name == "public_ip" {
            continue; // checked as an address
        }
        if let Some(text) = first_placeholder(value) {
            r.warn(value, format!("property '{}' holds a placeholder (\"{text}\"); replace it before deploying", key.name));
        }
    }
}

fn redact_key(mut json: serde_json::Value, key: &str) -> serde_json::Value {
    if let Some(v) = json.get_mut(key) {
        *v = serde_json::Value::String("<secret>".into());
    }
    json
}

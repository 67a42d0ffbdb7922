//! Container node templates -> plan workloads: image, command, env, ports,
//! resources, probes. Hosts, volumes and instance bounds are decided by the
//! compiler, which sees the whole topology.

use std::collections::BTreeSet;

use indexmap::IndexMap;

use super::inputs::Inputs;
use super::plan::{Mount, Port, Protocol, Resources, Workload, WorkloadKind};
use super::props::{describe, Reader};
use super::quantity::{parse_cpu_millis, parse_memory_bytes};
use super::yaml::{Node, Value};

/// What the compiler already knows about one container instance.
pub struct ContainerTemplate<'a> {
    pub name: String,
    pub template: String,
    pub kind: WorkloadKind,
    /// Properties with inputs resolved and type defaults applied.
    pub properties: &'a Node,
    /// The properties as written, to see which values are secret inputs.
    pub raw_properties: Option<&'a Node>,
    pub inputs: &'a Inputs,
    pub hosts: Vec<String>,
    pub pod: Option<String>,
    pub volumes: Vec<Mount>,
    pub kubernetes: Option<serde_json::Value>,
    /// The image named by `artifacts.image`, already joined with its repository.
    pub artifact_image: Option<String>,
    /// Where the template starts, for problems of the whole template.
    pub pos: super::yaml::Pos,
}

pub fn build_workload(t: ContainerTemplate, r: &mut Reader) -> Option<Workload> {
    let props = t.properties;
    let image = match props.get("image").filter(|i| !i.is_null()) {
        Some(i) => r.text(i, "image"),
        None => match t.artifact_image {
            Some(image) => Some(image),
            None => {
                r.problem_at(t.pos, "no image: set properties.image, or artifacts.image with its file");
                None
            }
        },
    };
    let command = props
        .get("command")
        .or_else(|| props.get("entrypoint"))
        .map(|c| r.text_list(c, "command"))
        .unwrap_or_default();
    let args = props.get("args").map(|a| r.text_list(a, "args")).unwrap_or_default();
    let (env, secret_env) = read_env(props, t.raw_properties, t.inputs, r);
    let ports = props
        .get("ports")
        .map(|p| r.list(p, "ports").iter().filter_map(|e| read_port(e, r)).collect())
        .unwrap_or_default();
    let resources = props.get("resources").map(|n| read_resources(n, r)).unwrap_or_default();
    let privileged = props
        .get("securityContext")
        .and_then(|s| s.get("privileged"))
        .or_else(|| props.get("privileged"))
        .and_then(|p| r.boolean(p, "privileged"))
        .unwrap_or(false);
    let working_dir = props.get("workingDir").and_then(|w| r.text(w, "workingDir"));
    let host_network = props.get("hostNetwork").and_then(|h| r.boolean(h, "hostNetwork")).unwrap_or(false);
    let liveness_probe = props.get("livenessProbe").map(|p| read_probe(p, "livenessProbe", r));
    let readiness_probe = props.get("readinessProbe").map(|p| read_probe(p, "readinessProbe", r));
    let labels = props.get("labels").map(|l| r.text_map(l, "labels")).unwrap_or_default();

    Some(Workload {
        name: t.name,
        template: t.template,
        kind: t.kind,
        image: image?,
        command,
        args,
        env,
        secret_env,
        ports,
        resources,
        volumes: t.volumes,
        privileged,
        working_dir,
        labels,
        host_network,
        liveness_probe,
        readiness_probe,
        host: t.hosts.first().cloned(),
        hosts: t.hosts,
        pod: t.pod,
        // Bounds and replicas are set by the compiler once policies are read.
        min_instances: 1,
        max_instances: Some(1),
        replicas: 1,
        kubernetes: t.kubernetes,
    })
}

/// A probe as written (kept as JSON in the plan), after checking that the
/// agent can run it.
fn read_probe(node: &Node, what: &str, r: &mut Reader) -> serde_json::Value {
    let json = node.to_json();
    if let Err(why) = super::probes::parse_probe(&json) {
        r.problem(node, format!("{what} {why}"));
    }
    json
}

/// `env: [{name, value}]`, or the Compose-style `environment` as such a list,
/// a mapping, or `NAME=value` strings. Entries with `valueFrom` refer to
/// Kubernetes objects and are left to the cloud tier.
fn read_env(
    props: &Node,
    raw_props: Option<&Node>,
    inputs: &Inputs,
    r: &mut Reader,
) -> (IndexMap<String, String>, BTreeSet<String>) {
    let mut env = IndexMap::new();
    let mut secret = BTreeSet::new();
    for field in ["env", "environment"] {
        let Some(node) = props.get(field) else { continue };
        let raw = raw_props.and_then(|p| p.get(field));
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let raw_item = raw.and_then(Node::as_seq).and_then(|s| s.get(i));
                    if let Some(text) = item.as_str() {
                        match text.split_once('=') {
                            Some((k, v)) => {
                                env.insert(k.to_string(), v.to_string());
                            }
                            None => r.problem(item, format!("{field} entry \"{text}\" must be NAME=value")),
                        }
                        continue;
                    }
                    let Some(name) = item.get("name").and_then(|n| r.text(n, "env name")) else {
                        if item.as_map().is_some() {
                            r.problem(item, format!("{field} entry needs a name"));
                        } else {
                            r.problem(item, format!("{field} entry must be {{name, value}} or NAME=value, found {}", item.kind()));
                        }
                        continue;
                    };
                    if item.get("valueFrom").is_some() {
                        continue;
                    }
                    let value = match item.get("value") {
                        Some(v) if v.is_null() => String::new(),
                        Some(v) => r.text(v, &format!("env '{name}'")).unwrap_or_default(),
                        None => String::new(),
                    };
                    if raw_item.and_then(|ri| ri.get("value")).is_some_and(|v| inputs.is_secret_call(v)) {
                        secret.insert(name.clone());
                    }
                    env.insert(name, value);
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let value = if v.is_null() { Some(String::new()) } else { r.text(v, &format!("env '{}'", k.name)) };
                    if raw.and_then(|m| m.get(&k.name)).is_some_and(|v| inputs.is_secret_call(v)) {
                        secret.insert(k.name.clone());
                    }
                    env.insert(k.name.clone(), value.unwrap_or_default());
                }
            }
            Value::Null => {}
            _ => r.problem(node, format!("{field} must be a list of {{name, value}} or a mapping, found {}", node.kind())),
        }
    }
    (env, secret)
}

/// One `ports` entry. The container side is `containerPort`, else
/// `targetPort`, else `port`; `hostPort` publishes it on the node.
fn read_port(entry: &Node, r: &mut Reader) -> Option<Port> {
    if entry.as_map().is_none() {
        // Compose-style "8080:80" or a bare number.
        if let Some(text) = entry.scalar_text() {
            return read_short_port(entry, &text, r);
        }
        r.problem(entry, format!("a ports entry must be a mapping like {{containerPort: 80}}, found {}", entry.kind()));
        return None;
    }
    let field_port = |name: &str, r: &mut Reader| entry.get(name).map(|n| r.port(n));
    let container = field_port("containerPort", r);
    let target = field_port("targetPort", r).or_else(|| field_port("target", r));
    let service = field_port("port", r);
    // Compose: `published` is the port on the host.
    let host = field_port("hostPort", r).or_else(|| field_port("published", r));
    let node_port = field_port("nodePort", r);
    let protocol = match entry.get("protocol") {
        None => Some(Protocol::Tcp),
        Some(p) => match p.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("tcp") => Some(Protocol::Tcp),
            Some("udp") => Some(Protocol::Udp),
            _ => {
                r.problem(p, format!("protocol must be TCP or UDP, found {}", describe(p)));
                None
            }
        },
    };
    let Some(container_port) = container.or(target).or(service) else {
        r.problem(entry, "a ports entry needs containerPort, targetPort, target or port");
        return None;
    };
    // A field that was present but invalid has been reported already.
    Some(Port {
        container_port: container_port?,
        host_port: host.flatten(),
        protocol: protocol?,
        name: entry.get("name").and_then(|n| r.text(n, "port name")),
        service_port: service.flatten(),
        node_port: node_port.flatten(),
        service_type: entry.get("type").and_then(|n| r.text(n, "port type")),
    })
}

fn read_short_port(entry: &Node, text: &str, r: &mut Reader) -> Option<Port> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, "udp")) => (s, Protocol::Udp),
        Some((s, "tcp")) => (s, Protocol::Tcp),
        _ => (text, Protocol::Tcp),
    };
    let number = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
    let (host, container) = match spec.split_once(':') {
        Some((h, c)) => (number(h).map(Some), number(c)),
        None => (Some(None), number(spec)),
    };
    match (host, container) {
        (Some(host_port), Some(container_port)) => {
            r.warn(entry, format!("MiCADO does not accept a port written as text; fogmesh reads \"{text}\", but {{containerPort: ..., hostPort: ...}} works in both"));
            Some(Port {
            container_port,
            host_port,
            protocol,
            name: None,
            service_port: None,
            node_port: None,
            service_type: None,
            })
        }
        _ => {
            r.problem(entry, format!("cannot read port \"{text}\": expected PORT, HOST:CONTAINER or either with /udp, each 1-65535"));
            None
        }
    }
}

fn read_resources(node: &Node, r: &mut Reader) -> Resources {
    let mut res = Resources::default();
    for (section, cpu_slot, mem_slot) in [
        ("requests", &mut res.cpu_request_millis, &mut res.memory_request_bytes),
        ("limits", &mut res.cpu_limit_millis, &mut res.memory_limit_bytes),
    ] {
        let Some(sec) = node.get(section) else { continue };
        if let Some(cpu) = sec.get("cpu") {
            *cpu_slot = cpu.scalar_text().and_then(|t| parse_cpu_millis(&t));
            if cpu_slot.is_none() {
                r.problem(
                    cpu,
                    format!("cannot parse {} as a CPU quantity (expected cores like 1.5 or millicores like 900m)", describe(cpu)),
                );
            }
        }
        if let Some(mem) = sec.get("memory") {
            *mem_slot = mem.scalar_text().and_then(|t| parse_memory_bytes(&t));
            if mem_slot.is_none() {
                r.problem(
                    mem,
                    format!("cannot parse {} as a memory quantity (expected bytes like 256Mi, 1G or 1048576)", describe(mem)),
                );
            }
        }
    }
    res
}

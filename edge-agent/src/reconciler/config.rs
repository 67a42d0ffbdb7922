//! Pure translation of a [`ContainerSpec`] into what Docker needs: names,
//! labels, the create request, and the files its mounts need on the node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use fogmesh_common::wire::{ContainerSpec, MountSource};
use fogmesh_common::pki::sha256_hex;

use super::RuntimeError;

/// Node that owns the container; the only filter the reconciler lists by.
pub const LABEL_NODE: &str = "fogmesh.node";
/// The app's id (unique); `fogmesh.app-name` carries its name for people.
pub const LABEL_APP: &str = "fogmesh.app";
pub const LABEL_APP_NAME: &str = "fogmesh.app-name";
pub const LABEL_WORKLOAD: &str = "fogmesh.workload";
pub const LABEL_REPLICA: &str = "fogmesh.replica";
/// `ContainerSpec::name`, the key that matches containers to specs.
pub const LABEL_NAME: &str = "fogmesh.name";
/// Hash of the spec the container was made from; a change means replace.
pub const LABEL_SPEC: &str = "fogmesh.spec";
/// Host ports the container publishes (`8080/tcp,53/udp`), or `host` for
/// host networking: whether an old and a new version can run side by side.
pub const LABEL_HOST_PORTS: &str = "fogmesh.host-ports";

/// Maps `raw` onto `[a-zA-Z0-9_.-]`; when anything had to change, a short
/// hash of the original is appended so two names never collapse into one.
fn sanitise(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .collect();
    if clean == raw && !clean.is_empty() && clean != "." && clean != ".." {
        clean
    } else {
        format!("{clean}-{}", &sha256_hex(raw.as_bytes())[..8])
    }
}

/// Docker name of one version of a spec's container, readable and unique:
/// `fm-NODE-APP-WORKLOAD-REPLICA-HASH8`. The spec hash in the name lets an
/// old and a new version exist side by side during an update.
pub fn container_name(node: &str, spec: &ContainerSpec, hash: &str) -> String {
    let short = hash.get(..8).unwrap_or(hash);
    sanitise(&format!("fm-{node}-{}-{}-{}-{short}", spec.app_name, spec.workload, spec.replica))
}

/// The `fogmesh.host-ports` label value of a spec.
pub fn host_ports_label(spec: &ContainerSpec) -> String {
    if spec.host_network {
        return "host".into();
    }
    let mut ports: Vec<String> = spec.host_ports().iter().map(|(p, proto)| format!("{p}/{}", proto.as_str())).collect();
    ports.sort();
    ports.join(",")
}

/// Whether two versions with these `fogmesh.host-ports` labels cannot run
/// at the same time on one node.
pub fn host_ports_clash(a: &str, b: &str) -> bool {
    if a == "host" || b == "host" {
        return true;
    }
    a.split(',').filter(|p| !p.is_empty()).any(|p| b.split(',').any(|q| q == p))
}

/// Folder with the config-map files of one version of a spec, one
/// sub-folder per mount index. Per version, so an update never rewrites
/// the files under the old version while it still runs.
pub fn configmap_dir(data_dir: &Path, spec_name: &str, hash: &str) -> PathBuf {
    data_dir.join("configmaps").join(sanitise(spec_name)).join(hash.get(..16).unwrap_or(hash))
}

/// `image` with an explicit tag: without one, the pull API fetches every tag.
pub fn image_with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

fn io_error(context: String, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io { context, source }
}

/// Creates host folders and writes config-map files, returning the Docker
/// mounts. Called only right before a container is created, so the files of
/// a running container are never rewritten under it.
pub fn prepare_mounts(spec: &ContainerSpec, hash: &str, data_dir: &Path) -> Result<Vec<Mount>, RuntimeError> {
    let cm_root = configmap_dir(data_dir, &spec.name, hash);
    // Stale files of an older version of the spec must not show up.
    match std::fs::remove_dir_all(&cm_root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("clear config-map folder {}", cm_root.display()), e)),
    }
    let mut mounts = Vec::with_capacity(spec.mounts.len());
    for (index, m) in spec.mounts.iter().enumerate() {
        if !m.target.starts_with('/') {
            return Err(RuntimeError::Invalid(format!(
                "mount target {:?} is not an absolute path",
                m.target
            )));
        }
        let target = Some(m.target.clone());
        let mount = match &m.source {
            MountSource::HostPath(path) => {
                if !path.starts_with('/') {
                    return Err(RuntimeError::Invalid(format!(
                        "host path {path:?} for mount {} is not absolute",
                        m.target
                    )));
                }
                std::fs::create_dir_all(path).map_err(|e| {
                    io_error(format!("create host directory {path} for mount {}", m.target), e)
                })?;
                Mount { typ: Some(MountType::BIND), source: Some(path.clone()), target, ..Default::default() }
            }
            // No source: Docker makes an anonymous volume, removed with the container.
            MountSource::EmptyDir => Mount { typ: Some(MountType::VOLUME), target, ..Default::default() },
            MountSource::ConfigMap(files) => {
                let dir = cm_root.join(index.to_string());
                std::fs::create_dir_all(&dir)
                    .map_err(|e| io_error(format!("create config-map folder {}", dir.display()), e))?;
                for (file, content) in files {
                    if file.is_empty() || file == "." || file == ".." || file.contains(['/', '\\', '\0']) {
                        return Err(RuntimeError::Invalid(format!(
                            "config-map file name {file:?} for mount {} is not a plain file name",
                            m.target
                        )));
                    }
                    let path = dir.join(file);
                    std::fs::write(&path, content)
                        .map_err(|e| io_error(format!("write config-map file {}", path.display()), e))?;
                }
                Mount {
                    typ: Some(MountType::BIND),
                    source: Some(dir.to_string_lossy().into_owned()),
                    target,
                    read_only: Some(true),
                    ..Default::default()
                }
            }
            MountSource::Nfs { server, path } => {
                // A comma would smuggle extra mount options into `o`.
                if server.is_empty() || server.contains([',', '=']) || path.contains(',') {
                    return Err(RuntimeError::Invalid(format!(
                        "NFS source {server}:{path} for mount {} is not valid",
                        m.target
                    )));
                }
                let options = HashMap::from([
                    ("type".to_string(), "nfs".to_string()),
                    ("o".to_string(), format!("addr={server},rw")),
                    ("device".to_string(), format!(":{path}")),
                ]);
                Mount {
                    typ: Some(MountType::VOLUME),
                    target,
                    volume_options: Some(MountVolumeOptions {
                        driver_config: Some(MountVolumeOptionsDriverConfig {
                            name: Some("local".to_string()),
                            options: Some(options),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }
        };
        mounts.push(mount);
    }
    Ok(mounts)
}

/// Who creates containers: the node, where it publishes ports, and labels
/// the operator asked to put on every container (e.g. a quickstart marker).
#[derive(Clone, Debug)]
pub struct Owner {
    pub node: String,
    pub bind_ip: Option<IpAddr>,
    pub extra_labels: Vec<(String, String)>,
}

/// The Docker create request for `spec`, owned by `owner`.
/// `pod_network` is the id of the container whose network namespace a pod
/// member joins (it publishes the pod's ports; the member publishes none).
pub fn create_body(
    spec: &ContainerSpec,
    owner: &Owner,
    hash: &str,
    mounts: Vec<Mount>,
    pod_network: Option<&str>,
) -> Result<ContainerCreateBody, RuntimeError> {
    // The spec's own labels first, so they can never fake ownership.
    let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
    labels.extend(owner.extra_labels.iter().cloned());
    labels.insert(LABEL_NODE.into(), owner.node.clone());
    labels.insert(LABEL_APP.into(), spec.app_id.clone());
    labels.insert(LABEL_APP_NAME.into(), spec.app_name.clone());
    labels.insert(LABEL_WORKLOAD.into(), spec.workload.clone());
    labels.insert(LABEL_REPLICA.into(), spec.replica.to_string());
    labels.insert(LABEL_NAME.into(), spec.name.clone());
    labels.insert(LABEL_SPEC.into(), hash.into());
    labels.insert(LABEL_HOST_PORTS.into(), host_ports_label(spec));
    let bind_ip = owner.bind_ip;

    let mut env = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(RuntimeError::Invalid(format!("environment variable name {k:?} is not valid")));
        }
        env.push(format!("{k}={v}"));
    }

    let mut exposed: Vec<String> = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol.as_str());
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        if let (Some(host_port), false) = (p.host_port, spec.host_network) {
            let binding = PortBinding {
                host_ip: bind_ip.map(|ip| ip.to_string()),
                host_port: Some(host_port.to_string()),
            };
            bindings.entry(key).or_insert(None).get_or_insert_with(Vec::new).push(binding);
        }
    }

    let nano_cpus = match spec.cpu_millis {
        Some(m) => Some(
            i64::try_from(m.saturating_mul(1_000_000))
                .map_err(|_| RuntimeError::Invalid(format!("cpu limit of {m} millicores is too large")))?,
        ),
        None => None,
    };
    let memory = match spec.memory_bytes {
        Some(b) => Some(
            i64::try_from(b).map_err(|_| RuntimeError::Invalid(format!("memory limit of {b} bytes is too large")))?,
        ),
        None => None,
    };

    let (entrypoint, cmd) = if spec.command.is_empty() {
        (None, (!spec.args.is_empty()).then(|| spec.args.clone()))
    } else {
        (Some(spec.command.clone()), Some(spec.args.clone()))
    };

    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint,
        cmd,
        env: Some(env),
        labels: Some(labels),
        working_dir: spec.working_dir.clone(),
        exposed_ports: (!exposed.is_empty() && pod_network.is_none()).then_some(exposed),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty() && pod_network.is_none()).then_some(bindings),
            network_mode: match pod_network {
                Some(id) => Some(format!("container:{id}")),
                None => spec.host_network.then(|| "host".to_string()),
            },
            mounts: (!mounts.is_empty()).then_some(mounts),
            nano_cpus,
            memory,
            privileged: Some(spec.privileged),
            // The agent restarts containers itself, so it can count and back off.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fogmesh_common::wire::{MountSpec, PortSpec, Protocol};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "a1b2c3d4.web.1".into(),
            app_id: "a1b2c3d4".into(),
            app_name: "shop".into(),
            workload: "web".into(),
            replica: 1,
            image: "fogmesh/busybox:test".into(),
            command: vec![],
            args: vec![],
            env: vec![("A".into(), "1".into())],
            ports: vec![],
            mounts: vec![],
            cpu_millis: Some(500),
            memory_bytes: Some(1 << 20),
            privileged: false,
            host_network: false,
            working_dir: None,
            labels: vec![(LABEL_NODE.into(), "spoofed".into()), ("team".into(), "x".into())],
            liveness: None,
            readiness: None,
            pod_network: None,
        }
    }

    fn owner(node: &str, bind_ip: Option<&str>) -> Owner {
        Owner { node: node.into(), bind_ip: bind_ip.map(|ip| ip.parse().unwrap()), extra_labels: vec![("qs".into(), "1".into())] }
    }

    #[test]
    fn names_are_sanitised_without_collisions() {
        let s = spec();
        let hash = s.spec_hash();
        assert_eq!(container_name("n1", &s, &hash), format!("fm-n1-shop-web-1-{}", &hash[..8]));
        let mut odd = s.clone();
        odd.app_name = "app/web".into();
        let a = container_name("n1", &odd, &hash);
        odd.app_name = "app web".into();
        let b = container_name("n1", &odd, &hash);
        assert!(a.starts_with("fm-n1-app_web-") && b.starts_with("fm-n1-app_web-"));
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        assert_ne!(sanitise(".."), "..");
    }

    #[test]
    fn hash_follows_the_spec() {
        let s = spec();
        assert_eq!(s.spec_hash(), s.clone().spec_hash());
        assert_eq!(s.spec_hash().len(), 64);
        let mut t = s.clone();
        t.env[0].1 = "2".into();
        assert_ne!(s.spec_hash(), t.spec_hash());
    }

    #[test]
    fn host_port_clashes() {
        let mut s = spec();
        assert_eq!(host_ports_label(&s), "");
        s.ports = vec![
            PortSpec { container_port: 80, host_port: Some(8080), protocol: Protocol::Tcp },
            PortSpec { container_port: 53, host_port: Some(53), protocol: Protocol::Udp },
        ];
        let label = host_ports_label(&s);
        assert_eq!(label, "53/udp,8080/tcp");
        assert!(host_ports_clash(&label, "8080/tcp"));
        assert!(!host_ports_clash(&label, "8080/udp,9090/tcp"));
        assert!(!host_ports_clash(&label, ""));
        assert!(host_ports_clash("", "host"));
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_with_tag("busybox"), "busybox:latest");
        assert_eq!(image_with_tag("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(image_with_tag("fogmesh/x:1"), "fogmesh/x:1");
        assert_eq!(image_with_tag("x@sha256:ab"), "x@sha256:ab");
    }

    #[test]
    fn body_maps_the_spec() {
        let mut s = spec();
        s.command = vec!["/bin/sh".into(), "-c".into()];
        s.args = vec!["sleep 1".into()];
        s.ports = vec![
            PortSpec { container_port: 80, host_port: Some(8080), protocol: Protocol::Tcp },
            PortSpec { container_port: 53, host_port: None, protocol: Protocol::Udp },
        ];
        let body = create_body(&s, &owner("n1", Some("127.0.0.1")), "abc", vec![], None).unwrap();
        assert_eq!(body.entrypoint, Some(s.command.clone()));
        assert_eq!(body.cmd, Some(s.args.clone()));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_NODE], "n1");
        assert_eq!(labels[LABEL_SPEC], "abc");
        assert_eq!(labels["team"], "x");
        assert_eq!(labels["qs"], "1");
        assert_eq!(labels[LABEL_HOST_PORTS], "8080/tcp");
        assert_eq!(body.exposed_ports, Some(vec!["80/tcp".to_string(), "53/udp".to_string()]));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.memory, Some(1 << 20));
        let b = hc.port_bindings.unwrap();
        assert_eq!(b.len(), 1);
        let pb = &b["80/tcp"].as_ref().unwrap()[0];
        assert_eq!(pb.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(pb.host_port.as_deref(), Some("8080"));
        assert_eq!(hc.network_mode, None);

        s.host_network = true;
        let hc = create_body(&s, &owner("n1", None), "abc", vec![], None).unwrap().host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert_eq!(hc.port_bindings, None, "host networking publishes nothing");

        s.host_network = false;
        let body = create_body(&s, &owner("n1", None), "abc", vec![], Some("c0ffee")).unwrap();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("container:c0ffee"), "a pod member joins its pod's network");
        assert_eq!((hc.port_bindings, body.exposed_ports), (None, None));
    }

    #[test]
    fn bad_env_and_configmap_names_are_refused() {
        let mut s = spec();
        s.env = vec![("A=B".into(), "1".into())];
        assert!(matches!(create_body(&s, &owner("n", None), "h", vec![], None), Err(RuntimeError::Invalid(_))));

        let dir = std::env::temp_dir().join(format!("fm-cfg-unit-{}", std::process::id()));
        let mut s = spec();
        s.mounts = vec![MountSpec {
            source: MountSource::ConfigMap(vec![("../evil".into(), "x".into())]),
            target: "/etc/x".into(),
        }];
        assert!(matches!(prepare_mounts(&s, "h1", &dir), Err(RuntimeError::Invalid(_))));
        s.mounts = vec![MountSpec {
            source: MountSource::ConfigMap(vec![("ok.txt".into(), "hello".into())]),
            target: "/etc/x".into(),
        }];
        let mounts = prepare_mounts(&s, "h1", &dir).unwrap();
        assert_eq!(mounts[0].read_only, Some(true));
        let written = configmap_dir(&dir, &s.name, "h1").join("0").join("ok.txt");
        assert_eq!(std::fs::read_to_string(written).unwrap(), "hello");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

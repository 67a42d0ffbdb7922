//! Pure translation of a [`ContainerSpec`] into what Docker needs: names,
//! labels, the create request, and the files its mounts need on the node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use fogmesh_common::wire::{ContainerSpec, MountSource, Protocol};
use ring::digest;

use super::RuntimeError;

/// Node that owns the container; the only filter the reconciler lists by.
pub const LABEL_NODE: &str = "fogmesh.node";
pub const LABEL_APP: &str = "fogmesh.app";
pub const LABEL_WORKLOAD: &str = "fogmesh.workload";
/// `ContainerSpec::name`, the key that matches containers to specs.
pub const LABEL_NAME: &str = "fogmesh.name";
/// Hash of the spec the container was made from; a change means replace.
pub const LABEL_SPEC: &str = "fogmesh.spec";

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Hex SHA-256 of the spec's JSON: any change to the spec changes it.
pub fn spec_hash(spec: &ContainerSpec) -> String {
    // These plain types always serialise; Debug keeps a stable fallback anyway.
    let bytes = serde_json::to_vec(spec).unwrap_or_else(|_| format!("{spec:?}").into_bytes());
    sha256_hex(&bytes)
}

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

/// Docker name of a spec's container: `fm-<node>-<spec name>`.
pub fn container_name(node: &str, spec_name: &str) -> String {
    sanitise(&format!("fm-{node}-{spec_name}"))
}

/// Folder with a spec's config-map files, one sub-folder per mount index.
pub fn configmap_dir(data_dir: &Path, spec_name: &str) -> PathBuf {
    data_dir.join("configmaps").join(sanitise(spec_name))
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
pub fn prepare_mounts(spec: &ContainerSpec, data_dir: &Path) -> Result<Vec<Mount>, RuntimeError> {
    let cm_root = configmap_dir(data_dir, &spec.name);
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

/// The Docker create request for `spec`, owned by `node`.
pub fn create_body(
    spec: &ContainerSpec,
    node: &str,
    hash: &str,
    bind_ip: Option<IpAddr>,
    mounts: Vec<Mount>,
) -> Result<ContainerCreateBody, RuntimeError> {
    // The spec's own labels first, so they can never fake ownership.
    let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
    labels.insert(LABEL_NODE.into(), node.into());
    labels.insert(LABEL_APP.into(), spec.app_id.clone());
    labels.insert(LABEL_WORKLOAD.into(), spec.workload.clone());
    labels.insert(LABEL_NAME.into(), spec.name.clone());
    labels.insert(LABEL_SPEC.into(), hash.into());

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
        let proto = match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let key = format!("{}/{proto}", p.container_port);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        if let Some(host_port) = p.host_port {
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
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
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
    use fogmesh_common::wire::{MountSpec, PortSpec};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "app-web".into(),
            app_id: "app".into(),
            app_name: "App".into(),
            workload: "web".into(),
            replica: 0,
            image: "fogmesh/busybox:test".into(),
            command: vec![],
            args: vec![],
            env: vec![("A".into(), "1".into())],
            ports: vec![],
            mounts: vec![],
            cpu_millis: Some(500),
            memory_bytes: Some(1 << 20),
            privileged: false,
            working_dir: None,
            labels: vec![(LABEL_NODE.into(), "spoofed".into()), ("team".into(), "x".into())],
        }
    }

    #[test]
    fn names_are_sanitised_without_collisions() {
        assert_eq!(container_name("n1", "app-web"), "fm-n1-app-web");
        let a = container_name("n1", "app/web");
        let b = container_name("n1", "app web");
        assert!(a.starts_with("fm-n1-app_web-") && b.starts_with("fm-n1-app_web-"));
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        assert_ne!(sanitise(".."), "..");
    }

    #[test]
    fn hash_follows_the_spec() {
        let s = spec();
        assert_eq!(spec_hash(&s), spec_hash(&s.clone()));
        assert_eq!(spec_hash(&s).len(), 64);
        let mut t = s.clone();
        t.env[0].1 = "2".into();
        assert_ne!(spec_hash(&s), spec_hash(&t));
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
        let body = create_body(&s, "n1", "abc", Some("127.0.0.1".parse().unwrap()), vec![]).unwrap();
        assert_eq!(body.entrypoint, Some(s.command.clone()));
        assert_eq!(body.cmd, Some(s.args.clone()));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_NODE], "n1");
        assert_eq!(labels[LABEL_SPEC], "abc");
        assert_eq!(labels["team"], "x");
        assert_eq!(body.exposed_ports, Some(vec!["80/tcp".to_string(), "53/udp".to_string()]));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.memory, Some(1 << 20));
        let b = hc.port_bindings.unwrap();
        assert_eq!(b.len(), 1);
        let pb = &b["80/tcp"].as_ref().unwrap()[0];
        assert_eq!(pb.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(pb.host_port.as_deref(), Some("8080"));
    }

    #[test]
    fn bad_env_and_configmap_names_are_refused() {
        let mut s = spec();
        s.env = vec![("A=B".into(), "1".into())];
        assert!(matches!(create_body(&s, "n", "h", None, vec![]), Err(RuntimeError::Invalid(_))));

        let dir = std::env::temp_dir().join(format!("fm-cfg-unit-{}", std::process::id()));
        let mut s = spec();
        s.mounts = vec![MountSpec {
            source: MountSource::ConfigMap(vec![("../evil".into(), "x".into())]),
            target: "/etc/x".into(),
        }];
        assert!(matches!(prepare_mounts(&s, &dir), Err(RuntimeError::Invalid(_))));
        s.mounts = vec![MountSpec {
            source: MountSource::ConfigMap(vec![("ok.txt".into(), "hello".into())]),
            target: "/etc/x".into(),
        }];
        let mounts = prepare_mounts(&s, &dir).unwrap();
        assert_eq!(mounts[0].read_only, Some(true));
        let written = configmap_dir(&dir, &s.name).join("0").join("ok.txt");
        assert_eq!(std::fs::read_to_string(written).unwrap(), "hello");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

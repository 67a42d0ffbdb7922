//! `fogmesh adt validate|compile`: the ADT compiler on local files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use fogmesh_common::adt::plan::{NodeKind, Plan, Port, Protocol};
use fogmesh_common::adt::yaml::MAX_DOCUMENT_BYTES;
use fogmesh_common::adt::{compile, CompileOptions};

use super::{parse_key_value, table, Format};

#[derive(Debug, Subcommand)]
pub enum AdtCommand {
    /// Check ADTs; print a summary of each valid one and every problem of
    /// each invalid one. Exits 1 if any file is invalid.
    Validate {
        /// ADT files (TOSCA YAML) to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Value for an ADT input, overriding its default (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// Treat warnings (placeholders, removed types, undefined constants) as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Compile an ADT and print its deployment plan (secrets hidden).
    Compile {
        /// The ADT file (TOSCA YAML) to compile.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Value for an ADT input, overriding its default (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub fn run(command: AdtCommand) -> ExitCode {
    match command {
        AdtCommand::Validate { files, params, strict } => {
            let mut all_valid = true;
            for file in &files {
                match compile_file(file, &params) {
                    Ok(plan) => {
                        let shown = file.display().to_string();
                        for w in &plan.warnings {
                            eprintln!("{}", w.render(&shown));
                        }
                        if strict && !plan.warnings.is_empty() {
                            all_valid = false;
                            eprintln!("{shown}: invalid with --strict: {} warning(s)", plan.warnings.len());
                            continue;
                        }
                        let warned = match plan.warnings.len() {
                            0 => String::new(),
                            n => format!(" ({n} warning{})", plural(n, "", "s")),
                        };
                        println!(
                            "{shown}: valid{warned}: {} node{}, {} workload{}, {} polic{}",
                            plan.nodes.len(),
                            plural(plan.nodes.len(), "", "s"),
                            plan.workloads.len(),
                            plural(plan.workloads.len(), "", "s"),
                            plan.policies.len(),
                            plural(plan.policies.len(), "y", "ies"),
                        );
                        let ignored: Vec<String> =
                            plan.policies.iter().filter(|p| !p.kind.enforced()).map(|p| format!("{} ({})", p.name, p.tosca_type)).collect();
                        if !ignored.is_empty() {
                            println!("{shown}: not enforced by fogmesh (kept in the plan): {}", ignored.join(", "));
                        }
                    }
                    Err(problems) => {
                        all_valid = false;
                        eprint!("{problems}");
                    }
                }
            }
            if all_valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        AdtCommand::Compile { file, params, format } => match compile_file(&file, &params) {
            Ok(plan) => {
                let plan = plan.redacted();
                for w in &plan.warnings {
                    eprintln!("{}", w.render(&file.display().to_string()));
                }
                match format {
                    Format::Json => match serde_json::to_string_pretty(&plan) {
                        Ok(json) => println!("{json}"),
                        Err(e) => {
                            eprintln!("error: cannot render the plan as JSON: {e}");
                            return ExitCode::from(1);
                        }
                    },
                    Format::Table => print!("{}", plan_tables(&plan)),
                }
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprint!("{problems}");
                ExitCode::from(1)
            }
        },
    }
}

/// Reads and compiles one ADT file; local imports resolve beside it. The
/// error is the rendered list of problems, `FILE:LINE:COL: error: ...`.
pub fn compile_file(path: &Path, params: &[(String, String)]) -> Result<Plan, String> {
    let shown = path.display().to_string();
    let text = read_limited(path).map_err(|e| format!("{shown}: error: {e}\n"))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let read_import = move |name: &str| read_limited(&base.join(name));
    let options = CompileOptions {
        params: params.to_vec(),
        local_imports: Some(&read_import),
        for_deployment: false,
    };
    compile(&text, &options).map_err(|e| e.render(&shown))
}

/// Reads a text file no larger than an ADT may be.
fn read_limited(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(format!(
            "{} is {} bytes, larger than the {MAX_DOCUMENT_BYTES} byte limit for an ADT",
            path.display(),
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| format!("{} is not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
}

fn plan_tables(plan: &Plan) -> String {
    let bounds = |min: u32, max: Option<u32>| match max {
        Some(max) => format!("{min}..{max}"),
        None => format!("{min}.."),
    };
    let nodes: Vec<Vec<String>> = plan
        .nodes
        .iter()
        .map(|n| {
            let (kind, place) = match n.kind {
                NodeKind::Edge => ("edge", n.public_ip.clone().unwrap_or_default()),
                NodeKind::Cloud => ("cloud", n.cloud.clone().unwrap_or_else(|| "-".into())),
            };
            vec![n.name.clone(), kind.into(), place, bounds(n.min_instances, n.max_instances)]
        })
        .collect();
    let workloads: Vec<Vec<String>> = plan
        .workloads
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.image.clone(),
                w.host.clone().unwrap_or_else(|| "(any)".into()),
                w.replicas.to_string(),
                bounds(w.min_instances, w.max_instances),
                w.ports.iter().map(port_text).collect::<Vec<_>>().join(","),
                w.volumes.iter().map(|v| v.mount_path.clone()).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    let policies: Vec<Vec<String>> = plan
        .policies
        .iter()
        .map(|p| {
            let b = match (p.min_instances, p.max_instances) {
                (None, None) => "-".to_string(),
                (min, max) => format!("{}..{}", min.unwrap_or(0), max.map(|m| m.to_string()).unwrap_or_default()),
            };
            vec![
                p.name.clone(),
                format!("{:?}", p.kind).to_lowercase(),
                if p.targets.is_empty() { "-".into() } else { p.targets.join(",") },
                b,
                p.alerts.iter().map(|a| a.name.clone()).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    format!(
        "NODES\n{}\nWORKLOADS\n{}\nPOLICIES\n{}",
        table::render(&["NAME", "KIND", "ADDRESS/CLOUD", "INSTANCES"], &nodes),
        table::render(&["NAME", "IMAGE", "HOST", "REPLICAS", "INSTANCES", "PORTS", "MOUNTS"], &workloads),
        table::render(&["NAME", "KIND", "TARGETS", "INSTANCES", "ALERTS"], &policies),
    )
}

fn port_text(p: &Port) -> String {
    let proto = match p.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    match p.host_port {
        Some(h) => format!("{h}:{}/{proto}", p.container_port),
        None => format!("{}/{proto}", p.container_port),
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

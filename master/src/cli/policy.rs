//! `fogmesh policy test`: runs one scaling policy's rule once against
//! inputs you give, in the same sandbox the master uses. A dry run for rule
//! authors; no master needed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fogmesh_common::adt::plan::{Plan, Policy, PolicyKind};
use fogmesh_common::scaling::round::{dry_run_request, initial_situation};
use fogmesh_common::scaling::{RuleLimits, RuleWorker};
use serde_json::{json, Map, Value};

use super::adt::compile_file;
use super::{parse_key_value, Format};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate a scaling policy's rule once and print its outputs
    /// (m_container_count, m_node_count, m_nodes_todrop, m_userdata) and
    /// printed lines. Constants come from the ADT; queries the rule reads
    /// are None and alerts False unless --set; m_userdata starts None.
    Test {
        /// The ADT holding the policy.
        file: PathBuf,
        /// The policy: its key (e.g. `scalability`) or its position among
        /// the ADT's policies (from 1). Default: the first scaling policy.
        #[arg(long, value_name = "KEY-or-INDEX")]
        policy: Option<String>,
        /// Set any input by name: a constant, query, alert or m_* variable.
        /// VALUE is read as JSON when it parses (3, 0.5, true, null, [..],
        /// {..}), else as a string (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        sets: Vec<(String, String)>,
        /// Value for an ADT input (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub fn run(command: PolicyCommand, worker_program: PathBuf, worker_args: Vec<String>) -> ExitCode {
    let PolicyCommand::Test { file, policy, sets, params, format } = command;
    let plan = match compile_file(&file, &params) {
        Ok(plan) => plan,
        Err(problems) => {
            eprint!("{problems}");
            return ExitCode::from(1);
        }
    };
    let policy = match pick(&plan, policy.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fogmesh: error: {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    let overrides: Map<String, Value> = sets.into_iter().map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v)))).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let situation = initial_situation(policy, &plan, now);
    let Some(request) = dry_run_request(policy, &plan, &situation, overrides, RuleLimits::default()) else {
        eprintln!("fogmesh: error: policy {} #{} has no scaling_rule", policy.name, policy.index);
        return ExitCode::from(1);
    };
    let worker = RuleWorker::new(worker_program, worker_args);
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(worker.evaluate(request)),
        Err(e) => {
            eprintln!("fogmesh: error: start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let label = format!("{} #{}", policy.name, policy.index);
    match (result, format) {
        (Ok(outcome), Format::Json) => {
            println!("{}", json!({"policy": label, "outputs": outcome.outputs, "printed": outcome.printed}));
            ExitCode::SUCCESS
        }
        (Ok(outcome), Format::Table) => {
            println!("policy {label} ({})", policy.targets.join(", "));
            for line in &outcome.printed {
                println!("  | {line}");
            }
            for (k, v) in &outcome.outputs {
                println!("{k} = {v}");
            }
            ExitCode::SUCCESS
        }
        (Err(e), Format::Json) => {
            println!("{}", json!({"policy": label, "error": e.to_string(), "line": e.line, "printed": e.printed}));
            ExitCode::from(1)
        }
        (Err(e), Format::Table) => {
            for line in &e.printed {
                println!("  | {line}");
            }
            eprintln!("fogmesh: error: policy {label}: the rule failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// The policy `wanted` names (key or position), or the first scaling one.
fn pick<'a>(plan: &'a Plan, wanted: Option<&str>) -> Result<&'a Policy, String> {
    let scaling: Vec<&Policy> = plan.policies.iter().filter(|p| p.kind == PolicyKind::Scaling).collect();
    let names = || scaling.iter().map(|p| format!("{} (#{})", p.name, p.index)).collect::<Vec<_>>().join(", ");
    match wanted {
        None => scaling.first().copied().ok_or_else(|| "the ADT has no scaling policy".to_string()),
        Some(w) => {
            if let Ok(index) = w.parse::<u32>() {
                return plan.policies.iter().find(|p| p.index == index).ok_or_else(|| format!("no policy #{index}; scaling policies: {}", names()));
            }
            let matching: Vec<&&Policy> = scaling.iter().filter(|p| p.name == w).collect();
            match matching.as_slice() {
                [one] => Ok(one),
                [] => Err(format!("no scaling policy named {w}; scaling policies: {}", names())),
                _ => Err(format!("several policies are named {w}: pick one by its position: {}", names())),
            }
        }
    }
}

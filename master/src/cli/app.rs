//! `fogmesh app submit|list|show|update|delete`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use reqwest::Method;

use super::client::{ApiFailure, Client};
use super::{duration_arg, parse_key_value, table, Format};
use crate::model::{AppDetail, AppSummary, SubmitApp};

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Submit an ADT as a new app and wait until its containers run.
    Submit {
        file: PathBuf,
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// App name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// List apps with running/desired container counts.
    List,
    /// Per workload and node: desired against running replicas, with reasons.
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Replace an app's ADT; only containers that changed are replaced.
    Update {
        id: String,
        file: PathBuf,
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Delete an app; its containers are removed on every node (offline
    /// nodes remove them when they reconnect).
    Delete { id: String },
}

#[derive(Debug, clap::Args)]
pub struct Wait {
    /// Return as soon as the master accepted the ADT.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the rollout.
    #[arg(long, default_value = "120s", value_parser = duration_arg)]
    timeout: Duration,
}

pub async fn run(client: &Client, command: AppCommand) -> Result<()> {
    match command {
        AppCommand::Submit { file, params, name, wait } => {
            let name = name.or_else(|| default_name(&file));
            let body = SubmitApp { name, adt: read_adt(&file)?, params };
            let app: AppDetail = client.send(Method::POST, "/v1/apps", &body).await.map_err(|e| adt_problems(e, &file))?;
            println!("submitted app {} (id {})", app.name, app.id);
            if !wait.no_wait {
                wait_for_rollout(client, &app.id, wait.timeout).await?;
            }
        }
        AppCommand::Update { id, file, params, wait } => {
            let body = SubmitApp { name: None, adt: read_adt(&file)?, params };
            let app: AppDetail = client.send(Method::PUT, &format!("/v1/apps/{id}"), &body).await.map_err(|e| adt_problems(e, &file))?;
            println!("updated app {} (id {}) to revision {}", app.name, app.id, app.revision);
            if !wait.no_wait {
                wait_for_rollout(client, &app.id, wait.timeout).await?;
            }
        }
        AppCommand::List => {
            let apps: Vec<AppSummary> = client.get("/v1/apps").await?;
            let rows: Vec<Vec<String>> = apps
                .iter()
                .map(|a| vec![a.id.clone(), a.name.clone(), a.revision.to_string(), a.workloads.to_string(), format!("{}/{}", a.running, a.desired)])
                .collect();
            print!("{}", table::render(&["ID", "NAME", "REVISION", "WORKLOADS", "RUNNING"], &rows));
        }
        AppCommand::Show { id, format } => {
            let app: AppDetail = client.get(&format!("/v1/apps/{id}")).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&app)?),
                Format::Table => print!("{}", detail_table(&app)),
            }
        }
        AppCommand::Delete { id } => {
            client.delete(&format!("/v1/apps/{id}")).await?;
            println!("deleted app {id}; nodes remove its containers (offline nodes when they reconnect)");
        }
    }
    Ok(())
}

/// Polls the app and prints each change of per-node progress until every
/// workload runs everywhere it should, or the timeout.
async fn wait_for_rollout(client: &Client, id: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut last_report = String::new();
    loop {
        let app: AppDetail = client.get(&format!("/v1/apps/{id}")).await?;
        let report = progress_lines(&app);
        if report != last_report {
            print!("{report}");
            last_report = report;
        }
        if rolled_out(&app) {
            println!("app {} is running ({:.0?})", app.name, started.elapsed());
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("app {} did not finish rolling out within {:?}; see `fogmesh app show {}`", app.name, timeout, app.id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn rolled_out(app: &AppDetail) -> bool {
    app.workloads.iter().all(|w| {
        w.pending_reason.is_none() && w.placements.iter().map(|p| p.running).sum::<u32>() >= w.desired_replicas
    })
}

fn progress_lines(app: &AppDetail) -> String {
    let mut out = String::new();
    for w in &app.workloads {
        for p in &w.placements {
            let reasons = if p.reasons.is_empty() { String::new() } else { format!(" ({})", p.reasons.join("; ")) };
            out.push_str(&format!("  {} on {}: {}/{} running{reasons}\n", w.name, p.node, p.running, p.desired));
        }
        if let Some(reason) = &w.pending_reason {
            out.push_str(&format!("  {}: pending: {reason}\n", w.name));
        }
    }
    out
}

fn detail_table(app: &AppDetail) -> String {
    let mut rows = Vec::new();
    for w in &app.workloads {
        for p in &w.placements {
            rows.push(vec![
                w.name.clone(),
                p.node.clone(),
                format!("{:?}", p.node_state).to_lowercase(),
                format!("{}/{}", p.running, p.desired),
                p.reasons.join("; "),
            ]);
        }
        if let Some(reason) = &w.pending_reason {
            rows.push(vec![w.name.clone(), "-".into(), "-".into(), format!("0/{}", w.desired_replicas), format!("pending: {reason}")]);
        }
    }
    format!(
        "app {} (id {}), revision {}\n{}",
        app.name,
        app.id,
        app.revision,
        table::render(&["WORKLOAD", "NODE", "NODE STATE", "RUNNING", "REASONS"], &rows)
    )
}

fn read_adt(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// `face_detection.yaml` -> `face-detection`.
fn default_name(file: &Path) -> Option<String> {
    let stem = file.file_stem()?.to_str()?;
    Some(stem.to_ascii_lowercase().replace(['_', '.', ' '], "-"))
}

/// Shows ADT problems the master found as `FILE:LINE:COL: ...` lines.
fn adt_problems(e: anyhow::Error, file: &Path) -> anyhow::Error {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) if !f.body.problems.is_empty() => {
            let lines: Vec<String> = f.body.problems.iter().map(|p| format!("{}:{p}", file.display())).collect();
            anyhow::anyhow!("{}:\n{}", f.body.error, lines.join("\n"))
        }
        _ => e,
    }
}

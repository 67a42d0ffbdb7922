//! `fogmesh app submit|list|show|update|events|delete`.
//!
//! `submit` and `update` watch the rollout on the master (long-poll, no
//! sleeping) and say "running" only when the master says every node acked
//! and every container runs its current spec; they exit non-zero when the
//! rollout fails or times out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use reqwest::Method;

use super::client::{ApiFailure, Client};
use super::{duration_arg, parse_key_value, table, Format};
use crate::model::{AppDetail, AppSummary, ContainerView, EventOutcome, EventPage, RolloutPhase, ScalingEvent, SubmitApp};

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Submit an ADT as a new app and wait until its containers run.
    Submit {
        /// The ADT (TOSCA YAML) to submit.
        file: PathBuf,
        /// Set an ADT input (repeatable); lists and maps are read as YAML.
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// App name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// List apps with their rollout phase and current/desired containers.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show an app: per node the acked desired state, per container whether
    /// it runs the current spec, and what is in the way.
    Show {
        /// App id or name.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Replace an app's ADT; only containers that changed are replaced,
    /// each new one started before its old one goes.
    Update {
        /// App id or name.
        id: String,
        /// The new ADT.
        file: PathBuf,
        /// Set an ADT input (repeatable); inputs set earlier keep their values.
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        params: Vec<(String, String)>,
        /// Drop the --param values of earlier revisions.
        #[arg(long)]
        reset_params: bool,
        /// Apply only if the app is still at this revision (for scripts:
        /// fails with 412 if someone else changed it).
        #[arg(long, value_name = "N")]
        revision: Option<u64>,
        #[command(flatten)]
        wait: Wait,
    },
    /// The scaling timeline: every round of every scaling policy (what the
    /// rule read and printed, old -> new count, why), and decisions agents
    /// made while cut off from the master.
    Events {
        /// App id or name.
        id: String,
        /// Keep printing new events as they happen (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
        /// Only the newest N events (before following).
        #[arg(long, default_value_t = 50)]
        last: usize,
        /// Output format (json: one event per line).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Delete an app; its containers are removed on every node (offline
    /// nodes remove them when they reconnect).
    Delete {
        /// App id or name.
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct Wait {
    /// Return as soon as the master accepted the ADT.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the rollout before giving up (exit 1).
    #[arg(long, default_value = "120s", value_parser = duration_arg)]
    timeout: Duration,
}

pub async fn run(client: &Client, command: AppCommand) -> Result<()> {
    match command {
        AppCommand::Submit { file, params, name, wait } => {
            let name = name.or_else(|| default_name(&file));
            let body = SubmitApp { name, adt: read_adt(&file)?, params, reset_params: false };
            let started = Instant::now();
            let app: AppDetail = client.send(Method::POST, "/v1/apps", &body).await.map_err(|e| adt_problems(e, &file))?;
            println!("submitted app {} (id {}), revision {}", app.name, app.id, app.revision);
            if !wait.no_wait {
                watch_rollout(client, app, started, wait.timeout).await?;
            }
        }
        AppCommand::Update { id, file, params, reset_params, revision, wait } => {
            let body = SubmitApp { name: None, adt: read_adt(&file)?, params, reset_params };
            let started = Instant::now();
            let headers: Vec<(&str, String)> = revision.map(|r| ("If-Match", format!("\"{r}\""))).into_iter().collect();
            let app: AppDetail =
                client.send_with(Method::PUT, &format!("/v1/apps/{id}"), &body, &headers).await.map_err(|e| adt_problems(e, &file))?;
            println!("updated app {} (id {}) to revision {}", app.name, app.id, app.revision);
            if !wait.no_wait {
                watch_rollout(client, app, started, wait.timeout).await?;
            }
        }
        AppCommand::List { format } => {
            let apps: Vec<AppSummary> = client.get("/v1/apps").await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&apps)?),
                Format::Table => {
                    let rows: Vec<Vec<String>> = apps
                        .iter()
                        .map(|a| {
                            vec![
                                a.id.clone(),
                                a.name.clone(),
                                a.revision.to_string(),
                                a.phase.as_str().to_string(),
                                a.workloads.to_string(),
                                format!("{}/{}", a.current, a.desired),
                            ]
                        })
                        .collect();
                    print!("{}", table::render(&["ID", "NAME", "REVISION", "PHASE", "WORKLOADS", "CURRENT"], &rows));
                }
            }
        }
        AppCommand::Show { id, format } => {
            let app: AppDetail = client.get(&format!("/v1/apps/{id}")).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&app)?),
                Format::Table => print!("{}", detail_text(&app)),
            }
        }
        AppCommand::Events { id, follow, last, format } => {
            let page: EventPage = client.get(&format!("/v1/apps/{id}/events")).await?;
            let skip = page.events.len().saturating_sub(last);
            for e in &page.events[skip..] {
                print_event(e, format)?;
            }
            let mut after = page.last_seq;
            if follow {
                loop {
                    let page: EventPage = client.get(&format!("/v1/apps/{id}/events?after={after}&wait=true&timeout=25")).await?;
                    for e in &page.events {
                        print_event(e, format)?;
                    }
                    after = page.last_seq;
                }
            }
        }
        AppCommand::Delete { id } => {
            client.delete(&format!("/v1/apps/{id}")).await?;
            println!("deleted app {id}; nodes remove its containers (offline nodes when they reconnect)");
        }
    }
    Ok(())
}

/// Follows the rollout on the master until it runs, fails or times out,
/// printing each progress line when it changes.
async fn watch_rollout(client: &Client, mut app: AppDetail, started: Instant, timeout: Duration) -> Result<()> {
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut last_summary = String::new();
    loop {
        let lines = progress_lines(&app);
        if lines.len() <= MAX_PROGRESS_LINES {
            for (key, line) in lines {
                if shown.get(&key) != Some(&line) {
                    println!("  {line}");
                    shown.insert(key, line);
                }
            }
        } else {
            let summary = progress_summary(&app);
            if summary != last_summary {
                println!("  {summary}");
                last_summary = summary;
            }
        }
        match app.rollout.phase {
            RolloutPhase::Running => {
                let containers: usize = app.workloads.iter().map(|w| w.current_replicas as usize).sum();
                println!(
                    "app {} is running (revision {}): {containers} container(s) on {} node(s), {:.2}s",
                    app.name,
                    app.revision,
                    app.nodes.len(),
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            RolloutPhase::Failed => bail!("app {} (revision {}) failed to roll out:\n  {}", app.name, app.revision, app.rollout.reasons.join("\n  ")),
            RolloutPhase::Progressing | RolloutPhase::Waiting => {}
        }
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            bail!(
                "app {} (revision {}) did not finish rolling out within {timeout:?}; still {}:\n  {}\nsee `fogmesh app show {}`",
                app.name,
                app.revision,
                app.rollout.phase.as_str(),
                app.rollout.reasons.join("\n  "),
                app.name
            );
        }
        if app.nodes.len() > BIG_ROLLOUT_NODES {
            // Each view of a fleet-wide app is real work for the master.
            tokio::time::sleep(Duration::from_secs(1).min(left)).await;
        }
        let wait = left.min(Duration::from_secs(25));
        let path = format!("/v1/apps/{}?wait_after={}&timeout={}", app.id, app.version, wait.as_secs().max(1));
        app = client.get(&path).await?;
    }
}

/// Above this many progress lines (nodes and containers), the rollout is
/// shown as one summary line per change.
const MAX_PROGRESS_LINES: usize = 40;
/// Apps on more nodes than this are polled at most once a second.
const BIG_ROLLOUT_NODES: usize = 100;

/// Acked nodes and running containers out of all, with failures.
fn progress_summary(app: &AppDetail) -> String {
    let acked = app.nodes.iter().filter(|n| n.acked_generation >= n.desired_generation).count();
    let containers = app.workloads.iter().flat_map(|w| &w.placements).flat_map(|p| &p.containers);
    let (mut total, mut running, mut failed) = (0, 0, 0);
    for c in containers {
        total += 1;
        running += usize::from(c.current);
        failed += usize::from(!c.current && c.state.is_some_and(|s| s.as_str() == "failed"));
    }
    let pending = app.workloads.iter().filter(|w| w.pending.is_some()).count();
    let mut line = format!("{acked}/{} nodes acked, {running}/{total} containers running", app.nodes.len());
    if failed > 0 {
        line.push_str(&format!(", {failed} failed"));
    }
    if pending > 0 {
        line.push_str(&format!(", {pending} workload(s) pending"));
    }
    line
}

/// One line per container, pending workload and unacked node, keyed so a
/// line is printed again only when it changes.
fn progress_lines(app: &AppDetail) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for n in &app.nodes {
        if n.acked_generation < n.desired_generation {
            lines.push((format!("node/{}", n.node), format!("node {}: sending desired state {}", n.node, n.desired_generation)));
        } else {
            lines.push((format!("node/{}", n.node), format!("node {}: acked desired state {}", n.node, n.acked_generation)));
        }
    }
    for w in &app.workloads {
        for p in &w.placements {
            for c in &p.containers {
                lines.push((c.name.clone(), format!("{} replica {} on {}: {}", w.name, c.replica, p.node, container_word(c))));
            }
        }
        if let Some(pending) = &w.pending {
            lines.push((format!("pending/{}", w.name), format!("{}: pending: {}", w.name, pending.reason)));
        }
    }
    lines
}

fn container_word(c: &ContainerView) -> String {
    let mut word = match (c.state, c.current) {
        (_, true) => "running".to_string(),
        (None, _) => "not reported yet".to_string(),
        (Some(state), false) => match c.ready {
            Some(false) if state.as_str() == "running" => "running, not ready".to_string(),
            _ => state.as_str().to_string(),
        },
    };
    if let Some(e) = &c.error {
        word.push_str(&format!(" ({e})"));
    }
    word
}

fn detail_text(app: &AppDetail) -> String {
    let mut out = format!("app {} (id {}), revision {}: {}\n", app.name, app.id, app.revision, app.rollout.phase.as_str());
    for r in &app.rollout.reasons {
        out.push_str(&format!("  {r}\n"));
    }
    if !app.params.is_empty() {
        let params: Vec<String> = app.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("params: {}\n", params.join(" ")));
    }
    let node_rows: Vec<Vec<String>> = app
        .nodes
        .iter()
        .map(|n| vec![n.node.clone(), format!("{:?}", n.node_state).to_lowercase(), n.desired_generation.to_string(), n.acked_generation.to_string()])
        .collect();
    out.push('\n');
    out.push_str(&table::render(&["NODE", "STATE", "DESIRED GEN", "ACKED GEN"], &node_rows));
    let mut rows = Vec::new();
    for w in &app.workloads {
        for p in &w.placements {
            for c in &p.containers {
                rows.push(vec![
                    w.name.clone(),
                    c.replica.to_string(),
                    p.node.clone(),
                    c.state.map_or("-".into(), |s| s.as_str().to_string()),
                    if c.current { "yes".into() } else { "no".into() },
                    c.ready.map_or("-".into(), |r| if r { "yes".into() } else { "no".into() }),
                    c.restarts.to_string(),
                    c.error.clone().unwrap_or_default(),
                ]);
            }
        }
        if let Some(pending) = &w.pending {
            rows.push(vec![w.name.clone(), "-".into(), "-".into(), "pending".into(), "-".into(), "-".into(), "-".into(), pending.reason.clone()]);
        }
    }
    out.push('\n');
    out.push_str(&table::render(&["WORKLOAD", "REPLICA", "NODE", "STATE", "CURRENT SPEC", "READY", "RESTARTS", "REASON"], &rows));
    if !app.scaling.is_empty() {
        let rows: Vec<Vec<String>> = app
            .scaling
            .iter()
            .map(|p| {
                let last = p.last.as_ref().map(|e| event_text(e).lines().next().unwrap_or("").to_string()).unwrap_or_else(|| "no round yet".into());
                let bounds = format!("{}..{}", p.min, p.max.map_or("".into(), |m| m.to_string()));
                vec![p.policy.clone(), p.target.clone(), p.current.to_string(), bounds, format!("{}s", p.period_seconds), last]
            })
            .collect();
        out.push('\n');
        out.push_str(&table::render(&["POLICY", "TARGET", "NOW", "BOUNDS", "PERIOD", "LAST ROUND"], &rows));
    }
    out
}

fn print_event(e: &ScalingEvent, format: Format) -> Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string(e)?);
        return Ok(());
    }
    print!("{}", event_text(e));
    Ok(())
}

/// `TIME POLICY TARGET: outcome from -> to (by)`, then the readings,
/// printed lines and the why, indented.
fn event_text(e: &ScalingEvent) -> String {
    let when = chrono::DateTime::from_timestamp_millis(e.at_ms).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_default();
    let counts = match (e.from, e.to) {
        (Some(a), Some(b)) if a != b => format!(" {a} -> {b}"),
        (Some(a), _) => format!(" {a}"),
        _ => String::new(),
    };
    let outcome = match e.outcome {
        EventOutcome::Scaled => "scaled",
        EventOutcome::Unchanged => "unchanged",
        EventOutcome::Failed => "FAILED",
    };
    let mut out = format!("{when} {} {}: {outcome}{counts} (by {})\n", e.policy, e.target, e.by);
    if !e.readings.is_empty() {
        let r: Vec<String> = e.readings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("    read: {}\n", r.join(" ")));
    }
    for line in &e.printed {
        out.push_str(&format!("    | {line}\n"));
    }
    if !e.message.is_empty() {
        out.push_str(&format!("    {}\n", e.message));
    }
    out
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

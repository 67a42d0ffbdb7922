//! `fogmesh-master bench store`: what the master store does under load,
//! through [`Store`]'s public API only (so the same code measures any
//! backend behind it):
//!
//! - join: N nodes written by 64 concurrent writers, each waiting for its
//!   write to be durable (`flush().await`, group commit), as joins do;
//! - reschedule: passes that give every node a new desired state (new
//!   generation, three containers), store placements and pending, flush;
//! - acks: every node acks and reports a status (`flush_soon`, nobody
//!   waits), then one flush waits for all of it;
//! - hellos: every node's record changed in place (`update_node`);
//! - reopen: the store opened again (its in-memory copies loaded).
//!
//! Build with `--release` for figures.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fogmesh_common::wire::{ContainerSpec, ContainerState, ContainerStatus, DesiredState, NodeStatus};

use crate::model::NodeRecord;
use crate::store::Store;

pub struct StoreBenchOptions {
    pub nodes: usize,
    pub passes: usize,
    /// Scratch folder (emptied first).
    pub work_dir: PathBuf,
}

const WRITERS: usize = 64;

fn node(i: usize) -> NodeRecord {
    let mut n = NodeRecord::declared(&format!("bench-{i}"), &format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255));
    n.labels = vec![("zone".into(), format!("z{}", i % 8))];
    // About the size of a real node certificate.
    n.cert_pem = Some("x".repeat(700));
    n.cert_fingerprint = Some(format!("{i:064x}"));
    n
}

fn containers(i: usize, pass: usize) -> Vec<ContainerSpec> {
    (0..3)
        .map(|c| ContainerSpec {
            name: format!("app{c}.web.{i}"),
            app_id: format!("app{c}"),
            app_name: format!("app-{c}"),
            workload: "web".into(),
            replica: i as u32,
            image: format!("registry.local/web:{pass}"),
            command: vec![],
            args: vec!["--port".into(), "8080".into()],
            env: vec![("MODE".into(), "edge".into()), ("PASS".into(), pass.to_string())],
            ports: vec![],
            mounts: vec![],
            cpu_millis: Some(250),
            memory_bytes: Some(128 << 20),
            privileged: false,
            host_network: false,
            working_dir: None,
            labels: vec![],
            liveness: None,
            readiness: None,
            pod_network: None,
        })
        .collect()
}

fn status(generation: u64, specs: &[ContainerSpec]) -> NodeStatus {
    NodeStatus {
        generation,
        containers: specs
            .iter()
            .map(|s| ContainerStatus {
                name: s.name.clone(),
                app_id: s.app_id.clone(),
                workload: s.workload.clone(),
                state: ContainerState::Running,
                spec_hash: s.spec_hash(),
                running_spec: Some(s.spec_hash()),
                ready: Some(true),
                restarts: 0,
                last_error: None,
            })
            .collect(),
        conditions: vec![],
    }
}

/// Runs `count` jobs on `WRITERS` concurrent tasks.
async fn concurrently<F, Fut>(count: usize, job: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let job = Arc::new(job);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < count {
                    job(i).await?;
                    i += WRITERS;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await.context("a bench writer panicked")??;
    }
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the phases; returns a markdown report.
pub async fn run(options: StoreBenchOptions) -> Result<String> {
    let n = options.nodes.max(1);
    let dir = options.work_dir.join("store");
    let _ = std::fs::remove_dir_all(&options.work_dir);
    std::fs::create_dir_all(&options.work_dir).with_context(|| format!("create {}", options.work_dir.display()))?;
    let mut report = String::new();
    let _ = writeln!(report, "store bench: {n} nodes, {} reschedule passes, {WRITERS} concurrent writers\n", options.passes);
    let _ = writeln!(report, "| phase | time | per node |");
    let _ = writeln!(report, "| --- | ---: | ---: |");
    let mut row = |name: &str, took: Duration, per: usize| {
        let _ = writeln!(report, "| {name} | {:.0} ms | {:.1} us |", ms(took), took.as_secs_f64() * 1e6 / per as f64);
    };

    let store = Store::open(&dir)?;
    let started = Instant::now();
    let s = store.clone();
    concurrently(n, move |i| {
        let s = s.clone();
        async move {
            s.put_node(&node(i))?;
            s.flush().await
        }
    })
    .await?;
    row("join (put_node + flush, waited)", started.elapsed(), n);

    let mut pass_times = vec![];
    for pass in 0..options.passes.max(1) {
        let started = Instant::now();
        let mut placements = std::collections::BTreeMap::new();
        for i in 0..n {
            let generation = store.next_generation()?;
            store.put_desired(&format!("bench-{i}"), DesiredState { generation, containers: containers(i, pass), ..Default::default() })?;
            if i % 10 == 0 {
                placements.insert(format!("app{}/web", i / 10), vec![format!("bench-{i}")]);
            }
        }
        store.set_placements(&placements)?;
        store.set_meta("pending", "[]")?;
        store.flush().await?;
        pass_times.push(started.elapsed());
    }
    pass_times.sort();
    row("reschedule pass, median (put_desired x N + flush)", pass_times[pass_times.len() / 2], n);

    let started = Instant::now();
    let s = store.clone();
    concurrently(n, move |i| {
        let s = s.clone();
        async move {
            let name = format!("bench-{i}");
            let desired = s.desired(&name)?;
            if desired.generation > s.acked(&name)? {
                s.set_acked(&name, desired.generation)?;
                s.flush_soon();
            }
            s.set_observed(&name, &status(desired.generation, &desired.containers))?;
            s.flush_soon();
            Ok(())
        }
    })
    .await?;
    store.flush().await?;
    row("acks + statuses (flush_soon), then one flush", started.elapsed(), n);

    let started = Instant::now();
    let s = store.clone();
    concurrently(n, move |i| {
        let s = s.clone();
        async move {
            s.update_node(&format!("bench-{i}"), |r| r.last_seen_ms = Some(crate::model::now_ms()))?;
            s.flush_soon();
            Ok(())
        }
    })
    .await?;
    store.flush().await?;
    row("hellos (update_node, flush_soon), then one flush", started.elapsed(), n);

    drop(store);
    // A backend may stay locked until its flusher thread has noticed the
    // last handle is gone (sled's did, up to 500 ms): the open that
    // succeeds is timed.
    let give_up = Instant::now() + Duration::from_secs(5);
    let (store, took) = loop {
        let started = Instant::now();
        match Store::open(&dir) {
            Ok(store) => break (store, started.elapsed()),
            Err(_) if Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e.context("reopen the store")),
        }
    };
    anyhow::ensure!(store.nodes()?.len() == n, "the reopened store lost nodes");
    row("reopen (load the in-memory copies)", took, n);
    let _ = writeln!(report, "\non disk: {:.1} MB in {}", dir_bytes(&dir) as f64 / 1e6, dir.display());
    Ok(report)
}

//! `fogmesh node add|remove|list|summary`.

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;

use super::client::Client;
use super::{ago, table, Format};
use crate::model::{DeclareNode, LabelNode, NodeRecord, NodeSummary, NodeView};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Declare a fog node by public IP before its agent joins, so apps can
    /// be placed on it; they start when the agent joins.
    Add {
        /// The node's public IP: ADT Edge nodes with this `public_ip` run there.
        #[arg(long, value_name = "IP")]
        public_ip: String,
        /// Node name (default: node-IP).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a node and revoke its certificate: its agent removes its
    /// containers (now if connected, else when it next connects) and is
    /// refused from then on.
    Remove {
        /// Node name.
        name: String,
    },
    /// Set or remove a node's labels (placement follows them): `K=V` sets,
    /// `K-` removes. What an agent says of its own labels is not obeyed.
    Label {
        /// Node name.
        name: String,
        /// `KEY=VALUE` to set, `KEY-` to remove.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
    /// List nodes: name, public IP, state, last seen, labels, capacity,
    /// containers, and conditions the agent reports (e.g. a full disk).
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The fleet in a few lines: nodes per state, containers running,
    /// nodes behind on their desired state, conditions reported.
    Summary {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub async fn run(client: &Client, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Add { public_ip, name } => {
            let node: NodeRecord = client.send(Method::POST, "/v1/nodes", &DeclareNode { public_ip, name }).await?;
            println!("declared node {} ({}); it is pending until its agent joins", node.name, node.public_ip);
        }
        NodeCommand::Remove { name } => {
            client.delete(&format!("/v1/nodes/{name}")).await?;
            println!("removed node {name}; its certificate is revoked");
        }
        NodeCommand::Label { name, changes } => {
            let change = label_change(&changes)?;
            let node: NodeRecord = client.send(Method::POST, &format!("/v1/nodes/{name}/labels"), &change).await?;
            let labels = node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
            println!("node {name} labels: {}", if labels.is_empty() { "none" } else { &labels });
        }
        NodeCommand::Summary { format } => {
            let sum: NodeSummary = client.get("/v1/node-summary").await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&sum)?),
                Format::Table => print!("{}", summary_text(&sum)),
            }
        }
        NodeCommand::List { format } => {
            let nodes: Vec<NodeView> = client.get("/v1/nodes").await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&nodes)?),
                Format::Table => {
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let capacity = n.capacity.as_ref().map_or("-".to_string(), |c| {
                                format!("{} cpu, {} MiB, {}", c.cpus, c.memory_bytes / (1024 * 1024), c.arch)
                            });
                            let labels = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                            let conditions = n.conditions.iter().map(|c| format!("{}: {}", c.kind, c.message)).collect::<Vec<_>>().join("; ");
                            vec![
                                n.name.clone(),
                                n.public_ip.clone(),
                                format!("{:?}", n.state).to_lowercase(),
                                n.last_seen_ms.map_or("never".into(), ago),
                                if labels.is_empty() { "-".into() } else { labels },
                                capacity,
                                format!("{}/{}", n.containers_running, n.containers_desired),
                                n.cert_expires_ms.map_or("-".into(), until),
                                if conditions.is_empty() { "-".into() } else { conditions },
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table::render(&["NAME", "PUBLIC IP", "STATE", "LAST SEEN", "LABELS", "CAPACITY", "CONTAINERS", "CERT EXPIRES", "CONDITIONS"], &rows)
                    );
                }
            }
        }
    }
    Ok(())
}

/// "in 29d", "in 3h", "in 40s", or "expired 2h ago", for a unix-ms time.
fn until(ms: u64) -> String {
    let now = crate::model::now_ms();
    let (secs, past) = if ms >= now { ((ms - now) / 1000, false) } else { ((now - ms) / 1000, true) };
    let span = match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    };
    if past { format!("expired {span} ago") } else { format!("in {span}") }
}

/// `K=V` and `K-` arguments as one change.
fn label_change(args: &[String]) -> Result<LabelNode> {
    let mut change = LabelNode::default();
    for arg in args {
        if let Some((key, value)) = arg.split_once('=') {
            change.set.insert(key.to_string(), value.to_string());
        } else if let Some(key) = arg.strip_suffix('-') {
            change.remove.push(key.to_string());
        } else {
            anyhow::bail!("'{arg}' is neither KEY=VALUE (set) nor KEY- (remove)");
        }
    }
    Ok(change)
}

fn summary_text(sum: &NodeSummary) -> String {
    let nodes = |n: usize| if n == 1 { "1 node".to_string() } else { format!("{n} nodes") };
    let mut out = format!("{}: {} ready, {} offline, {} pending\n", nodes(sum.nodes), sum.ready, sum.offline, sum.pending);
    out += &format!("containers: {}/{} running\n", sum.containers_running, sum.containers_desired);
    if sum.not_acked > 0 {
        out += &match sum.not_acked {
            1 => "1 node has not stored its latest desired state yet\n".to_string(),
            n => format!("{n} nodes have not stored their latest desired state yet\n"),
        };
    }
    for (kind, count) in &sum.conditions {
        out += &format!("{kind}: {}\n", nodes(*count));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_in_words() {
        let one = NodeSummary { nodes: 1, ready: 1, containers_desired: 2, containers_running: 1, not_acked: 1, ..NodeSummary::default() };
        assert_eq!(summary_text(&one), "1 node: 1 ready, 0 offline, 0 pending\ncontainers: 1/2 running\n1 node has not stored its latest desired state yet\n");
        let mut many = NodeSummary { nodes: 3, ready: 1, offline: 2, not_acked: 2, ..NodeSummary::default() };
        many.conditions.insert("StoreWriteFailed".into(), 2);
        assert_eq!(
            summary_text(&many),
            "3 nodes: 1 ready, 2 offline, 0 pending\ncontainers: 0/0 running\n2 nodes have not stored their latest desired state yet\nStoreWriteFailed: 2 nodes\n"
        );
    }
}

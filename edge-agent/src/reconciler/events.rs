//! Docker events for this node's containers: a container that dies, is
//! killed or removed behind the agent's back wakes the reconcile loop at
//! once, instead of at the next periodic pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::config::LABEL_NODE;

/// Container events that can leave the node short of its desired state.
const ACTIONS: &[&str] = &["die", "stop", "kill", "oom", "destroy", "pause"];

/// Watches the engine's event stream forever (reconnecting when the
/// engine restarts) and notifies `wake` on each relevant event.
pub async fn watch_forever(docker: Docker, node: String, wake: Arc<Notify>) {
    loop {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{LABEL_NODE}={node}")]),
            ("event", ACTIONS.iter().map(|a| a.to_string()).collect()),
        ]);
        let opts = EventsOptionsBuilder::new().filters(&filters).build();
        let mut stream = docker.events(Some(opts));
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => {
                    tracing::debug!(action = e.action.as_deref().unwrap_or(""), "container event");
                    wake.notify_one();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "docker event stream failed");
                    break;
                }
            }
        }
        // The engine went away; the periodic pass covers the gap.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

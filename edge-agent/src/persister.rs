//! The agent's one durable writer. Desired states from the master go
//! through here: stored, then handed to the reconciler, then announced as
//! durable so the connector can ack them. Never ack what is not on disk.
//!
//! Latest wins: states that arrive while a write is in progress are merged
//! into one write of the newest. The connector never waits for the disk, so
//! heartbeats keep flowing while a slow or full disk holds a write back.
//! A failed write (full disk) is retried with back-off until it succeeds or
//! a newer state replaces it; the node reports the condition meanwhile and
//! its containers keep running on the last stored state.

use std::time::Duration;

use fogmesh_common::wire::DesiredState;
use tokio::sync::{mpsc, watch};

use crate::local_store::{Loaded, LocalStore, StoredState};
use crate::status::{StatusBoard, DECOMMISSIONED, HANDED_OFF, STORE_LOST, STORE_WRITE_FAILED};

const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub enum Command {
    /// A complete desired state from the master.
    Apply(DesiredState),
    /// The master removed this node: stop running its workloads.
    Decommission { reason: String },
    /// Another agent took over this node: leave its containers alone.
    HandOff { reason: String },
}

/// What the reconciler should do.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// The agent does not know (its store was lost and the master has not
    /// answered yet): keep every container of this node as it is, remove nothing.
    Unknown,
    /// Run exactly these containers.
    Desired(DesiredState),
    /// Another agent manages this node now: touch nothing.
    HandsOff,
}

impl Applied {
    fn of(state: &StoredState) -> Applied {
        match state {
            StoredState::HandedOff { .. } => Applied::HandsOff,
            other => Applied::Desired(other.desired()),
        }
    }
}

pub struct PersistHandles {
    pub commands: mpsc::UnboundedSender<Command>,
    /// Newest durably stored generation (0: none).
    pub durable: watch::Receiver<u64>,
    pub applied: watch::Receiver<Applied>,
}

/// Loads the store, reports what it found, and starts the writer task.
pub fn start(store: LocalStore, board: StatusBoard, node: &str) -> PersistHandles {
    let initial = match store.load() {
        Loaded::Stored(state) => {
            tracing::info!(%node, generation = state.generation(), containers = state.desired().containers.len(), "starting from the stored desired state");
            raise_conditions(&board, &state);
            Some(state)
        }
        Loaded::Missing => {
            tracing::warn!(%node, "no stored desired state: keeping every container of this node running as it is until the master answers");
            None
        }
        Loaded::Corrupt { error, moved_to } => {
            let aside = moved_to.map_or("could not be moved".to_string(), |p| format!("moved to {}", p.display()));
            let message = format!("the local store was unreadable ({error}); {aside}; keeping this node's containers until the master answers");
            tracing::error!(%node, "{message}");
            board.set_condition(STORE_LOST, message);
            None
        }
    };
    let generation = initial.as_ref().map_or(0, StoredState::generation);
    let (durable_tx, durable) = watch::channel(generation);
    let (applied_tx, applied) = watch::channel(initial.as_ref().map_or(Applied::Unknown, Applied::of));
    let (commands, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_forever(store, board, rx, initial, durable_tx, applied_tx));
    PersistHandles { commands, durable, applied }
}

async fn write_forever(
    store: LocalStore,
    board: StatusBoard,
    mut rx: mpsc::UnboundedReceiver<Command>,
    mut current: Option<StoredState>,
    durable: watch::Sender<u64>,
    applied: watch::Sender<Applied>,
) {
    let mut pending: Option<StoredState> = None;
    let mut retry = RETRY_FIRST;
    loop {
        if pending.is_none() {
            match rx.recv().await {
                Some(cmd) => pending = next_state(current.as_ref(), pending.take(), cmd),
                None => return,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            pending = next_state(current.as_ref(), pending.take(), cmd);
        }
        let Some(target) = pending.clone() else { continue };
        let writer = store.clone();
        let to_write = target.clone();
        let result = tokio::task::spawn_blocking(move || writer.save(&to_write))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("store writer task failed: {e}")));
        match result {
            Ok(()) => {
                tracing::info!(generation = target.generation(), containers = target.desired().containers.len(), "desired state stored");
                board.clear_condition(STORE_WRITE_FAILED);
                board.clear_condition(STORE_LOST);
                raise_conditions(&board, &target);
                applied.send_replace(Applied::of(&target));
                durable.send_replace(target.generation());
                current = Some(target);
                pending = None;
                retry = RETRY_FIRST;
            }
            Err(e) => {
                let message = format!(
                    "cannot store desired state generation {}: {e:#}; containers keep running on the last stored state; retrying",
                    target.generation()
                );
                tracing::error!("{message}");
                board.set_condition(STORE_WRITE_FAILED, message);
                // Wait, but take a newer state at once if one comes.
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => pending = next_state(current.as_ref(), pending.take(), cmd),
                        None => return,
                    },
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Stored states the operator must know about.
fn raise_conditions(board: &StatusBoard, state: &StoredState) {
    match state {
        StoredState::Decommissioned { reason, .. } => board.set_condition(DECOMMISSIONED, reason.clone()),
        StoredState::HandedOff { reason, .. } => board.set_condition(HANDED_OFF, reason.clone()),
        StoredState::Desired(_) => {
            board.clear_condition(DECOMMISSIONED);
            board.clear_condition(HANDED_OFF);
        }
    }
}

/// The state to write after `cmd`, given what is stored and what is
/// already waiting; `None` when nothing needs writing.
fn next_state(current: Option<&StoredState>, pending: Option<StoredState>, cmd: Command) -> Option<StoredState> {
    let stored_generation = current.map_or(0, StoredState::generation);
    match cmd {
        Command::Apply(state) => {
            let newest = pending.as_ref().map_or(stored_generation, StoredState::generation).max(stored_generation);
            if state.generation > newest {
                Some(StoredState::Desired(state))
            } else {
                pending
            }
        }
        Command::Decommission { reason } => {
            if matches!(current, Some(StoredState::Decommissioned { .. })) && pending.is_none() {
                return None;
            }
            let generation = pending.as_ref().map_or(stored_generation, StoredState::generation).max(stored_generation);
            Some(StoredState::Decommissioned { generation, reason })
        }
        Command::HandOff { reason } => {
            if matches!(current, Some(StoredState::HandedOff { .. })) && pending.is_none() {
                return None;
            }
            let generation = pending.as_ref().map_or(stored_generation, StoredState::generation).max(stored_generation);
            Some(StoredState::HandedOff { generation, reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64) -> DesiredState {
        DesiredState { generation, ..Default::default() }
    }

    #[test]
    fn only_newer_states_are_written_and_decommission_wins() {
        let stored = StoredState::Desired(state(5));
        assert_eq!(next_state(Some(&stored), None, Command::Apply(state(5))), None);
        assert_eq!(next_state(Some(&stored), None, Command::Apply(state(4))), None);
        let six = next_state(Some(&stored), None, Command::Apply(state(6)));
        assert_eq!(six, Some(StoredState::Desired(state(6))));
        // An older state arriving behind a newer pending one does not replace it.
        assert_eq!(next_state(Some(&stored), six.clone(), Command::Apply(state(5))), six);
        let gone = next_state(Some(&stored), six, Command::Decommission { reason: "removed".into() });
        assert_eq!(gone, Some(StoredState::Decommissioned { generation: 6, reason: "removed".into() }));
        assert_eq!(next_state(None, None, Command::Apply(state(1))), Some(StoredState::Desired(state(1))));
        let off = next_state(Some(&stored), None, Command::HandOff { reason: "replaced".into() });
        assert_eq!(off, Some(StoredState::HandedOff { generation: 5, reason: "replaced".into() }));
        assert_eq!(Applied::of(off.as_ref().unwrap()), Applied::HandsOff);
    }
}

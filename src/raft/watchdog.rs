//! Ends the process when Raft stops without being asked to.
//!
//! openraft's core stops for good on a storage failure (a failed write, a state machine error)
//! or when its task dies; every request then fails with `channel closed` while the process,
//! its ports and `/health` stay up. Nothing but a restart brings the member back, so the
//! watchdog makes that happen: it exits with [`crate::crash::EXIT_STATUS`] and the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::async_runtime::WatchReceiver;

use super::Raft;
use crate::crash;

/// Watches `raft` until it stops; exits the process unless `stopping` was set first (an
/// orderly shutdown).
///
/// It waits on the server metrics (vote, state, leader, membership), not the full metrics,
/// which change with every commit and would wake it for each. A stopping core sets its fatal
/// error in the full metrics and then drops both senders, so the reason is read from there.
pub async fn run(raft: Raft, stopping: Arc<AtomicBool>) {
    let mut server = raft.server_metrics();
    let reason = loop {
        if let Some(fatal) = fatal_error(&raft) {
            break fatal;
        }
        if server.changed().await.is_err() {
            break fatal_error(&raft).unwrap_or_else(|| "raft stopped: its core task ended".to_string());
        }
    };
    if !stopping.load(Ordering::SeqCst) {
        crash::exit(&reason);
    }
}

/// The error Raft stopped with, if it did.
fn fatal_error(raft: &Raft) -> Option<String> {
    let state = raft.metrics().borrow_watched().running_state.clone();
    state.err().map(|fatal| format!("raft stopped: {fatal}"))
}

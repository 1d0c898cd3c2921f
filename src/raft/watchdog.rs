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
pub async fn run(raft: Raft, stopping: Arc<AtomicBool>) {
    let mut metrics = raft.metrics();
    loop {
        let failed = metrics.borrow_watched().running_state.clone().err();
        let gone = match failed {
            Some(fatal) => Some(format!("raft stopped: {fatal}")),
            None => match metrics.changed().await {
                Ok(()) => None,
                Err(_) => Some("raft stopped: its core task ended".to_string()),
            },
        };
        if let Some(reason) = gone {
            if !stopping.load(Ordering::SeqCst) {
                crash::exit(&reason);
            }
            return;
        }
    }
}

//! How the leader's lease task (`crate::lease::expiry`) sees Raft: this member's leadership
//! from Raft's metrics, and proposals straight to the local Raft.

use concord_proto::raftpb::command::Request;
use openraft::async_runtime::WatchReceiver;

use super::{Command, Raft};
use crate::lease::expiry::{Consensus, Leadership};

impl Consensus for Raft {
    fn leadership(&self) -> Leadership {
        let metrics = self.metrics();
        let m = metrics.borrow_watched();
        Leadership {
            term: m.state.is_leader().then_some(m.current_term),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.as_ref().map_or(0, |id| id.index),
        }
    }

    async fn propose(&self, request: Request) -> Result<(), String> {
        self.client_write(Command::from(request))
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

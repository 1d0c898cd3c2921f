//! openraft's configuration for etcd's flags (its timers above all).

use openraft::{Config as RaftConfig, SnapshotPolicy};

use super::network::PEER_MESSAGE_BYTES;
use crate::config::Config;
use crate::error::Error;

/// openraft's timers for etcd's flags.
///
/// etcd's follower campaigns after a random `[E, 2E)` without hearing from the leader, where
/// `E` is `--election-timeout`. An openraft follower waits out the leader's lease
/// (`election_timeout_max` since the last heartbeat, during which it also refuses to vote for
/// anyone else) and then a random `[election_timeout_min, election_timeout_max)`. Mapping `E`
/// onto `election_timeout_min` as etcd's flag reads would put the first campaign at
/// `[3E, 4E)`. With `max = E/2` and `min = E/4` a follower campaigns `[0.75E, E)` after the
/// last heartbeat, so a dead leader is replaced within `--election-timeout`, as the flag
/// promises, while the randomised spread that keeps votes from splitting stays `E/4`. etcd's
/// rule `E >= 5 × heartbeat` keeps `min` above the heartbeat interval, as openraft requires.
pub fn raft_config(config: &Config) -> Result<RaftConfig, Error> {
    let election = config.election_timeout.as_millis() as u64;
    // A batch of entries, each at most a request's size, must fit in one peer message.
    let entry_bytes = config.max_request_bytes.max(1) + 4096;
    let max_payload_entries = (PEER_MESSAGE_BYTES / entry_bytes).clamp(1, 300) as u64;
    RaftConfig {
        max_payload_entries,
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: election / 4,
        election_timeout_max: election / 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Config(e.to_string()))
}

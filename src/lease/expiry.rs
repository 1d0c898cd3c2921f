//! The leader's lease task: proposes expiries and checkpoints through consensus.
//!
//! It sees consensus only through [`Consensus`] (which `crate::raft` implements for its Raft
//! handle), so leases stand on their own: Raft applies to the lessor, never the reverse.
//!
//! Every [`TICK`] it starts or stops the lease clock as this member gains or loses leadership
//! (see `Promotion`), then proposes at most [`EXPIRIES_PER_TICK`] expired leases in one
//! `LeaseExpiry` command and the due checkpoints in one `LeaseCheckpoints` command. At most
//! [`EXPIRIES_IN_FLIGHT`] expiry commands wait for apply at once, so a wave of expiring leases
//! is revoked at a bounded rate (5,000 leases per second) and client writes keep flowing
//! between its batches.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::raftpb::command::Request;
use concord_proto::raftpb::{LeaseCheckpoint, LeaseCheckpoints, LeaseExpiry};
use tokio::sync::Semaphore;

use super::Lessor;

/// How often the task looks at the clock.
pub const TICK: Duration = Duration::from_millis(50);
/// The most leases one expiry command revokes.
pub const EXPIRIES_PER_TICK: usize = 250;
/// The most expiry commands waiting to be applied.
pub const EXPIRIES_IN_FLIGHT: usize = 2;
/// The most checkpoints one command carries (etcd's batch limit too).
pub const CHECKPOINTS_PER_COMMAND: usize = 1000;

/// What the lease task needs of consensus.
pub trait Consensus: Clone + Send + Sync + 'static {
    /// Where this member's leadership stands now.
    fn leadership(&self) -> Leadership;

    /// Proposes `request` on this member (never forwarded: only the leader's clock proposes)
    /// and waits until it is applied.
    fn propose(&self, request: Request) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where a member's leadership stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The term it leads, if it is the leader.
    pub term: Option<u64>,
    /// Index of the last entry in its log.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub last_applied: u64,
}

/// The term this member leads, if it is the leader.
pub fn leader_term(consensus: &impl Consensus) -> Option<u64> {
    consensus.leadership().term
}

/// Starts and stops the lease clock as leadership comes and goes. A new leader's clock starts
/// once everything its log held when it became leader is applied (so every checkpoint of the
/// previous leader is in): whether openraft elected it or restored its leadership on restart
/// without a new entry.
#[derive(Default)]
struct Promotion {
    /// (term, log index to apply first) while waiting to promote.
    pending: Option<(u64, u64)>,
}

impl Promotion {
    /// True if the clock runs for the term this member leads now.
    fn update(&mut self, lessor: &Lessor, consensus: &impl Consensus) -> bool {
        let now = consensus.leadership();
        let promoted = lessor.promoted_term();
        let Some(term) = now.term else {
            self.pending = None;
            if promoted.is_some() {
                lessor.demote();
            }
            return false;
        };
        if promoted == Some(term) {
            return true;
        }
        if promoted.is_some() {
            lessor.demote();
        }
        let target = match self.pending {
            Some((t, index)) if t == term => index,
            _ => {
                self.pending = Some((term, now.last_log_index));
                now.last_log_index
            }
        };
        if now.last_applied < target {
            return false;
        }
        self.pending = None;
        tracing::info!(term, "lease clock started");
        lessor.promote(term);
        true
    }
}

/// Runs the lease task until `shutdown` completes.
pub async fn run(lessor: Arc<Lessor>, raft: impl Consensus, shutdown: impl Future<Output = ()>) {
    let expiries = Arc::new(Semaphore::new(EXPIRIES_IN_FLIGHT));
    let mut promotion = Promotion::default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        if !promotion.update(&lessor, &raft) {
            continue;
        }
        // One expiry command per tick at most: the rate bound.
        if let Ok(permit) = expiries.clone().try_acquire_owned() {
            let ids = lessor.take_expired(EXPIRIES_PER_TICK);
            if !ids.is_empty() {
                tracing::debug!(leases = ids.len(), "expiring leases");
                let raft = raft.clone();
                tokio::spawn(async move {
                    if let Err(err) = raft.propose(Request::LeaseExpiry(LeaseExpiry { ids })).await {
                        tracing::warn!(error = %err, "lease expiry not committed; will retry");
                    }
                    drop(permit);
                });
            }
        }
        let checkpoints = lessor.take_due_checkpoints(CHECKPOINTS_PER_COMMAND);
        if !checkpoints.is_empty() {
            let raft = raft.clone();
            tokio::spawn(async move {
                let request = Request::LeaseCheckpoints(LeaseCheckpoints { checkpoints });
                if let Err(err) = raft.propose(request).await {
                    tracing::debug!(error = %err, "lease checkpoint not committed");
                }
            });
        }
    }
}

/// Records every live lease's remaining time before a clean shutdown, so the next leader (or
/// this member after its restart) continues each countdown exactly. Best effort, bounded by
/// `timeout`.
pub async fn final_checkpoint(lessor: &Lessor, raft: &impl Consensus, timeout: Duration) {
    if lessor.promoted_term().is_none() || leader_term(raft) != lessor.promoted_term() {
        return;
    }
    let all = lessor.all_remaining();
    let proposals = all
        .chunks(CHECKPOINTS_PER_COMMAND)
        .map(|chunk: &[LeaseCheckpoint]| {
            raft.propose(Request::LeaseCheckpoints(LeaseCheckpoints {
                checkpoints: chunk.to_vec(),
            }))
        });
    match tokio::time::timeout(timeout, futures::future::join_all(proposals)).await {
        Ok(results) => {
            if let Some(Err(err)) = results.into_iter().find(Result::is_err) {
                tracing::warn!(error = %err, "final lease checkpoint failed");
            } else if !all.is_empty() {
                tracing::info!(leases = all.len(), "recorded every lease's remaining time");
            }
        }
        Err(_) => tracing::warn!("final lease checkpoint timed out"),
    }
}

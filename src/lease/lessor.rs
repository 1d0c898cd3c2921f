//! [`Lessor`]: every lease, the keys attached to it, and the leader's expiry clock.
//!
//! Two kinds of callers share it:
//!
//! - **Apply** (every member, deterministic, no clock reads that change replicated state):
//!   grants, revokes, expiries and checkpoints arrive as Raft commands and change the lease
//!   table in the same redb transaction as the keys they delete; every MVCC event of the batch
//!   moves keys between leases ([`LeaseState::track`]).
//! - **The leader** (once it has applied every entry it had when it became leader, see
//!   [`Lessor::promote`]): keeps a deadline per lease, renews on keepalive, and picks the
//!   leases to expire and to checkpoint ([`Lessor::take_expired`],
//!   [`Lessor::take_due_checkpoints`]); the expiry task proposes them through Raft.
//!
//! The clock is tokio's (`tokio::time::Instant`), so tests pause and advance it.
//!
//! # Remaining TTL across leader changes and restarts
//!
//! etcd gives every lease its full TTL again when a new leader takes over (or the cluster
//! restarts). Concord's leader instead records how much time each lease has left
//! (`LeaseCheckpoints` commands), and a new leader continues from there:
//!
//! - a lease is checkpointed once the recorded remaining time overstates the real one by more
//!   than its *slack*: half its TTL, at least 1 s, at most 60 s;
//! - a keepalive of a lease whose recorded remaining time is below its TTL records the full
//!   TTL before it is answered, so the record never understates a live lease (a new leader
//!   never expires a lease early);
//! - every keepalive starts a new *generation* of the lease, and a checkpoint carries the
//!   generation it was computed in: one computed before a keepalive but applied after the
//!   keepalive's own record is ignored, so it cannot bring back the shorter time;
//! - so after a leader change or restart a lease expires at most its slack (plus the time
//!   without a leader, during which nobody can keep leases alive) after its true deadline, and
//!   never before it.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use concord_proto::mvccpb::Event;
use concord_proto::mvccpb::event::EventType;
use concord_proto::raftpb::{LeaseCheckpoint, LeaseRecord};
use redb::WriteTransaction;
use tokio::sync::watch;

use super::table;
use crate::mvcc::{LeaseLookup, MvccError, MvccStore, WriteBatch};

/// The least slack a lease gets (see the module docs).
const MIN_SLACK: Duration = Duration::from_secs(1);
/// The most slack a lease gets.
const MAX_SLACK: Duration = Duration::from_secs(60);
/// How long an expired lease waits before its revocation is proposed again (the first
/// proposal was lost, e.g. to a leader change).
const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// How far a lease's recorded remaining time may drift from the real one.
fn slack(ttl: Duration) -> Duration {
    (ttl / 2).clamp(MIN_SLACK, MAX_SLACK)
}

/// The longest time a lease can have: etcd's maximum TTL. Every duration read from a command
/// or the lease table is clamped to it, so no stored value can overflow the clock.
const MAX_DURATION: Duration = Duration::from_secs(super::MAX_TTL_SECS as u64);

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0)).min(MAX_DURATION)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `at + after` without the panic of `Instant + Duration` on overflow. Durations here are
/// clamped to [`MAX_DURATION`] (about 285 years), which every platform's clock can add; were
/// one ever not to fit, the step is halved until it does.
fn later(at: Instant, mut after: Duration) -> Instant {
    loop {
        if let Some(sum) = at.checked_add(after) {
            return sum;
        }
        after /= 2;
    }
}

/// A queue of (when to look at a lease next, its ID), earliest first.
type LeaseQueue = BinaryHeap<Reverse<(Instant, i64)>>;

/// Pops the lease whose time has come by `now`, if any.
fn pop_due(queue: &mut LeaseQueue, now: Instant) -> Option<i64> {
    match queue.peek() {
        Some(Reverse((at, _))) if *at <= now => queue.pop().map(|Reverse((_, id))| id),
        _ => None,
    }
}

/// One lease.
#[derive(Debug)]
struct Lease {
    /// Granted TTL in seconds.
    ttl: i64,
    /// Recorded remaining time in milliseconds at the last checkpoint (0: the full TTL).
    remaining_ms: i64,
    /// Generation of the last checkpoint applied.
    recorded_generation: i64,
    /// Keepalives so far (the leader's count; starts from the recorded generation).
    generation: i64,
    /// Keys attached to it.
    keys: BTreeSet<Vec<u8>>,
    /// When it expires: the leader's clock; elsewhere an estimate from the last grant or
    /// checkpoint applied.
    deadline: Instant,
    /// The remaining time a new leader would give it, as this leader believes it is recorded.
    recorded: Duration,
    /// When its revocation was last proposed.
    revoking_since: Option<Instant>,
}

impl Lease {
    fn new(record: &LeaseRecord, now: Instant) -> Self {
        let mut lease = Lease {
            ttl: record.ttl,
            remaining_ms: record.remaining_ms,
            recorded_generation: record.generation,
            generation: record.generation,
            keys: BTreeSet::new(),
            deadline: now,
            recorded: Duration::ZERO,
            revoking_since: None,
        };
        lease.restart_clock(now);
        lease
    }

    fn full_ttl(&self) -> Duration {
        secs(self.ttl)
    }

    /// The time a member taking over gives this lease: the recorded remaining time.
    fn recorded_remaining(&self) -> Duration {
        if self.remaining_ms > 0 {
            Duration::from_millis(u64::try_from(self.remaining_ms).unwrap_or(0)).min(MAX_DURATION)
        } else {
            self.full_ttl()
        }
    }

    fn restart_clock(&mut self, now: Instant) {
        self.recorded = self.recorded_remaining();
        self.deadline = later(now, self.recorded);
        self.generation = self.recorded_generation;
        self.revoking_since = None;
    }

    /// When this lease next needs a checkpoint: once its record overstates the real remaining
    /// time by more than its slack.
    fn checkpoint_due(&self) -> Instant {
        later(self.deadline, slack(self.full_ttl()))
            .checked_sub(self.recorded)
            .unwrap_or(self.deadline)
    }

    fn record(&self, id: i64) -> LeaseRecord {
        LeaseRecord {
            id,
            ttl: self.ttl,
            remaining_ms: self.remaining_ms,
            generation: self.recorded_generation,
        }
    }

    /// A checkpoint of `remaining` in the current generation.
    fn checkpoint(&self, id: i64, remaining: Duration) -> LeaseCheckpoint {
        LeaseCheckpoint {
            id,
            remaining_ms: millis(remaining).max(1),
            generation: self.generation,
        }
    }
}

/// What a keepalive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// No such lease, or it has already expired: etcd answers TTL 0.
    NotFound,
    /// Renewed to its full TTL (seconds).
    Renewed {
        /// The granted TTL in seconds.
        ttl: i64,
        /// Set when the recorded remaining time is below the TTL: propose this checkpoint of
        /// the full TTL before answering, or a new leader could expire the lease early.
        record: Option<LeaseCheckpoint>,
    },
}

/// What `LeaseTimeToLive` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Seconds left (rounded down, as etcd does).
    pub remaining: i64,
    /// The granted TTL in seconds.
    pub granted: i64,
    /// The attached keys, in order (only when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// The lease table and the leader's clock, behind [`Lessor`]'s lock.
#[derive(Debug, Default)]
pub struct LeaseState {
    leases: HashMap<i64, Lease>,
    /// The term this member applied its own blank entry in, if it is (or was) the leader and
    /// has not noticed otherwise since.
    promoted_term: Option<u64>,
    /// When to look at each lease next for the leader's expiry check.
    expiry_queue: LeaseQueue,
    /// When each lease may next need a checkpoint.
    checkpoint_queue: LeaseQueue,
}

impl LeaseLookup for LeaseState {
    fn lease_exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }
}

impl LeaseState {
    /// The leases stored in `store`'s database with the keys attached to them. Reading the
    /// keys means reading every live key's row, so a store without leases skips it.
    fn load(store: &MvccStore) -> Result<Self, MvccError> {
        let records = table::load(&store.database())?;
        let leased_keys = if records.is_empty() {
            Vec::new()
        } else {
            store.leased_keys()?
        };
        Ok(LeaseState::from_records(records, leased_keys))
    }

    fn from_records(records: Vec<LeaseRecord>, leased_keys: Vec<(Vec<u8>, i64)>) -> Self {
        let now = Instant::now();
        let mut leases: HashMap<i64, Lease> =
            records.into_iter().map(|r| (r.id, Lease::new(&r, now))).collect();
        for (key, id) in leased_keys {
            match leases.get_mut(&id) {
                Some(lease) => {
                    lease.keys.insert(key);
                }
                None => tracing::warn!(
                    lease = %format!("{id:016x}"),
                    key = %String::from_utf8_lossy(&key),
                    "key is attached to a lease that does not exist"
                ),
            }
        }
        LeaseState {
            leases,
            ..LeaseState::default()
        }
    }

    fn is_promoted(&self) -> bool {
        self.promoted_term.is_some()
    }

    /// Applies a grant: `ttl` is already within bounds. Fails if `id` is taken.
    pub fn grant(&mut self, txn: &WriteTransaction, id: i64, ttl: i64) -> Result<(), MvccError> {
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        let now = Instant::now();
        let promoted = self.is_promoted();
        let Entry::Vacant(slot) = self.leases.entry(id) else {
            return Err(MvccError::LeaseExists);
        };
        let record = LeaseRecord {
            id,
            ttl,
            ..LeaseRecord::default()
        };
        let lease = Lease::new(&record, now);
        table::save(txn, &lease.record(id))?;
        if promoted {
            self.expiry_queue.push(Reverse((lease.deadline, id)));
            self.checkpoint_queue.push(Reverse((lease.checkpoint_due(), id)));
        }
        slot.insert(lease);
        Ok(())
    }

    /// Applies a revoke: deletes the lease's keys in one revision, then the lease.
    pub fn revoke(&mut self, batch: &mut WriteBatch<'_>, id: i64) -> Result<(), MvccError> {
        let keys: Vec<Vec<u8>> = match self.leases.get(&id) {
            Some(lease) => lease.keys.iter().cloned().collect(),
            None => return Err(MvccError::LeaseNotFound),
        };
        batch.delete_keys(&keys)?;
        table::remove(batch.transaction(), id)?;
        // The keys belonged to this lease alone: they leave with it.
        self.leases.remove(&id);
        Ok(())
    }

    /// Applies checkpoints: records how much time each lease had left (leases already gone,
    /// and checkpoints older than the recorded generation, are skipped).
    pub fn checkpoint(
        &mut self,
        txn: &WriteTransaction,
        checkpoints: &[LeaseCheckpoint],
    ) -> Result<(), MvccError> {
        let now = Instant::now();
        let promoted = self.is_promoted();
        for cp in checkpoints {
            if let Some(lease) = self.leases.get_mut(&cp.id)
                && cp.generation >= lease.recorded_generation
            {
                lease.remaining_ms = cp.remaining_ms.max(1);
                lease.recorded_generation = cp.generation;
                lease.generation = lease.generation.max(cp.generation);
                lease.recorded = lease.recorded_remaining();
                if !promoted {
                    // Not the clock's owner: follow the leader's countdown approximately.
                    lease.deadline = later(now, lease.recorded);
                }
                table::save(txn, &lease.record(cp.id))?;
            }
        }
        Ok(())
    }

    /// Moves keys between leases as `events` (put / delete, each with its `prev_kv`) did.
    pub fn track<'e>(&mut self, events: impl IntoIterator<Item = &'e Event>) {
        for event in events {
            let Some(kv) = &event.kv else { continue };
            let old = event.prev_kv.as_ref().map_or(0, |p| p.lease);
            let new = if event.r#type == EventType::Put as i32 {
                kv.lease
            } else {
                0
            };
            if old == new {
                continue;
            }
            if let Some(lease) = self.leases.get_mut(&old) {
                lease.keys.remove(&kv.key[..]);
            }
            if let Some(lease) = self.leases.get_mut(&new) {
                lease.keys.insert(kv.key.to_vec());
            }
        }
    }

    /// Restarts every lease's clock from its recorded remaining time, for leader term `term`.
    fn promote(&mut self, term: u64) {
        let now = Instant::now();
        self.promoted_term = Some(term);
        self.expiry_queue.clear();
        self.checkpoint_queue.clear();
        for (&id, lease) in &mut self.leases {
            lease.restart_clock(now);
            self.expiry_queue.push(Reverse((lease.deadline, id)));
            self.checkpoint_queue.push(Reverse((lease.checkpoint_due(), id)));
        }
    }
}

/// Every lease and its keys; shared by the state machine, the lease service and the expiry
/// task.
#[derive(Debug)]
pub struct Lessor {
    state: Mutex<LeaseState>,
    promoted: watch::Sender<Option<u64>>,
}

impl Lessor {
    /// Loads the leases stored in `store`'s database and attaches the store's leased keys.
    pub fn open(store: &MvccStore) -> Result<Self, MvccError> {
        let state = LeaseState::load(store)?;
        Ok(Lessor {
            state: Mutex::new(state),
            promoted: watch::Sender::new(None),
        })
    }

    /// Reloads everything from the store (after a snapshot replaced it). The clock stops until
    /// the next promotion.
    pub fn reload(&self, store: &MvccStore) -> Result<(), MvccError> {
        let fresh = LeaseState::load(store)?;
        *self.lock() = fresh;
        self.promoted.send_replace(None);
        Ok(())
    }

    /// The lease table, for applying a batch (hold it for the whole batch).
    pub fn lock(&self) -> MutexGuard<'_, LeaseState> {
        // A panic while holding the lock leaves the table as it was between two commands,
        // which is as consistent as it ever is.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This member leads `term` and has applied every entry its log held when it became
    /// leader, so every lease's recorded remaining time is final: start the clock from it.
    pub fn promote(&self, term: u64) {
        self.lock().promote(term);
        self.promoted.send_replace(Some(term));
    }

    /// The term this member's clock runs for, if any.
    pub fn promoted_term(&self) -> Option<u64> {
        self.lock().promoted_term
    }

    /// A receiver of the promoted term (to wait for a promotion).
    pub fn watch_promotion(&self) -> watch::Receiver<Option<u64>> {
        self.promoted.subscribe()
    }

    /// This member is no longer the leader of the promoted term: stop the clock.
    pub fn demote(&self) {
        {
            let mut state = self.lock();
            if state.promoted_term.is_none() {
                return;
            }
            state.promoted_term = None;
            state.expiry_queue.clear();
            state.checkpoint_queue.clear();
        }
        self.promoted.send_replace(None);
    }

    /// A keepalive on the leader: pushes the deadline to a full TTL from now.
    pub fn renew(&self, id: i64) -> Renewal {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(lease) = state.leases.get_mut(&id) else {
            return Renewal::NotFound;
        };
        if lease.deadline <= now {
            return Renewal::NotFound;
        }
        lease.deadline = later(now, lease.full_ttl());
        lease.generation = lease.generation.saturating_add(1);
        let record = (lease.recorded < lease.full_ttl()).then(|| lease.checkpoint(id, lease.full_ttl()));
        Renewal::Renewed {
            ttl: lease.ttl,
            record,
        }
    }

    /// The lease's remaining and granted TTL, and its keys if `with_keys`.
    pub fn time_to_live(&self, id: i64, with_keys: bool) -> Option<TimeToLive> {
        let now = Instant::now();
        let state = self.lock();
        let lease = state.leases.get(&id)?;
        let remaining = lease.deadline.saturating_duration_since(now);
        Some(TimeToLive {
            remaining: i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX),
            granted: lease.ttl,
            keys: if with_keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Every lease ID, in order.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Up to `limit` leases whose deadline has passed and whose revocation is not already
    /// under way (one retried after `REVOKE_RETRY`). Empty unless promoted.
    pub fn take_expired(&self, limit: usize) -> Vec<i64> {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut expired = Vec::new();
        while expired.len() < limit {
            let Some(id) = pop_due(&mut state.expiry_queue, now) else {
                break;
            };
            let Some(lease) = state.leases.get_mut(&id) else {
                continue;
            };
            let next = if lease.deadline > now {
                lease.deadline
            } else {
                match lease.revoking_since {
                    Some(since) if now < since + REVOKE_RETRY => since + REVOKE_RETRY,
                    _ => {
                        lease.revoking_since = Some(now);
                        expired.push(id);
                        now + REVOKE_RETRY
                    }
                }
            };
            state.expiry_queue.push(Reverse((next, id)));
        }
        expired
    }

    /// Up to `limit` checkpoints that are due (see the module docs). The leader's view of what
    /// is recorded is lowered at once, so a checkpoint is not proposed twice; if the proposal
    /// is lost that view is too low, which only makes the next checkpoint come later.
    pub fn take_due_checkpoints(&self, limit: usize) -> Vec<LeaseCheckpoint> {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut due = Vec::new();
        while due.len() < limit {
            let Some(id) = pop_due(&mut state.checkpoint_queue, now) else {
                break;
            };
            let Some(lease) = state.leases.get_mut(&id) else {
                continue;
            };
            let next = lease.checkpoint_due();
            if next > now {
                state.checkpoint_queue.push(Reverse((next, id)));
                continue;
            }
            let slack = slack(lease.full_ttl());
            if lease.deadline > now {
                let remaining = lease.deadline - now;
                lease.recorded = remaining;
                due.push(lease.checkpoint(id, remaining));
            }
            state.checkpoint_queue.push(Reverse((now + slack, id)));
        }
        due
    }

    /// Every live lease's remaining time now (a final checkpoint before a clean shutdown).
    pub fn all_remaining(&self) -> Vec<LeaseCheckpoint> {
        let now = Instant::now();
        let state = self.lock();
        if !state.is_promoted() {
            return Vec::new();
        }
        state
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline > now)
            .map(|(&id, lease)| lease.checkpoint(id, lease.deadline - now))
            .collect()
    }
}

#[cfg(test)]
mod tests;

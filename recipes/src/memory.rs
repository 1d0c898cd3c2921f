//! [`MemoryKv`]: an in-memory [`Kv`] with etcd's semantics, for testing recipes without a
//! server. It is a test double, built only for tests (and with the `testing` feature); every
//! recipe also runs against the real server in `tests/e2e/recipes/`, so the double and the store
//! cannot drift apart unnoticed.
//!
//! What it does not do, so a recipe's unit test must not need it:
//! - nested txns (refused with `UNIMPLEMENTED`);
//! - ranges at a revision inside a txn (refused with `UNIMPLEMENTED`);
//! - compaction: history is kept forever (a test that needs a compacted watch wraps it, as
//!   `pubsub`'s tests do);
//! - time: leases never expire on their own; a test ends one with
//!   [`MemoryKv::expire_lease`];
//! - limits: no `--max-request-bytes`, no `--max-txn-ops`.
//!
//! One `std::sync::Mutex` guards the whole store. No call awaits while holding it, and one lock
//! makes each txn, and the events it hands to watchers, atomic and in revision order with no
//! further care. History is kept forever (there is no compaction), so a watch can start at any
//! past revision and a range can read at one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::etcdserverpb::{
    LeaseGrantResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest,
};
use concord_proto::mvccpb::{Event, event::EventType};
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::Result;
use crate::kv::{Kv, WatchBatch, WatchStream};

mod state;

use state::{Lease, State};

/// An in-memory store with etcd's revisions, txns, watches and leases, and no clock: leases
/// never expire on their own, a test ends one with [`MemoryKv::expire_lease`]. Clones share
/// the store.
#[derive(Clone, Default)]
pub struct MemoryKv {
    state: Arc<Mutex<State>>,
}

/// One open watch: what it wants, and where to send it.
struct Watcher {
    /// The first revision it wants.
    from: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    sink: mpsc::UnboundedSender<Result<WatchBatch>>,
}

impl MemoryKv {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.revision = state.revision.max(1);
        state
    }

    /// The state, unless [`set_unavailable`](Self::set_unavailable) is on.
    fn available(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.state();
        if state.unavailable {
            return Err(Status::unavailable("MemoryKv: unavailable").into());
        }
        Ok(state)
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.state().revision
    }

    /// Ends lease `id` as the server's expiry would: its keys are deleted in one revision.
    /// False if there was no such lease.
    pub fn expire_lease(&self, id: i64) -> bool {
        self.state().revoke(id).is_ok()
    }

    /// Whether lease `id` exists.
    pub fn has_lease(&self, id: i64) -> bool {
        self.state().leases.contains_key(&id)
    }

    /// How many keep-alives lease `id` has received (also after it ended).
    pub fn keep_alives(&self, id: i64) -> u64 {
        self.state().keep_alives.get(&id).copied().unwrap_or(0)
    }

    /// How many open watches cover `key`.
    pub fn watchers(&self, key: &[u8]) -> usize {
        let state = self.state();
        let open = state.watchers.iter().filter(|w| !w.sink.is_closed());
        open.filter(|w| in_range(key, &w.key, &w.range_end)).count()
    }

    /// While on, every call fails with `UNAVAILABLE` (open watches keep running): a partition.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }
}

impl Kv for MemoryKv {
    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse> {
        Ok(self.available()?.txn(request)?)
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let state = self.available()?;
        let mut response = state.range(&request)?;
        response.header = Some(state.header());
        Ok(response)
    }

    async fn watch(&self, request: WatchCreateRequest) -> Result<WatchStream> {
        let mut state = self.available()?;
        let (sink, mut batches) = mpsc::unbounded_channel();
        let filters = |filter: FilterType| request.filters.contains(&(filter as i32));
        let from = match request.start_revision {
            start if start > 0 => start,
            _ => state.revision + 1,
        };
        let watcher = Watcher {
            from,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            key: request.key,
            range_end: request.range_end,
            prev_kv: request.prev_kv,
            sink,
        };
        let first = state.history.partition_point(|(revision, _)| *revision < from);
        for (revision, events) in &state.history[first..] {
            watcher.send(*revision, state.revision, events);
        }
        state.watchers.push(watcher);
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            batches.poll_recv(cx)
        })))
    }

    async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        let mut state = self.available()?;
        state.last_lease += 1;
        let (id, ttl) = (state.last_lease, ttl.max(1));
        let keys = BTreeSet::new();
        state.leases.insert(id, Lease { ttl, keys });
        let header = Some(state.header());
        Ok(LeaseGrantResponse {
            header,
            id,
            ttl,
            error: String::new(),
        })
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        let mut state = self.available()?;
        *state.keep_alives.entry(id).or_default() += 1;
        Ok(state.leases.get(&id).map_or(0, |lease| lease.ttl))
    }

    async fn lease_revoke(&self, id: i64) -> Result<()> {
        Ok(self.available()?.revoke(id)?)
    }
}

/// Whether `key` is in etcd's range `[start, end)` (`end` empty: just `start`; `\0`: no end).
fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

impl Watcher {
    /// Sends the events of `revision` this watcher wants, as of the store's `current` revision;
    /// false once its stream is gone.
    fn send(&self, revision: i64, current: i64, events: &[Event]) -> bool {
        if revision < self.from {
            return !self.sink.is_closed();
        }
        let wanted = events.iter().filter(|event| {
            let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
            let put = event.r#type == EventType::Put as i32;
            in_range(key, &self.key, &self.range_end) && !(put && self.no_put || !put && self.no_delete)
        });
        let events: Vec<Event> = wanted
            .map(|event| Event {
                prev_kv: event.prev_kv.clone().filter(|_| self.prev_kv),
                ..event.clone()
            })
            .collect();
        if events.is_empty() {
            return !self.sink.is_closed();
        }
        let batch = WatchBatch {
            revision: current,
            events,
        };
        self.sink.send(Ok(batch)).is_ok()
    }
}

#[cfg(test)]
mod tests;

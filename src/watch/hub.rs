//! The [`WatchHub`]: every watcher, and how events reach them (etcd's `watchableStore`).
//!
//! Apply calls [`WatchHub::notify`] after each committed batch. Synced watchers get their
//! events at once, with `try_send` into their stream's bounded channel: apply never waits for a
//! client. A watcher whose channel is full is moved to *unsynced* and remembers the first
//! revision it did not get; the catch-up task ([`WatchHub::run_catch_up`]) later reads that
//! history back from MVCC in bounded chunks and moves the watcher back to synced once it has
//! everything up to the newest notified revision. So a stalled client costs at most its
//! channel (`STREAM_CAPACITY` responses) plus O(1) bookkeeping, however much is written.
//!
//! Ordering and uniqueness: a watcher's events are sent by exactly one of the two paths at a
//! time (synced: `notify`; unsynced: catch-up), always under the hub lock, and each path moves
//! `next_rev` past what it sent. A watcher becomes synced only when its `next_rev` is past the
//! newest notified revision, checked under the same lock `notify` takes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use concord_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use concord_proto::mvccpb::Event;
use tokio::sync::{Notify, mpsc};

use super::fragment;
use super::outgoing::{Outgoing, Sink};
use super::watcher::{WatchOptions, Watcher};
use crate::mvcc::MvccStore;

/// Identifies one gRPC `Watch` stream. Streams order by their client connection first, so
/// [`WatchHub::notify`] wakes all the streams of one HTTP/2 connection together and the
/// connection writes their responses in one batch instead of a packet per response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    connection: u64,
    seq: u64,
}

/// Responses a stream buffers for its client before its watchers fall back to catch-up.
pub const STREAM_CAPACITY: usize = 256;

/// etcd fragments a watch response only when it is larger than `--max-request-bytes` plus the
/// 512 KiB of gRPC overhead it allows requests (its watch server's `maxRequestBytes` is
/// `MaxRequestBytes + grpcOverheadBytes`): with `--max-request-bytes 65536`, etcd 3.4 sends a
/// 540 KB first fragment.
pub const FRAGMENT_SLACK_BYTES: usize = 512 * 1024;

pub(super) type WatcherKey = (StreamId, i64);

/// Per-stream bookkeeping: the ids in use and the next automatic id (etcd starts at 0).
#[derive(Default)]
pub(super) struct StreamIds {
    pub(super) used: HashSet<i64>,
    next_auto: i64,
}

#[derive(Default)]
pub(super) struct HubState {
    /// The newest store revision handed to `notify`: everything up to it is committed.
    pub(super) notified_rev: i64,
    pub(super) synced: BTreeMap<WatcherKey, Watcher>,
    pub(super) unsynced: HashMap<WatcherKey, Watcher>,
    pub(super) streams: HashMap<StreamId, StreamIds>,
}

/// Routes committed events to watchers; see the module docs.
pub struct WatchHub {
    pub(super) store: Arc<MvccStore>,
    state: Mutex<HubState>,
    pub(super) wake: Notify,
    next_stream: AtomicU64,
    pub(super) max_response_bytes: usize,
}

pub(super) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// How delivering one response to a watcher went.
pub(super) enum Delivery {
    Sent,
    Full,
    Closed,
}

/// Sends `responses` (each split into fragments if the watcher asked for it) as one channel
/// item: all or nothing, in order.
pub(super) fn deliver(watcher: &Watcher, responses: Vec<WatchResponse>, max_bytes: usize) -> Delivery {
    let parts: Vec<WatchResponse> = if watcher.options.fragment {
        responses
            .into_iter()
            .flat_map(|r| fragment::split(r, max_bytes))
            .collect()
    } else {
        responses
    };
    send(watcher, Outgoing::from(parts))
}

/// [`deliver`] for a single response, without a vector around it (apply's common case).
fn deliver_one(watcher: &Watcher, response: WatchResponse, max_bytes: usize) -> Delivery {
    if watcher.options.fragment {
        return deliver(watcher, vec![response], max_bytes);
    }
    send(watcher, response.into())
}

fn send(watcher: &Watcher, item: Outgoing) -> Delivery {
    match watcher.sink.try_send(item) {
        Ok(()) => Delivery::Sent,
        Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
    }
}

/// Whether a watcher's stream can take a response now (a stalled client's cannot).
pub(super) fn has_room(watcher: &Watcher) -> bool {
    watcher.sink.capacity() > 0
}

impl WatchHub {
    /// A hub over `store` for a server started with `--max-request-bytes` =
    /// `max_request_bytes`; responses larger than that plus [`FRAGMENT_SLACK_BYTES`] are
    /// fragmented for watchers that asked for it.
    pub fn new(store: Arc<MvccStore>, max_request_bytes: usize) -> Arc<Self> {
        let state = HubState {
            notified_rev: store.current_revision(),
            ..Default::default()
        };
        Arc::new(Self {
            store,
            state: Mutex::new(state),
            wake: Notify::new(),
            next_stream: AtomicU64::new(1),
            max_response_bytes: max_request_bytes + FRAGMENT_SLACK_BYTES,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new stream id for a stream on the client connection identified by `connection`
    /// (any value that is the same for every stream of one connection, e.g. a hash of the
    /// peer address).
    pub fn new_stream(&self, connection: u64) -> StreamId {
        StreamId {
            connection,
            seq: self.next_stream.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The newest revision watchers have been notified of.
    pub fn current_revision(&self) -> i64 {
        self.lock().notified_rev
    }

    /// The revision a watch created now starts from, for a create request's `start_revision`
    /// (`current` as [`Self::reserve`] returned it), as etcd's watchable store decides:
    /// positive is that revision; 0 is the next one; negative is below any compaction, so the
    /// watch is canceled as compacted (with the compact revision) once registered, except -1 on
    /// a store never compacted (whose compact revision is -1 too), which starts from now.
    pub fn start_revision(&self, requested: i64, current: i64) -> i64 {
        match requested {
            r if r > 0 => r,
            r if r < 0 && r < self.store.compacted_revision() => r,
            _ => current + 1,
        }
    }

    /// Reserves a watch id on `stream` (`requested` 0 = pick one, as etcd's `AutoWatchID`), and
    /// returns it with the current revision, for the `created` response. The watcher starts
    /// receiving once [`Self::register`]ed, which the caller does after sending `created`.
    pub fn reserve(&self, stream: StreamId, requested: i64) -> Result<(i64, i64), &'static str> {
        let mut state = self.lock();
        let current = state.notified_rev;
        let ids = state.streams.entry(stream).or_default();
        let id = if requested == 0 {
            while ids.used.contains(&ids.next_auto) {
                ids.next_auto += 1;
            }
            ids.next_auto += 1;
            ids.next_auto - 1
        } else if ids.used.contains(&requested) {
            return Err(concord_proto::rpctypes::DUPLICATE_WATCH_ID.text());
        } else {
            requested
        };
        ids.used.insert(id);
        Ok((id, current))
    }

    /// Starts delivering to a reserved watcher, from `start_rev` on.
    pub fn register(&self, stream: StreamId, id: i64, options: WatchOptions, start_rev: i64, sink: Sink) {
        let watcher = Watcher {
            id,
            options,
            next_rev: start_rev,
            sink,
            sent_since_progress: false,
        };
        let mut state = self.lock();
        if !state.streams.get(&stream).is_some_and(|s| s.used.contains(&id)) {
            return; // the stream went away meanwhile
        }
        if start_rev > state.notified_rev {
            state.synced.insert((stream, id), watcher);
        } else {
            state.unsynced.insert((stream, id), watcher);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Cancels a watcher; false when the stream has no such watch.
    pub fn cancel(&self, stream: StreamId, id: i64) -> bool {
        let mut state = self.lock();
        let known = state.streams.get_mut(&stream).is_some_and(|s| s.used.remove(&id));
        state.synced.remove(&(stream, id));
        state.unsynced.remove(&(stream, id));
        known
    }

    /// Cancels every watcher `refuse` finds a reason to refuse (its owner lost read permission
    /// on its range, say), telling its client with `canceled` and the reason. Called by apply
    /// right after an auth change is published and before any later change is notified, so a
    /// refused watcher receives no event of a revision after the change.
    pub fn cancel_where(&self, refuse: impl Fn(&WatchOptions) -> Option<String>) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut refused = Vec::new();
        for (key, watcher) in state.synced.iter().chain(state.unsynced.iter()) {
            if let Some(reason) = refuse(&watcher.options) {
                refused.push((*key, reason));
            }
        }
        for ((stream, id), reason) in refused {
            let watcher = state
                .synced
                .remove(&(stream, id))
                .or_else(|| state.unsynced.remove(&(stream, id)));
            if let Some(ids) = state.streams.get_mut(&stream) {
                ids.used.remove(&id);
            }
            let Some(watcher) = watcher else { continue };
            let canceled = WatchResponse {
                header: header(state.notified_rev),
                watch_id: id,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            };
            // A stalled client's channel is full: it gets the cancel once it reads again.
            if let Err(mpsc::error::TrySendError::Full(canceled)) = watcher.sink.try_send(canceled.into()) {
                let sink = watcher.sink.clone();
                tokio::spawn(async move {
                    let _ = sink.send(canceled).await;
                });
            }
        }
    }

    /// Drops every watcher of a stream that ended.
    pub fn remove_stream(&self, stream: StreamId) {
        let mut state = self.lock();
        state.streams.remove(&stream);
        state.synced.retain(|(s, _), _| *s != stream);
        state.unsynced.retain(|(s, _), _| *s != stream);
    }

    /// Number of watchers (synced, unsynced).
    pub fn watcher_counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.synced.len(), state.unsynced.len())
    }

    /// Number of open watch streams that have created at least one watch.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    /// Called by apply after a batch is committed: `revision` is the store's revision after it,
    /// `events` its changes in revision order. Never blocks on a client.
    pub fn notify(&self, revision: i64, events: &[Event]) {
        let mut state = self.lock();
        let first_rev = state.notified_rev + 1;
        state.notified_rev = state.notified_rev.max(revision);
        if events.is_empty() {
            return;
        }
        // Build every response first, then send them in one tight pass in connection order,
        // so each connection's streams become ready together.
        let responses: Vec<(WatcherKey, WatchResponse)> = state
            .synced
            .iter()
            .filter_map(|(key, watcher)| {
                let selected = watcher.select(events);
                (!selected.is_empty()).then(|| {
                    let response = WatchResponse {
                        header: header(revision),
                        watch_id: watcher.id,
                        events: selected,
                        ..Default::default()
                    };
                    (*key, response)
                })
            })
            .collect();
        let mut fallen_behind = Vec::new();
        let mut closed = Vec::new();
        // The responses are in the watchers' order: walk both together instead of looking
        // each watcher up again.
        let mut responses = responses.into_iter().peekable();
        for (key, watcher) in state.synced.iter_mut() {
            let Some((_, response)) = responses.next_if(|(next, _)| next == key) else {
                continue;
            };
            match deliver_one(watcher, response, self.max_response_bytes) {
                Delivery::Sent => watcher.sent_since_progress = true,
                Delivery::Full => fallen_behind.push(*key),
                Delivery::Closed => closed.push(*key),
            }
        }
        for key in closed {
            state.synced.remove(&key);
        }
        let woke = !fallen_behind.is_empty();
        for key in fallen_behind {
            if let Some(mut watcher) = state.synced.remove(&key) {
                // A watcher created for a future revision never goes back before it.
                watcher.next_rev = watcher.next_rev.max(first_rev);
                state.unsynced.insert(key, watcher);
            }
        }
        drop(state);
        if woke {
            self.wake.notify_one();
        }
    }

    /// After the store's whole contents were replaced by a snapshot from the leader (etcd's
    /// `watchableStore.Restore`): the events between the newest notified revision and the
    /// snapshot's were never notified, so every synced watcher goes back to catch-up from the
    /// revision after the newest it was sent, and reads them from the new contents' history
    /// (or is cancelled as compacted, if the leader compacted them away).
    pub fn restored(&self) {
        let mut state = self.lock();
        let next_rev = state.notified_rev + 1;
        for (key, mut watcher) in std::mem::take(&mut state.synced) {
            // A watcher created for a future revision (a client resuming on a member that is
            // behind) keeps waiting for that one: nothing before it is its to get.
            watcher.next_rev = watcher.next_rev.max(next_rev);
            state.unsynced.insert(key, watcher);
        }
        state.notified_rev = state.notified_rev.max(self.store.current_revision());
        drop(state);
        self.wake.notify_one();
    }

    /// The revision an on-demand progress response reports for `stream`: the newest notified
    /// one, once every watcher of the stream has been sent all its events up to it; `None`
    /// while any of them is still catching up. The caller answers later then, rather than
    /// with a lower revision: that could be below events the stream already delivered to its
    /// other watchers, and would send a client resuming from it back in time (etcd defers the
    /// same way since etcd-io/etcd#15237; 3.4.23 answered at once with the current revision).
    pub fn progress_revision(&self, stream: StreamId) -> Option<i64> {
        let state = self.lock();
        let catching_up = state.unsynced.keys().any(|(s, _)| *s == stream);
        (!catching_up).then_some(state.notified_rev)
    }

    /// The periodic progress notification: every synced watcher of `stream` that asked for
    /// progress and got no event since the last tick is told the current revision.
    pub fn progress_tick(&self, stream: StreamId) {
        let mut state = self.lock();
        let revision = state.notified_rev;
        for ((s, _), watcher) in state.synced.iter_mut() {
            if *s != stream || !watcher.options.progress_notify {
                continue;
            }
            if !watcher.sent_since_progress {
                let response = WatchResponse {
                    header: header(revision),
                    watch_id: watcher.id,
                    ..Default::default()
                };
                // A full channel means events are on their way anyway; skip this tick.
                let _ = watcher.sink.try_send(response.into());
            }
            watcher.sent_since_progress = false;
        }
    }
}

#[cfg(test)]
mod tests;

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
mod tests {
    use crate::mvcc::test_util::ANY_LEASE;
    use concord_proto::etcdserverpb::{CompactionRequest, PutRequest};
    use redb::Durability;

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<MvccStore>,
        hub: Arc<WatchHub>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("db.redb")).unwrap());
        let store = Arc::new(MvccStore::open(db).unwrap());
        let hub = WatchHub::new(store.clone(), 1 << 20);
        Fixture {
            _dir: dir,
            store,
            hub,
        }
    }

    impl Fixture {
        /// Puts `key` in its own revision, as apply would, and notifies the hub.
        fn put(&self, key: &str) -> i64 {
            let mut batch = self.store.begin_write().unwrap();
            batch
                .put(
                    &PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    },
                    ANY_LEASE,
                )
                .unwrap();
            let committed = batch.commit(Durability::None).unwrap();
            self.hub.notify(committed.revision, &committed.events);
            committed.revision
        }

        fn watch(&self, key: &str, start_rev: i64, capacity: usize) -> mpsc::Receiver<Outgoing> {
            let (sink, rx) = mpsc::channel(capacity);
            let stream = self.hub.new_stream(0);
            let (id, current) = self.hub.reserve(stream, 0).unwrap();
            let start = if start_rev == 0 { current + 1 } else { start_rev };
            self.hub.register(stream, id, prefix(key), start, sink);
            rx
        }
    }

    /// Watches every key starting with `key`.
    fn prefix(key: &str) -> WatchOptions {
        let mut range_end = key.as_bytes().to_vec();
        if let Some(last) = range_end.last_mut() {
            *last += 1;
        }
        WatchOptions {
            key: key.as_bytes().to_vec(),
            range_end,
            ..Default::default()
        }
    }

    fn revisions(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<i64> {
        let mut revs = Vec::new();
        while let Ok(item) = rx.try_recv() {
            for response in item {
                revs.extend(
                    response
                        .events
                        .iter()
                        .map(|e| e.kv.as_ref().unwrap().mod_revision),
                );
            }
        }
        revs
    }

    #[test]
    fn after_a_snapshot_install_watchers_get_the_revisions_it_brought() {
        let f = fixture();
        let mut rx = f.watch("a", 0, 16);
        f.put("a1");
        // What a snapshot brings: revisions committed without passing through notify.
        for key in ["a2", "b1", "a3"] {
            let mut batch = f.store.begin_write().unwrap();
            let put = PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            };
            batch.put(&put, ANY_LEASE).unwrap();
            batch.commit(Durability::None).unwrap();
        }
        // A client that resumed here from a revision this member had not reached yet.
        let mut ahead = f.watch("a", 5, 16);
        f.hub.restored();
        assert_eq!(f.hub.watcher_counts(), (0, 2), "back to catch-up");
        f.hub.catch_up_round().unwrap();
        f.put("a4");
        assert_eq!(revisions(&mut rx), [2, 3, 5, 6]);
        assert_eq!(
            revisions(&mut ahead),
            [5, 6],
            "nothing before the revision it asked for"
        );
        assert_eq!(f.hub.watcher_counts(), (2, 0));
    }

    #[test]
    fn synced_watchers_get_events_from_notify() {
        let f = fixture();
        let mut rx = f.watch("a", 0, 16);
        assert_eq!(f.hub.watcher_counts(), (1, 0));
        f.put("a1");
        f.put("b1");
        f.put("a2");
        assert_eq!(revisions(&mut rx), [2, 4]);
    }

    #[test]
    fn each_synced_watcher_gets_exactly_the_events_it_selects() {
        let f = fixture();
        let mut a = f.watch("a", 0, 16);
        let mut b = f.watch("b", 0, 16);
        let closed = f.watch("a", 0, 16);
        let mut c = f.watch("c", 0, 16);
        let mut full = f.watch("b", 0, 1);
        drop(closed);
        f.put("a1");
        f.put("b1");
        f.put("c1");
        f.put("b2");
        assert_eq!(revisions(&mut a), [2]);
        assert_eq!(revisions(&mut b), [3, 5]);
        assert_eq!(revisions(&mut c), [4]);
        assert_eq!(revisions(&mut full), [3], "its one slot was taken");
        assert_eq!(
            f.hub.watcher_counts(),
            (3, 1),
            "the closed watcher is gone and the full one catches up"
        );
    }

    #[test]
    fn a_full_stream_falls_back_to_catch_up_without_gaps_or_duplicates() {
        let f = fixture();
        let mut rx = f.watch("k", 0, 2);
        for i in 0..10 {
            f.put(&format!("k{i}"));
        }
        assert_eq!(f.hub.watcher_counts(), (0, 1), "the watcher fell behind");
        let mut seen = revisions(&mut rx);
        assert_eq!(seen, [2, 3]);
        // Drain as a slow client would, letting catch-up refill the channel each time.
        for _ in 0..20 {
            f.hub.catch_up_round().unwrap();
            seen.extend(revisions(&mut rx));
            f.put("other");
        }
        assert_eq!(seen, (2..=11).collect::<Vec<_>>());
        assert_eq!(f.hub.watcher_counts(), (1, 0), "caught up and synced again");
        f.put("k-last");
        assert_eq!(revisions(&mut rx).len(), 1);
    }

    #[test]
    fn history_replay_then_live_events() {
        let f = fixture();
        for i in 0..5 {
            f.put(&format!("h{i}"));
        }
        let mut rx = f.watch("h", 3, 64);
        assert_eq!(f.hub.watcher_counts(), (0, 1));
        f.hub.catch_up_round().unwrap();
        assert_eq!(f.hub.watcher_counts(), (1, 0));
        f.put("h5");
        assert_eq!(revisions(&mut rx), [3, 4, 5, 6, 7]);
    }

    #[test]
    fn compacted_start_revision_cancels_with_compact_revision() {
        let f = fixture();
        for i in 0..5 {
            f.put(&format!("c{i}"));
        }
        let mut batch = f.store.begin_write().unwrap();
        batch
            .compact(&CompactionRequest {
                revision: 4,
                ..Default::default()
            })
            .unwrap();
        batch.commit(Durability::None).unwrap();
        let mut rx = f.watch("c", 2, 64);
        f.hub.catch_up_round().unwrap();
        let response = rx.try_recv().unwrap().into_iter().next().unwrap();
        assert!(response.canceled);
        assert_eq!(response.compact_revision, 4);
        assert_eq!(f.hub.watcher_counts(), (0, 0));
    }

    #[test]
    fn duplicate_ids_are_refused_and_auto_ids_skip_used_ones() {
        let f = fixture();
        let stream = f.hub.new_stream(0);
        assert_eq!(f.hub.reserve(stream, 1).unwrap().0, 1);
        assert_eq!(
            f.hub.reserve(stream, 1),
            Err(concord_proto::rpctypes::DUPLICATE_WATCH_ID.text())
        );
        assert_eq!(f.hub.reserve(stream, 0).unwrap().0, 0);
        assert_eq!(f.hub.reserve(stream, 0).unwrap().0, 2);
        assert!(f.hub.cancel(stream, 1));
        assert!(!f.hub.cancel(stream, 1));
    }

    #[test]
    fn progress_revision_waits_for_unsynced_watchers() {
        let f = fixture();
        let stream = f.hub.new_stream(0);
        let (sink, _rx) = mpsc::channel(64);
        f.put("p0");
        f.put("p1");
        let (id, _) = f.hub.reserve(stream, 0).unwrap();
        f.hub.register(stream, id, prefix("p"), 2, sink);
        assert_eq!(
            f.hub.progress_revision(stream),
            None,
            "history from 2 not sent yet"
        );
        f.hub.catch_up_round().unwrap();
        assert_eq!(f.hub.progress_revision(stream), Some(3));
    }
}

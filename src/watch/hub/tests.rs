//! Unit tests of the watch hub: registration, notification, catch-up, compaction, snapshots.
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

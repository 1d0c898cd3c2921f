//! [`MvccStore`]: the MVCC key-value store on a shared redb database.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use concord_proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use concord_proto::mvccpb::Event;
use concord_proto::mvccpb::event::EventType;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableError};

use super::check::{check_range_request, check_txn_request};
use super::error::MvccError;
use super::history::{
    HISTORY, History, META, META_COMPACTED_REVISION, META_CURRENT_REVISION, decode_row, decode_row_meta,
};
use super::index::TreeIndex;
use super::key_span::KeySpan;
use super::range::{self, RangeOptions};
use super::revision::Revision;
use super::txn;
use super::view::Snapshot;
use super::write_batch::WriteBatch;

/// Revision of an empty store (etcd's: the first write gets revision 2).
pub const INITIAL_REVISION: i64 = 1;

/// Compacted revision of a store that was never compacted (etcd's `compactMainRev` too).
pub const NEVER_COMPACTED: i64 = -1;

/// The index and the revisions it is valid for; guarded together by one lock.
#[derive(Debug)]
pub(crate) struct IndexState {
    pub(crate) index: TreeIndex,
    pub(crate) current: i64,
    pub(crate) compacted: i64,
}

/// The MVCC store: history rows in redb, the key index in memory.
///
/// Reads ([`MvccStore::range`], [`MvccStore::read_txn`]) take the index read lock and a redb
/// read transaction. Writes go through a [`WriteBatch`] ([`MvccStore::begin_write`]), which
/// holds the index write lock and one redb write transaction until it commits, so a reader
/// never sees index entries whose rows are not committed. Lock order: the index lock first,
/// then redb's writer lock; do not call the store's read methods on a thread that holds a
/// batch (use the batch's own [`WriteBatch::range`]).
pub struct MvccStore {
    /// Replaced only by defragmentation ([`MvccStore::replace_database`]), under the index
    /// write lock.
    db: RwLock<Arc<Database>>,
    state: RwLock<IndexState>,
    current: AtomicI64,
    compacted: AtomicI64,
    /// How many times the whole contents were replaced (snapshot installs); a defragmentation
    /// that sees it change gives up rather than copy a mix.
    replacements: AtomicU64,
}

impl std::fmt::Debug for MvccStore {
    // The index can be huge: show the revisions only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore")
            .field("current_revision", &self.current_revision())
            .field("compacted_revision", &self.compacted_revision())
            .finish_non_exhaustive()
    }
}

fn poisoned() -> MvccError {
    MvccError::Storage("mvcc index lock poisoned by a panic".into())
}

impl MvccStore {
    /// Opens the store in `db`: creates its tables if missing and rebuilds the index from the
    /// history table.
    pub fn open(db: Arc<Database>) -> Result<Self, MvccError> {
        ensure_tables(&db)?;
        let state = load(&db)?;
        let (current, compacted) = (state.current, state.compacted);
        Ok(MvccStore {
            db: RwLock::new(db),
            state: RwLock::new(state),
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            replacements: AtomicU64::new(0),
        })
    }

    /// The database the store lives in (for a reader that needs the index to agree with it:
    /// take it while holding the index lock).
    pub fn database(&self) -> Arc<Database> {
        match self.db.read() {
            Ok(db) => db.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Moves the store onto `db`, a copy of its database holding everything committed (see
    /// `crate::defrag`). The caller holds the index write lock (`state`), so no batch is open
    /// and no reader is between the index and the database; readers already inside a read
    /// transaction finish on the old database.
    /// Returns the old database, to be dropped after the lock is released (closing it
    /// takes a while).
    pub(crate) fn replace_database(
        &self,
        state: &mut RwLockWriteGuard<'_, IndexState>,
        db: Arc<Database>,
    ) -> Arc<Database> {
        let _held = state;
        match self.db.write() {
            Ok(mut current) => std::mem::replace(&mut *current, db),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), db),
        }
    }

    /// The revision of the last committed write (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// How many times the store's contents were replaced wholesale (snapshot installs).
    pub fn replacements(&self) -> u64 {
        self.replacements.load(Ordering::Acquire)
    }

    pub(crate) fn count_replacement(&self) {
        self.replacements.fetch_add(1, Ordering::AcqRel);
    }

    /// The revision of the last compaction, or `-1` if the store was never compacted.
    pub fn compacted_revision(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    pub(crate) fn read_state(&self) -> Result<RwLockReadGuard<'_, IndexState>, MvccError> {
        self.state.read().map_err(|_| poisoned())
    }

    pub(crate) fn write_state(&self) -> Result<RwLockWriteGuard<'_, IndexState>, MvccError> {
        self.state.write().map_err(|_| poisoned())
    }

    pub(crate) fn publish(&self, current: i64, compacted: i64) {
        self.current.store(current, Ordering::Release);
        self.compacted.store(compacted, Ordering::Release);
    }

    /// Every live key attached to a lease, with its lease: how the lessor rebuilds its key sets
    /// on start (etcd's lessor does the same from its store). Reads each live key's row once.
    pub fn leased_keys(&self) -> Result<Vec<(Vec<u8>, i64)>, MvccError> {
        let (keys, rtxn) = {
            let state = self.read_state()?;
            let rtxn = self.database().begin_read()?;
            (state.index.keys(KeySpan::new(b"\0", b"\0"), state.current), rtxn)
        };
        let history = rtxn.open_table(HISTORY)?;
        let mut leased = Vec::new();
        for (key, modified) in keys {
            let kv = history.kv(modified)?;
            if kv.lease != 0 {
                leased.push((key, kv.lease));
            }
        }
        Ok(leased)
    }

    /// A range read of the committed store (etcd's `Range`, request checks included).
    ///
    /// The index lock is held only while the index is consulted; rows come from a redb
    /// snapshot taken under the lock.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        check_range_request(req)?;
        let span = KeySpan::new(&req.key, &req.range_end);
        let opts = RangeOptions::for_request(req);
        let (plan, rtxn) = {
            let state = self.read_state()?;
            let rtxn = self.database().begin_read()?;
            let plan = range::plan(&state.index, span, opts, state.current, state.compacted)?;
            (plan, rtxn)
        };
        let history = rtxn.open_table(HISTORY)?;
        range::respond(req, range::fetch(&history, plan)?)
    }

    /// A read-only txn on the committed store (etcd serves these without consensus). Its ops
    /// must all be ranges ([`concord_proto::txn::is_read_only`]); a txn with a write
    /// op in either branch is refused with a storage error (it is a caller bug).
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        check_txn_request(req)?;
        if !concord_proto::txn::is_read_only(req) {
            return Err(MvccError::Storage(
                "read_txn was given a txn with writes; apply it through a WriteBatch".into(),
            ));
        }
        let state = self.read_state()?;
        let rtxn = self.database().begin_read()?;
        let history = rtxn.open_table(HISTORY)?;
        let mut snapshot = Snapshot {
            index: &state.index,
            history: &history,
            rev: state.current,
            compacted: state.compacted,
        };
        txn::txn(&mut snapshot, req)
    }

    /// The events of revisions `start_rev..end_rev` (`end_rev <= 0`: up to the current one)
    /// read back from history, as a watcher catching up needs them (etcd's `syncWatchers`).
    ///
    /// With `prev_kv`, each event carries the key's value at the revision before, unless that
    /// is compacted (as etcd's watcher does). Fails with [`MvccError::Compacted`] when
    /// `start_rev` is below the compacted revision: those events are gone.
    pub fn events(&self, start_rev: i64, end_rev: i64, prev_kv: bool) -> Result<Vec<Event>, MvccError> {
        let state = self.read_state()?;
        if start_rev < state.compacted {
            return Err(MvccError::Compacted);
        }
        let end_rev = if end_rev <= 0 { state.current + 1 } else { end_rev };
        let rtxn = self.database().begin_read()?;
        let history = rtxn.open_table(HISTORY)?;
        let start = Revision::new(start_rev.max(0), 0).to_bytes();
        let end = Revision::new(end_rev.max(0), 0).to_bytes();
        let mut events = Vec::new();
        for entry in history.range(start..end)? {
            let (_, v) = entry?;
            let row = decode_row(v.value())?;
            let prev = match prev_kv {
                true if row.kv.mod_revision > state.compacted => {
                    match state.index.get(&row.kv.key, row.kv.mod_revision - 1) {
                        Some(kr) => Some(history.kv(kr.modified)?),
                        None => None,
                    }
                }
                _ => None,
            };
            let kind = if row.tombstone {
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event {
                r#type: kind as i32,
                kv: Some(row.kv),
                prev_kv: prev,
            });
        }
        Ok(events)
    }

    /// Starts a write batch: takes the index write lock and a redb write transaction, both
    /// held until [`WriteBatch::commit`] or drop.
    pub fn begin_write(&self) -> Result<WriteBatch<'_>, MvccError> {
        let state = self.write_state()?;
        let txn = self.database().begin_write()?;
        Ok(WriteBatch::new(self, state, txn))
    }
}

/// Reads the revisions and rebuilds the index from the history table.
pub(crate) fn load(db: &Database) -> Result<IndexState, MvccError> {
    load_from(&db.begin_read()?)
}

/// Checks that the MVCC tables `read` sees load: every row decodes and the index builds, as
/// [`MvccStore::open`] and a snapshot's installation will do (a snapshot is checked with this
/// before it is installed, since failing to install it would stop Raft).
pub fn check_loadable(read: &ReadTransaction) -> Result<(), MvccError> {
    load_from(read).map(|_| ())
}

fn load_from(rtxn: &ReadTransaction) -> Result<IndexState, MvccError> {
    let meta = rtxn.open_table(META)?;
    let mut current = meta
        .get(META_CURRENT_REVISION)?
        .map_or(INITIAL_REVISION, |g| g.value());
    let compacted = meta
        .get(META_COMPACTED_REVISION)?
        .map_or(NEVER_COMPACTED, |g| g.value());

    let history = rtxn.open_table(HISTORY)?;
    let mut index = TreeIndex::new();
    let mut rows = 0u64;
    for entry in history.iter()? {
        let (k, v) = entry?;
        let rev = Revision::from_bytes(k.value());
        let (tombstone, row) = decode_row_meta(v.value())?;
        index.restore(&row.key, rev, tombstone, row.create_revision, row.version);
        current = current.max(rev.main);
        rows += 1;
    }
    tracing::info!(keys = index.len(), rows, current, compacted, "mvcc index loaded");
    Ok(IndexState {
        index,
        current,
        compacted,
    })
}

/// Creates the store's tables if a read shows they are missing.
fn ensure_tables(db: &Database) -> Result<(), MvccError> {
    let rtxn = db.begin_read()?;
    let missing = |r: Result<(), TableError>| -> Result<bool, MvccError> {
        match r {
            Ok(()) => Ok(false),
            Err(TableError::TableDoesNotExist(_)) => Ok(true),
            Err(e) => Err(e.into()),
        }
    };
    let need = missing(rtxn.open_table(HISTORY).map(drop))? | missing(rtxn.open_table(META).map(drop))?;
    drop(rtxn);
    if need {
        let txn = db.begin_write()?;
        txn.open_table(HISTORY)?;
        txn.open_table(META)?;
        txn.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::mvcc::test_util::ANY_LEASE;

    use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    use redb::Durability;

    use super::super::test_util::{self, TestStore, op_delete, op_put, put, range, txn};
    use super::*;

    /// A history with puts, deletes, re-creation, a txn and a compaction.
    fn sample() -> TestStore {
        let t = test_util::open();
        t.put("a", "1"); // 2
        t.put("b", "1"); // 3
        t.put("a", "2"); // 4
        t.delete("b", "").unwrap(); // 5
        t.txn(txn(
            vec![],
            vec![op_put("c", "1"), op_put("d", "1"), op_delete("a", "")],
            vec![],
        ))
        .unwrap(); // 6
        t.put("a", "3"); // 7
        t.put("b", "2"); // 8
        t.put("c", "2"); // 9
        t.compact(5).unwrap();
        t.delete("d", "\0").unwrap(); // 10: deletes d only
        t
    }

    /// Answers that must survive a reopen.
    fn answers(t: &TestStore) -> Vec<Result<RangeResponse, MvccError>> {
        let mut out = Vec::new();
        for rev in [0, 3, 4, 5, 6, 7, 9, 10, 11] {
            for (k, e) in [("\0", "\0"), ("a", ""), ("b", ""), ("c", "d"), ("d", "")] {
                let mut req = range(k, e);
                req.revision = rev;
                out.push(t.range(req.clone()));
                req.sort_target = SortTarget::Version as i32;
                req.sort_order = SortOrder::Descend as i32;
                req.limit = 2;
                out.push(t.range(req));
            }
        }
        out
    }

    #[test]
    fn reopen_gives_identical_answers() {
        let t = sample();
        assert_eq!(
            (t.store.current_revision(), t.store.compacted_revision()),
            (10, 5)
        );
        let before = answers(&t);
        assert!(before.iter().any(|r| r.is_err()), "includes compacted reads");
        let rows = t.history_rows();
        let t = t.reopen();
        assert_eq!(
            (t.store.current_revision(), t.store.compacted_revision()),
            (10, 5)
        );
        assert_eq!(answers(&t), before);
        assert_eq!(t.history_rows(), rows);
        // Writes go on from the same revision, with the right versions.
        assert_eq!(t.put("a", "4"), 11);
        let a = t.get("a").unwrap();
        assert_eq!((a.create_revision, a.version), (7, 2));
        assert_eq!(t.put("d", "again"), 12);
        assert_eq!(t.get("d").unwrap().version, 1);
        // And so do compactions.
        t.compact(12).unwrap();
        let t = t.reopen();
        assert_eq!(
            (t.store.current_revision(), t.store.compacted_revision()),
            (12, 12)
        );
        assert_eq!(t.history_rows(), 4, "a, b, c and d once each");
    }

    #[test]
    fn reopen_after_compacting_at_a_tombstone() {
        let t = test_util::open();
        t.put("a", "1"); // 2
        t.delete("a", "").unwrap(); // 3
        t.compact(3).unwrap();
        assert_eq!(
            t.history_rows(),
            1,
            "the tombstone at the compacted revision stays"
        );
        let t = t.reopen();
        assert_eq!((t.store.current_revision(), t.store.compacted_revision()), (3, 3));
        assert_eq!(t.get("a"), None);
        assert_eq!(t.put("a", "2"), 4);
        t.compact(4).unwrap();
        assert_eq!(t.history_rows(), 1);
        let t = t.reopen();
        let a = t.get("a").unwrap();
        assert_eq!((a.create_revision, a.version, a.mod_revision), (4, 1, 4));
    }

    #[test]
    fn fresh_store() {
        let t = test_util::open();
        assert_eq!(
            (t.store.current_revision(), t.store.compacted_revision()),
            (1, -1)
        );
        let r = t.range(range("\0", "\0")).unwrap();
        assert_eq!((r.kvs.len(), r.count, r.header.unwrap().revision), (0, 0, 1));
        let t = t.reopen();
        assert_eq!(t.store.current_revision(), 1);
        assert_eq!(t.history_rows(), 0);
    }

    #[test]
    fn replace_with_copies_every_table_or_empties_the_store() {
        let src = sample();
        let dst = test_util::open();
        dst.put("stale", "x");
        {
            let read = src.store.database().begin_read().unwrap();
            let mut batch = dst.store.begin_write().unwrap();
            batch.replace_with(&read).unwrap();
            batch.commit(redb::Durability::None).unwrap();
        }
        assert_eq!(
            (dst.store.current_revision(), dst.store.compacted_revision()),
            (10, 5)
        );
        assert_eq!(answers(&dst), answers(&src));
        assert_eq!(dst.get("stale"), None);
        // Copying from a database without the tables empties the store.
        let empty = Database::create(dst.dir.path().join("empty.redb")).unwrap();
        {
            let read = empty.begin_read().unwrap();
            let mut batch = dst.store.begin_write().unwrap();
            batch.replace_with(&read).unwrap();
            batch.commit(redb::Durability::None).unwrap();
        }
        assert_eq!(
            (dst.store.current_revision(), dst.store.compacted_revision()),
            (1, -1)
        );
        assert_eq!(dst.history_rows(), 0);
    }

    #[test]
    fn meta_records_the_revision() {
        let t = test_util::open();
        let mut b = t.store.begin_write().unwrap();
        b.put(&put("a", "1"), ANY_LEASE).unwrap();
        b.commit(Durability::Immediate).unwrap();
        let rtxn = t.store.database().begin_read().unwrap();
        let meta = rtxn.open_table(META).unwrap();
        assert_eq!(meta.get(META_CURRENT_REVISION).unwrap().unwrap().value(), 2);
    }

    #[test]
    fn events_read_back_from_history() {
        let t = test_util::open();
        let (_, live) = t.batch(|b| {
            b.put(&put("a", "1"), ANY_LEASE)?; // 2
            b.put(&put("a", "2"), ANY_LEASE)?; // 3
            b.txn(
                &txn(vec![], vec![op_put("b", "1"), op_delete("a", "")], vec![]),
                ANY_LEASE,
            ) // 4
        });
        // Read back, they are the events the batch produced.
        assert_eq!(t.store.events(0, 0, true).unwrap(), live);
        let kinds = |evs: &[Event]| {
            evs.iter()
                .map(|e| (e.r#type, e.kv.as_ref().unwrap().mod_revision))
                .collect::<Vec<_>>()
        };
        let (put_t, del_t) = (EventType::Put as i32, EventType::Delete as i32);
        assert_eq!(
            kinds(&t.store.events(3, 0, false).unwrap()),
            [(put_t, 3), (put_t, 4), (del_t, 4)]
        );
        assert_eq!(kinds(&t.store.events(3, 4, false).unwrap()), [(put_t, 3)]);
        assert!(t.store.events(5, 0, false).unwrap().is_empty());
        let without = t.store.events(4, 0, false).unwrap();
        assert!(without.iter().all(|e| e.prev_kv.is_none()));
        // After compaction at 3: events from 3 on remain; prev_kv at 2 is compacted.
        t.compact(3).unwrap();
        assert_eq!(t.store.events(2, 0, false), Err(MvccError::Compacted));
        let evs = t.store.events(3, 0, true).unwrap();
        assert_eq!(kinds(&evs), [(put_t, 3), (put_t, 4), (del_t, 4)]);
        assert_eq!(evs[0].prev_kv, None, "the value at 2 is compacted");
        assert_eq!(evs[2].prev_kv.as_ref().unwrap().value, &b"2"[..]);
    }

    #[test]
    fn replace_with_installs_a_snapshot_atomically() {
        let src = sample();
        let dst = test_util::open();
        dst.put("stale", "x");
        let read = src.store.database().begin_read().unwrap();
        let mut b = dst.store.begin_write().unwrap();
        b.put(&put("dropped", "x"), ANY_LEASE).unwrap();
        b.replace_with(&read).unwrap();
        assert!(matches!(
            b.put(&put("late", "x"), ANY_LEASE),
            Err(MvccError::Storage(_))
        ));
        assert!(matches!(b.range(&range("a", "")), Err(MvccError::Storage(_))));
        let committed = b.commit(Durability::None).unwrap();
        assert_eq!((committed.revision, committed.compacted_revision), (10, 5));
        assert!(committed.events.is_empty());
        assert_eq!(
            (dst.store.current_revision(), dst.store.compacted_revision()),
            (10, 5)
        );
        assert_eq!(answers(&dst), answers(&src));
        assert_eq!(dst.get("stale"), None);
        assert_eq!(dst.get("dropped"), None);
        // The store goes on from the snapshot's revision.
        assert_eq!(dst.put("a", "next"), 11);
        let dst = dst.reopen();
        assert_eq!(dst.store.current_revision(), 11);

        // A dropped replacing batch changes nothing.
        let mut b = dst.store.begin_write().unwrap();
        let empty = Database::create(dst.dir.path().join("empty.redb")).unwrap();
        b.replace_with(&empty.begin_read().unwrap()).unwrap();
        drop(b);
        assert_eq!(dst.store.current_revision(), 11);
        assert_eq!(dst.get("a").unwrap().value, &b"next"[..]);
    }
}

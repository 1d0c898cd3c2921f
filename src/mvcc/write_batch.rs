//! [`WriteBatch`]: a group of write requests applied in one redb write transaction.

use std::sync::RwLockWriteGuard;

use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use concord_proto::mvccpb::Event;
use redb::{Durability, WriteTransaction};

use super::change_log::ChangeLog;
use super::check::{check_delete_request, check_put_request, check_range_request, check_txn_request};
use super::compaction;
use super::error::MvccError;
use super::history::{HISTORY, META, META_COMPACTED_REVISION, META_CURRENT_REVISION, copy_tables};
use super::index::TreeIndex;
use super::store::{IndexState, MvccStore, load};
use super::txn;
use super::view::{ReadView, Snapshot};
use super::writer::{LeaseLookup, NO_LEASES, TxnWriter, header};

/// What a successful [`WriteBatch::commit`] made durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The store's revision after the batch.
    pub revision: i64,
    /// The store's compacted revision after the batch (`-1`: never compacted).
    pub compacted_revision: i64,
    /// One event per changed key, in revision order, for the watchers.
    pub events: Vec<Event>,
}

/// The index as the batch changes it, and how to take the changes back.
///
/// Dropping it unpublished (the batch was dropped, or its commit failed) undoes every index
/// change of the batch before the lock is released.
struct Staged<'a> {
    state: RwLockWriteGuard<'a, IndexState>,
    log: ChangeLog,
    published: bool,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.published {
            let state = &mut *self.state;
            self.log.undo_index(&mut state.index);
        }
    }
}

/// Write requests applied together and committed at once.
///
/// Each put, delete or txn that changes something gets the next revision. An operation that
/// fails with a client error (see [`MvccError::is_client_error`]) changes nothing, and the
/// batch goes on. After a storage error the batch is poisoned: later operations and
/// [`WriteBatch::commit`] fail, and nothing of the batch is kept. Dropping the batch without
/// committing discards it.
///
/// The batch holds the store's index write lock: readers wait until it commits or drops.
pub struct WriteBatch<'a> {
    store: &'a MvccStore,
    staged: Staged<'a>,
    txn: WriteTransaction,
    start_rev: i64,
    start_compacted: i64,
    rev: i64,
    compacted: i64,
    poisoned: Option<String>,
    /// Set by [`WriteBatch::replace_with`]: commit reloads the index from the database.
    replaced: bool,
}

impl<'a> WriteBatch<'a> {
    pub(crate) fn new(
        store: &'a MvccStore,
        state: RwLockWriteGuard<'a, IndexState>,
        txn: WriteTransaction,
    ) -> Self {
        let (rev, compacted) = (state.current, state.compacted);
        WriteBatch {
            store,
            staged: Staged {
                state,
                log: ChangeLog::new(),
                published: false,
            },
            txn,
            start_rev: rev,
            start_compacted: compacted,
            rev,
            compacted,
            poisoned: None,
            replaced: false,
        }
    }

    /// The redb write transaction, for the caller's own tables (committed with the batch).
    ///
    /// Do not open the MVCC tables through it while an operation of the batch runs.
    pub fn transaction(&self) -> &WriteTransaction {
        &self.txn
    }

    /// The store's revision including this batch's changes so far.
    pub fn current_revision(&self) -> i64 {
        self.rev
    }

    /// The compacted revision including this batch's compaction, if any.
    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// True after a storage error: the batch can only be dropped.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn usable(&self) -> Result<(), MvccError> {
        match &self.poisoned {
            Some(why) => Err(MvccError::Storage(format!(
                "write batch unusable after an earlier failure: {why}"
            ))),
            None if self.replaced => Err(MvccError::Storage(
                "write batch replaced the store's contents; commit it first".into(),
            )),
            None => Ok(()),
        }
    }

    /// Replaces the whole store with the MVCC tables `read` sees (a Raft snapshot being
    /// installed), in this batch's transaction. Anything the batch did before is dropped and
    /// no other operation is accepted afterwards; [`WriteBatch::commit`] then rebuilds the index
    /// from the committed tables before any reader can look, and reports no events (watchers
    /// must be resynchronised by the caller).
    pub fn replace_with(&mut self, read: &redb::ReadTransaction) -> Result<(), MvccError> {
        self.usable()?;
        let state = &mut *self.staged.state;
        self.staged.log.undo_index(&mut state.index);
        self.rev = self.start_rev;
        self.compacted = self.start_compacted;
        if let Err(err) = copy_tables(read, &self.txn) {
            self.poisoned = Some(err.to_string());
            return Err(err);
        }
        self.replaced = true;
        Ok(())
    }

    /// Runs one write request; on error takes back whatever it did.
    fn run<T>(
        &mut self,
        leases: &dyn LeaseLookup,
        op: impl FnOnce(&mut TxnWriter<'_, '_>) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        self.usable()?;
        let mut table = self.txn.open_table(HISTORY)?;
        let staged = &mut self.staged;
        let state = &mut *staged.state;
        let mark = staged.log.mark();
        let mut writer = TxnWriter::new(
            &mut state.index,
            &mut table,
            &mut staged.log,
            leases,
            self.rev,
            self.compacted,
        );
        let result = op(&mut writer);
        let changed = writer.changed();
        match result {
            Ok(v) => {
                if changed {
                    self.rev += 1;
                }
                Ok(v)
            }
            Err(err) => {
                match staged.log.rollback_to(mark, &mut state.index, &mut table) {
                    Err(rollback) => self.poisoned = Some(rollback.to_string()),
                    Ok(()) if !err.is_client_error() => self.poisoned = Some(err.to_string()),
                    Ok(()) => {}
                }
                Err(err)
            }
        }
    }

    /// A put (etcd's `Put`): the next revision, unless it fails. A lease it names must be
    /// one `leases` knows ([`MvccError::LeaseNotFound`] otherwise).
    pub fn put(&mut self, req: &PutRequest, leases: &dyn LeaseLookup) -> Result<PutResponse, MvccError> {
        check_put_request(req)?;
        self.run(leases, |w| w.put(req))
    }

    /// A delete (etcd's `DeleteRange`): the next revision if it deletes anything.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        check_delete_request(req)?;
        self.run(NO_LEASES, |w| w.delete_range(req))
    }

    /// Deletes each of `keys` (a revoked lease's keys), all in one revision, as etcd's lessor
    /// does. Keys that do not exist are skipped; nothing changes if none exists.
    pub fn delete_keys(&mut self, keys: &[Vec<u8>]) -> Result<(), MvccError> {
        self.run(NO_LEASES, |w| {
            for key in keys {
                w.delete_range(&DeleteRangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })?;
            }
            Ok(())
        })
    }

    /// How many events the batch has produced so far (a position for
    /// [`WriteBatch::events_since`]).
    pub fn event_count(&self) -> usize {
        self.staged.log.len()
    }

    /// The events produced since position `from` (see [`WriteBatch::event_count`]). Every
    /// event carries its `prev_kv`, whatever the request asked for.
    pub fn events_since(&self, from: usize) -> impl Iterator<Item = &Event> {
        self.staged.log.events_since(from)
    }

    /// A txn (etcd's `Txn`): one revision for all its changes, none if it changes nothing.
    /// Leases its puts name must be ones `leases` knows.
    pub fn txn(&mut self, req: &TxnRequest, leases: &dyn LeaseLookup) -> Result<TxnResponse, MvccError> {
        check_txn_request(req)?;
        self.run(leases, |w| txn::txn(w, req))
    }

    /// A range read that sees the batch's changes so far.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        check_range_request(req)?;
        self.usable()?;
        let table = self.txn.open_table(HISTORY)?;
        let snapshot = Snapshot {
            index: &self.staged.state.index,
            history: &table,
            rev: self.rev,
            compacted: self.compacted,
        };
        snapshot.range(req)
    }

    /// A compaction (etcd's `Compact`), done at once: rows no read at or after the revision
    /// needs are deleted. Does not change the revision.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        self.usable()?;
        compaction::check_compaction(req.revision, self.rev, self.compacted)?;
        let result = {
            let mut table = self.txn.open_table(HISTORY)?;
            let staged = &mut self.staged;
            let state = &mut *staged.state;
            compaction::compact(&mut state.index, &mut table, &mut staged.log, req.revision)
        };
        match result {
            Ok(_) => {
                self.compacted = req.revision;
                Ok(CompactionResponse {
                    header: header(self.rev),
                })
            }
            Err(err) => {
                self.poisoned = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Writes the revisions, commits the redb transaction with `durability` and publishes the
    /// batch to readers. On failure nothing of the batch is kept (index included).
    pub fn commit(self, durability: Durability) -> Result<Committed, MvccError> {
        if self.replaced {
            return self.commit_replaced(durability);
        }
        self.usable()?;
        let WriteBatch {
            store,
            mut staged,
            mut txn,
            start_rev,
            start_compacted,
            rev,
            compacted,
            ..
        } = self;
        if rev != start_rev || compacted != start_compacted {
            let mut meta = txn.open_table(META)?;
            if rev != start_rev {
                meta.insert(META_CURRENT_REVISION, rev)?;
            }
            if compacted != start_compacted {
                meta.insert(META_COMPACTED_REVISION, compacted)?;
            }
        }
        txn.set_durability(durability)?;
        txn.commit()?;

        let state = &mut *staged.state;
        state.current = rev;
        state.compacted = compacted;
        store.publish(rev, compacted);
        staged.published = true;
        let events = staged.log.finish();
        drop(staged);
        Ok(Committed {
            revision: rev,
            compacted_revision: compacted,
            events,
        })
    }

    /// Commit after [`WriteBatch::replace_with`]: the index is rebuilt under the lock.
    fn commit_replaced(self, durability: Durability) -> Result<Committed, MvccError> {
        if let Some(why) = &self.poisoned {
            return Err(MvccError::Storage(format!("write batch failed earlier: {why}")));
        }
        let WriteBatch {
            store,
            mut staged,
            mut txn,
            ..
        } = self;
        txn.set_durability(durability)?;
        txn.commit()?;
        store.count_replacement();
        // From here on the old index is wrong whatever happens.
        staged.published = true;
        let fresh = load(&store.database()).map_err(|err| {
            tracing::error!(error = %err, "index rebuild after replacing the store failed");
            MvccError::Storage(format!(
                "store replaced but its index could not be rebuilt: {err}"
            ))
        });
        let state = &mut *staged.state;
        match fresh {
            Ok(fresh) => *state = fresh,
            Err(err) => {
                // Serve nothing rather than stale answers: reopen the store to recover.
                state.index = TreeIndex::new();
                return Err(err);
            }
        }
        let (revision, compacted_revision) = (state.current, state.compacted);
        store.publish(revision, compacted_revision);
        drop(staged);
        Ok(Committed {
            revision,
            compacted_revision,
            events: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::mvcc::test_util::ANY_LEASE;

    use concord_proto::etcdserverpb::request_op::Request;
    use concord_proto::etcdserverpb::{RequestOp, TxnRequest};
    use redb::{ReadableDatabase, TableDefinition};

    use super::super::test_util::{self, get, op_delete, op_put, put, range, rev_of, txn};
    use super::*;

    const OWN: TableDefinition<&str, u64> = TableDefinition::new("caller_table");

    fn values(t: &test_util::TestStore) -> Vec<(String, String, i64)> {
        t.range(range("\0", "\0"))
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key.to_vec()).unwrap(),
                    String::from_utf8(kv.value.to_vec()).unwrap(),
                    kv.mod_revision,
                )
            })
            .collect()
    }

    #[test]
    fn each_request_gets_the_next_revision() {
        let t = test_util::open();
        let mut b = t.store.begin_write().unwrap();
        assert_eq!(rev_of(&b.put(&put("a", "1"), ANY_LEASE).unwrap().header), 2);
        assert_eq!(rev_of(&b.put(&put("b", "1"), ANY_LEASE).unwrap().header), 3);
        assert_eq!(b.current_revision(), 3);
        // The batch reads its own writes; the store does not see them yet.
        assert_eq!(b.range(&get("b")).unwrap().kvs[0].mod_revision, 3);
        assert_eq!(t.store.current_revision(), 1);
        let committed = b.commit(Durability::None).unwrap();
        assert_eq!((committed.revision, committed.compacted_revision), (3, -1));
        let mods: Vec<_> = committed
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(mods, [2, 3]);
        assert_eq!(t.store.current_revision(), 3);
        assert_eq!(
            values(&t),
            [("a".into(), "1".into(), 2), ("b".into(), "1".into(), 3)]
        );
    }

    #[test]
    fn failed_operations_leave_the_batch_usable() {
        let t = test_util::open();
        t.put("x", "0");
        let mut b = t.store.begin_write().unwrap();
        b.put(&put("a", "1"), ANY_LEASE).unwrap();
        let ignore = PutRequest {
            ignore_value: true,
            ..put("missing", "")
        };
        assert_eq!(b.put(&ignore, ANY_LEASE), Err(MvccError::KeyNotFound));
        let dup = txn(vec![], vec![op_put("k", "1"), op_put("k", "2")], vec![]);
        assert_eq!(b.txn(&dup, ANY_LEASE), Err(MvccError::DuplicateKey));
        assert_eq!(
            b.compact(&CompactionRequest {
                revision: 9,
                physical: false
            }),
            Err(MvccError::FutureRev)
        );
        assert_eq!(b.range(&get("")), Err(MvccError::EmptyKey));
        assert!(!b.is_poisoned());
        assert_eq!(
            rev_of(&b.put(&put("b", "2"), ANY_LEASE).unwrap().header),
            4,
            "no revision was lost"
        );
        let committed = b.commit(Durability::None).unwrap();
        assert_eq!(committed.events.len(), 2);
        assert_eq!(
            values(&t),
            [
                ("a".into(), "1".into(), 3),
                ("b".into(), "2".into(), 4),
                ("x".into(), "0".into(), 2)
            ]
        );
    }

    #[test]
    fn a_txn_failing_midway_is_rolled_back() {
        let t = test_util::open();
        t.put("b", "old");
        // etcd's overlap check compares a "\0" range end literally, so this passes the checks,
        // and b exists before the txn; but the delete removes b before the ignore_value put
        // runs. etcd panics here; the store rolls the txn back.
        let ignore_b = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                ignore_value: true,
                ..put("b", "")
            })),
        };
        let req = txn(
            vec![],
            vec![op_put("0", "first"), op_delete("a", "\0"), ignore_b],
            vec![],
        );
        let mut b = t.store.begin_write().unwrap();
        b.put(&put("c", "before"), ANY_LEASE).unwrap();
        assert_eq!(b.txn(&req, ANY_LEASE), Err(MvccError::KeyNotFound));
        assert!(!b.is_poisoned());
        assert_eq!(b.current_revision(), 3);
        assert_eq!(b.range(&get("b")).unwrap().kvs[0].value, &b"old"[..]);
        assert!(b.range(&get("0")).unwrap().kvs.is_empty());
        b.put(&put("d", "after"), ANY_LEASE).unwrap();
        let committed = b.commit(Durability::None).unwrap();
        assert_eq!(committed.events.len(), 2);
        assert_eq!(t.history_rows(), 3);
        assert_eq!(
            values(&t),
            [
                ("b".into(), "old".into(), 2),
                ("c".into(), "before".into(), 3),
                ("d".into(), "after".into(), 4)
            ]
        );
    }

    #[test]
    fn dropping_a_batch_discards_it() {
        let t = test_util::open();
        t.put("a", "1");
        {
            let mut b = t.store.begin_write().unwrap();
            b.put(&put("a", "2"), ANY_LEASE).unwrap();
            b.put(&put("new", "1"), ANY_LEASE).unwrap();
            b.delete_range(&DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })
            .unwrap();
            b.compact(&CompactionRequest {
                revision: 4,
                physical: true,
            })
            .unwrap();
            b.transaction().open_table(OWN).unwrap().insert("k", 1).unwrap();
        }
        assert_eq!(
            (t.store.current_revision(), t.store.compacted_revision()),
            (2, -1)
        );
        assert_eq!(values(&t), [("a".into(), "1".into(), 2)]);
        assert_eq!(t.history_rows(), 1);
        // The index is back too: the same revision and version are handed out again.
        assert_eq!(t.put("a", "3"), 3);
        assert_eq!(t.get("a").unwrap().version, 2);
        assert_eq!(t.put("new", "x"), 4);
        assert_eq!(t.get("new").unwrap().version, 1);
        let rtxn = t.store.database().begin_read().unwrap();
        assert!(
            rtxn.open_table(OWN).is_err(),
            "the caller's write was discarded too"
        );
    }

    #[test]
    fn caller_tables_commit_with_the_batch() {
        let t = test_util::open();
        let mut b = t.store.begin_write().unwrap();
        b.put(&put("a", "1"), ANY_LEASE).unwrap();
        b.transaction()
            .open_table(OWN)
            .unwrap()
            .insert("applied", 42)
            .unwrap();
        b.commit(Durability::Immediate).unwrap();
        let rtxn = t.store.database().begin_read().unwrap();
        assert_eq!(
            rtxn.open_table(OWN)
                .unwrap()
                .get("applied")
                .unwrap()
                .unwrap()
                .value(),
            42
        );
        let meta = rtxn.open_table(META).unwrap();
        assert_eq!(meta.get(META_CURRENT_REVISION).unwrap().unwrap().value(), 2);
        assert!(meta.get(META_COMPACTED_REVISION).unwrap().is_none());
    }

    #[test]
    fn empty_batches_commit() {
        let t = test_util::open();
        let b = t.store.begin_write().unwrap();
        let committed = b.commit(Durability::None).unwrap();
        assert_eq!((committed.revision, committed.events.len()), (1, 0));
        let no_change = TxnRequest::default();
        let (resp, events) = t.batch(|b| b.txn(&no_change, ANY_LEASE));
        assert_eq!(rev_of(&resp.unwrap().header), 1);
        assert!(events.is_empty());
    }

    #[test]
    fn readers_see_only_committed_batches() {
        let t = test_util::open();
        t.put("a", "1");
        std::thread::scope(|s| {
            let mut b = t.store.begin_write().unwrap();
            b.put(&put("a", "2"), ANY_LEASE).unwrap();
            // The reader waits for the index lock; whatever it sees must be committed.
            let reader = s.spawn(|| t.range(get("a")).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(20));
            b.commit(Durability::None).unwrap();
            let seen = reader.join().unwrap();
            assert_eq!(seen.kvs[0].value, &b"2"[..]);
            assert_eq!(rev_of(&seen.header), 3);
        });
    }
}

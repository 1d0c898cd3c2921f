//! Compaction (etcd's `kvstore_compaction.go`, done synchronously inside the write batch).
//!
//! Compacting at `rev` keeps, for every key, the newest revision `<= rev` of the generation
//! alive at `rev` and everything newer; generations that ended before `rev` go entirely. A
//! tombstone exactly at `rev` stays (as in etcd) so that a watch from `rev` still sees that
//! delete. The dropped revisions come from the index, so only those rows are visited.

use super::change_log::ChangeLog;
use super::error::MvccError;
use super::index::TreeIndex;
use super::writer::HistoryTable;

/// etcd's `updateCompactRev` checks: the revision must be newer than the last compaction and
/// not newer than the store.
pub fn check_compaction(rev: i64, current: i64, compacted: i64) -> Result<(), MvccError> {
    if rev <= compacted {
        return Err(MvccError::Compacted);
    }
    if rev > current {
        return Err(MvccError::FutureRev);
    }
    Ok(())
}

/// Compacts the index at `rev` (recording undos in `log`) and deletes the dropped history
/// rows. Returns how many rows were deleted. A storage error leaves rows half deleted: the
/// caller must not commit.
pub fn compact(
    index: &mut TreeIndex,
    table: &mut HistoryTable<'_>,
    log: &mut ChangeLog,
    rev: i64,
) -> Result<usize, MvccError> {
    let mut removed = Vec::new();
    let mut undo = Vec::new();
    index.compact(rev, &mut removed, &mut undo);
    for u in undo {
        log.push_undo(u);
    }
    // In revision order, so the deletes walk the table front to back.
    removed.sort_unstable();
    for rev in &removed {
        table.remove(rev.to_bytes())?;
    }
    crate::failpoint::hit("compaction");
    tracing::debug!(rev, rows = removed.len(), "mvcc compaction");
    Ok(removed.len())
}

#[cfg(test)]
mod tests {
    use crate::mvcc::test_util::ANY_LEASE;

    use concord_proto::etcdserverpb::CompactionRequest;

    use super::super::test_util::{self, TestStore, range, rev_of};
    use super::*;

    /// a=1@2, a=2@3, a=3@4, b=1@5, delete b@6, c=1@7.
    fn sample() -> TestStore {
        let t = test_util::open();
        t.put("a", "1");
        t.put("a", "2");
        t.put("a", "3");
        t.put("b", "1");
        t.delete("b", "").unwrap();
        t.put("c", "1");
        assert_eq!(t.history_rows(), 6);
        t
    }

    fn value_at(t: &TestStore, key: &str, rev: i64) -> Result<Option<String>, MvccError> {
        Ok(t.get_at(key, rev)?
            .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap()))
    }

    #[test]
    fn reads_below_the_compacted_revision_fail() {
        let t = sample();
        assert_eq!(t.store.compacted_revision(), -1);
        let (resp, events) = t.batch(|b| {
            b.compact(&CompactionRequest {
                revision: 4,
                physical: false,
            })
        });
        assert_eq!(
            rev_of(&resp.unwrap().header),
            7,
            "header carries the current revision"
        );
        assert!(events.is_empty());
        assert_eq!((t.store.current_revision(), t.store.compacted_revision()), (7, 4));
        assert_eq!(value_at(&t, "a", 3), Err(MvccError::Compacted));
        assert_eq!(value_at(&t, "a", 2), Err(MvccError::Compacted));
        assert_eq!(
            value_at(&t, "a", 4),
            Ok(Some("3".into())),
            "reading at the compacted revision works"
        );
        assert_eq!(value_at(&t, "a", 0), Ok(Some("3".into())));
        let kv = t.get("a").unwrap();
        assert_eq!(
            (kv.create_revision, kv.version),
            (2, 3),
            "create revision and version survive"
        );
        assert_eq!(value_at(&t, "b", 5), Ok(Some("1".into())));
        assert_eq!(value_at(&t, "b", 6), Ok(None));
        let mut req = range("\0", "\0");
        req.revision = 3;
        assert_eq!(t.range(req), Err(MvccError::Compacted));
        // Reads of unrelated keys below the compacted revision fail as well.
        assert_eq!(value_at(&t, "zz", 1), Err(MvccError::Compacted));
    }

    #[test]
    fn bad_compaction_revisions() {
        let t = sample();
        assert_eq!(t.compact(8), Err(MvccError::FutureRev));
        assert_eq!(t.store.compacted_revision(), -1);
        t.compact(4).unwrap();
        assert_eq!(t.compact(4), Err(MvccError::Compacted), "compacting twice");
        assert_eq!(t.compact(3), Err(MvccError::Compacted));
        assert_eq!(t.compact(8), Err(MvccError::FutureRev));
        t.compact(7).unwrap();
        assert_eq!(t.store.compacted_revision(), 7);
        assert_eq!(t.store.current_revision(), 7, "compaction takes no revision");
    }

    #[test]
    fn history_rows_are_removed() {
        let t = sample();
        t.compact(4).unwrap();
        assert_eq!(t.history_rows(), 4, "a@2 and a@3 are gone");
        // b's generation ends exactly at 6: its tombstone stays, its put goes.
        t.compact(6).unwrap();
        assert_eq!(t.history_rows(), 3);
        t.compact(7).unwrap();
        assert_eq!(t.history_rows(), 2, "only a@4 and c@7 are left");
        let all = t.range(range("\0", "\0")).unwrap();
        assert_eq!(test_util::keys(&all), ["a", "c"]);
        // The store still takes writes on top.
        assert_eq!(t.put("b", "again"), 8);
        assert_eq!(t.get("b").unwrap().version, 1);
    }

    #[test]
    fn compaction_of_a_fresh_store() {
        let t = test_util::open();
        t.compact(0).unwrap();
        assert_eq!(t.compact(0), Err(MvccError::Compacted));
        t.compact(1).unwrap();
        assert_eq!(t.compact(2), Err(MvccError::FutureRev));
        assert_eq!(t.put("a", "1"), 2);
        assert_eq!(t.store.compacted_revision(), 1);
    }

    #[test]
    fn compaction_inside_a_batch_after_puts() {
        let t = test_util::open();
        let (resp, events) = t.batch(|b| {
            b.put(&test_util::put("a", "1"), ANY_LEASE)?;
            b.put(&test_util::put("a", "2"), ANY_LEASE)?;
            b.compact(&CompactionRequest {
                revision: 3,
                physical: true,
            })
        });
        assert_eq!(rev_of(&resp.unwrap().header), 3);
        assert_eq!(events.len(), 2);
        assert_eq!(t.history_rows(), 1);
        assert_eq!((t.store.current_revision(), t.store.compacted_revision()), (3, 3));
        assert_eq!(value_at(&t, "a", 2), Err(MvccError::Compacted));
    }

    #[test]
    fn compaction_checks() {
        // Never compacted (-1): 0 and 1 are fine on a fresh store at revision 1.
        assert_eq!(check_compaction(0, 1, -1), Ok(()));
        assert_eq!(check_compaction(1, 1, -1), Ok(()));
        assert_eq!(check_compaction(2, 1, -1), Err(MvccError::FutureRev));
        assert_eq!(check_compaction(5, 9, 5), Err(MvccError::Compacted));
        assert_eq!(check_compaction(4, 9, 5), Err(MvccError::Compacted));
        assert_eq!(check_compaction(6, 9, 5), Ok(()));
        assert_eq!(check_compaction(10, 9, 5), Err(MvccError::FutureRev));
    }
}

//! Hashes of the store for consistency checks (etcd's `Hash` and `HashKV`): equal on every
//! member that applied the same log, different when the stored data differs.
//!
//! [`MvccStore::hash_kv`] is a CRC-32C of every history row up to a revision: its key (the
//! revision) and its value (the key-value written, or the tombstone). Compaction deletes rows
//! inside the write batch that applies it, so two members at the same revision and the same
//! compacted revision hold the same rows; a checker compares hashes only when both agree (the
//! answer carries them), as etcd's does.

use redb::ReadableDatabase;

use super::error::MvccError;
use super::history::HISTORY;
use super::revision::Revision;
use super::store::MvccStore;

/// A hash of the store's history up to a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// The CRC-32C.
    pub hash: u32,
    /// The revision hashed up to (inclusive).
    pub revision: i64,
    /// The store's compacted revision when it was taken.
    pub compact_revision: i64,
}

impl MvccStore {
    /// The hash of every history row up to `revision` (0 or less: the current revision).
    /// Fails with [`MvccError::FutureRev`] past the current revision and
    /// [`MvccError::Compacted`] below the compacted one. Reads the whole history in one read
    /// transaction: call it off the async runtime.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        let (current, compacted, read) = {
            let state = self.read_state()?;
            (state.current, state.compacted, self.database().begin_read()?)
        };
        let revision = if revision <= 0 { current } else { revision };
        if revision > current {
            return Err(MvccError::FutureRev);
        }
        if revision < compacted {
            return Err(MvccError::Compacted);
        }
        let history = match read.open_table(HISTORY) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(KvHash {
                    hash: 0,
                    revision,
                    compact_revision: compacted,
                });
            }
            Err(err) => return Err(err.into()),
        };
        let end = Revision::new(revision.saturating_add(1), 0).to_bytes();
        let mut hash = 0u32;
        for entry in history.range(..end)? {
            let (key, value) = entry?;
            hash = crc32c::crc32c_append(hash, &key.value());
            hash = crc32c::crc32c_append(hash, value.value());
        }
        Ok(KvHash {
            hash,
            revision,
            compact_revision: compacted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::test_util::open;

    #[test]
    fn equal_histories_hash_equal_and_any_difference_shows() {
        let (a, b) = (open(), open());
        for t in [&a, &b] {
            t.put("k1", "v1");
            t.put("k2", "v2");
        }
        assert_eq!(a.store.hash_kv(0).unwrap(), b.store.hash_kv(0).unwrap());
        a.put("k3", "v3");
        b.put("k3", "v4");
        let (ha, hb) = (a.store.hash_kv(0).unwrap(), b.store.hash_kv(0).unwrap());
        assert_eq!((ha.revision, hb.revision), (4, 4));
        assert_ne!(ha.hash, hb.hash, "different values");
        // Up to revision 3 they still agree.
        assert_eq!(a.store.hash_kv(3).unwrap(), b.store.hash_kv(3).unwrap());
        assert_eq!(a.store.hash_kv(5), Err(MvccError::FutureRev));
    }

    #[test]
    fn a_compaction_shows_in_the_answer_and_below_it_is_refused() {
        let t = open();
        for i in 0..5 {
            t.put("k", &format!("v{i}"));
        }
        let before = t.store.hash_kv(0).unwrap();
        t.compact(4).unwrap();
        let after = t.store.hash_kv(0).unwrap();
        assert_eq!((after.compact_revision, after.revision), (4, 6));
        assert_ne!(before.hash, after.hash, "the compacted rows are gone");
        assert_eq!(t.store.hash_kv(3), Err(MvccError::Compacted));
    }
}

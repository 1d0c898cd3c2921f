//! [`TreeIndex`]: every key's [`KeyIndex`] in key order (etcd's `treeIndex`).
//!
//! The index lives in memory only; [`super::MvccStore::open`] rebuilds it from the history
//! table. Mutations return an [`IndexUndo`] so that a write batch can take back exactly what it
//! did if an operation or the commit fails.

use std::collections::BTreeMap;

use super::key_index::{KeyIndex, KeyRevision};
use super::key_span::KeySpan;
use super::revision::Revision;

/// How to take back one index mutation (see [`TreeIndex::undo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexUndo {
    /// A [`TreeIndex::put`].
    Put {
        /// The key put.
        key: Vec<u8>,
        /// The key's newest revision before the put.
        prev_modified: Revision,
        /// True when the put added the key to the index.
        inserted: bool,
    },
    /// A [`TreeIndex::tombstone`].
    Tombstone {
        /// The key deleted.
        key: Vec<u8>,
        /// The key's newest revision before the delete.
        prev_modified: Revision,
    },
    /// A key changed by compaction: its whole previous [`KeyIndex`].
    Restore {
        /// The key compacted.
        key: Vec<u8>,
        /// The key's index before compaction.
        old: KeyIndex,
    },
}

/// The in-memory index from key to revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeIndex {
    tree: BTreeMap<Vec<u8>, KeyIndex>,
}

impl TreeIndex {
    /// An empty index.
    pub fn new() -> Self {
        TreeIndex::default()
    }

    /// Number of keys with any history left (live or deleted but not yet compacted away).
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// The key as of `at_rev`, if it existed then.
    pub fn get(&self, key: &[u8], at_rev: i64) -> Option<KeyRevision> {
        self.tree.get(key)?.get(at_rev)
    }

    fn visit<'s>(&'s self, span: KeySpan<'_>) -> impl Iterator<Item = (&'s Vec<u8>, &'s KeyIndex)> + 's {
        let range = if span.is_empty() {
            None
        } else {
            Some(self.tree.range::<[u8], _>(span.bounds()))
        };
        range.into_iter().flatten()
    }

    /// Revisions of the keys of `span` that existed at `at_rev`, in key order, at most `limit`
    /// of them (`0` = no limit), and how many such keys there are in all (etcd's
    /// `treeIndex.Revisions`).
    pub fn revisions(&self, span: KeySpan<'_>, at_rev: i64, limit: usize) -> (Vec<Revision>, usize) {
        let mut revs = Vec::new();
        let mut total = 0;
        for (_, ki) in self.visit(span) {
            if let Some(r) = ki.get(at_rev) {
                if limit == 0 || revs.len() < limit {
                    revs.push(r.modified);
                }
                total += 1;
            }
        }
        (revs, total)
    }

    /// How many keys of `span` existed at `at_rev` (etcd's `treeIndex.CountRevisions`).
    pub fn count(&self, span: KeySpan<'_>, at_rev: i64) -> usize {
        self.visit(span)
            .filter(|(_, ki)| ki.get(at_rev).is_some())
            .count()
    }

    /// The keys of `span` that existed at `at_rev`, with their revision then, in key order.
    pub fn keys(&self, span: KeySpan<'_>, at_rev: i64) -> Vec<(Vec<u8>, Revision)> {
        self.visit(span)
            .filter_map(|(k, ki)| ki.get(at_rev).map(|r| (k.clone(), r.modified)))
            .collect()
    }

    /// Records a put of `key` at `rev`.
    pub fn put(&mut self, key: &[u8], rev: Revision) -> IndexUndo {
        match self.tree.get_mut(key) {
            Some(ki) => {
                let prev_modified = ki.modified();
                ki.put(rev);
                IndexUndo::Put {
                    key: key.to_vec(),
                    prev_modified,
                    inserted: false,
                }
            }
            None => {
                let mut ki = KeyIndex::new();
                ki.put(rev);
                self.tree.insert(key.to_vec(), ki);
                IndexUndo::Put {
                    key: key.to_vec(),
                    prev_modified: Revision::default(),
                    inserted: true,
                }
            }
        }
    }

    /// Records a delete of `key` at `rev`; `None` (nothing changed) if the key is not live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> Option<IndexUndo> {
        let ki = self.tree.get_mut(key)?;
        let prev_modified = ki.modified();
        ki.tombstone(rev).then(|| IndexUndo::Tombstone {
            key: key.to_vec(),
            prev_modified,
        })
    }

    /// Takes back one mutation. Undos must be applied newest first.
    pub fn undo(&mut self, undo: IndexUndo) {
        match undo {
            IndexUndo::Put {
                key,
                prev_modified,
                inserted,
            } => {
                if inserted {
                    self.tree.remove(&key);
                } else if let Some(ki) = self.tree.get_mut(&key) {
                    ki.undo_put(prev_modified);
                }
            }
            IndexUndo::Tombstone { key, prev_modified } => {
                if let Some(ki) = self.tree.get_mut(&key) {
                    ki.undo_tombstone(prev_modified);
                }
            }
            IndexUndo::Restore { key, old } => {
                self.tree.insert(key, old);
            }
        }
    }

    /// Replays one history row while rebuilding the index (see [`KeyIndex::restore`]).
    pub fn restore(&mut self, key: &[u8], rev: Revision, tombstone: bool, created: i64, ver: i64) {
        if let Some(ki) = self.tree.get_mut(key) {
            ki.restore(rev, tombstone, created, ver);
        } else {
            let mut ki = KeyIndex::new();
            ki.restore(rev, tombstone, created, ver);
            self.tree.insert(key.to_vec(), ki);
        }
    }

    /// Compacts every key at `at_rev` (see [`KeyIndex::compact`]) and forgets keys left empty.
    ///
    /// The revisions dropped are appended to `removed` (their history rows must be deleted),
    /// and one [`IndexUndo::Restore`] per changed key to `undo`.
    pub fn compact(&mut self, at_rev: i64, removed: &mut Vec<Revision>, undo: &mut Vec<IndexUndo>) {
        let mut emptied = Vec::new();
        for (key, ki) in self.tree.iter_mut() {
            if !ki.compaction_changes(at_rev) {
                continue;
            }
            undo.push(IndexUndo::Restore {
                key: key.clone(),
                old: ki.clone(),
            });
            ki.compact(at_rev, removed);
            if ki.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.tree.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// a: put 2, put 4; b: put 3, delete 5; c: put 6.
    fn sample() -> TreeIndex {
        let mut ti = TreeIndex::new();
        ti.put(b"a", rev(2));
        ti.put(b"b", rev(3));
        ti.put(b"a", rev(4));
        assert!(ti.tombstone(b"b", rev(5)).is_some());
        ti.put(b"c", rev(6));
        ti
    }

    fn mains(revs: &[Revision]) -> Vec<i64> {
        revs.iter().map(|r| r.main).collect()
    }

    #[test]
    fn revisions_at_revision() {
        let ti = sample();
        let all = KeySpan::new(b"\0", b"\0");
        let (revs, total) = ti.revisions(all, 6, 0);
        assert_eq!((mains(&revs), total), (vec![4, 6], 2));
        let (revs, total) = ti.revisions(all, 3, 0);
        assert_eq!((mains(&revs), total), (vec![2, 3], 2));
        let (revs, total) = ti.revisions(all, 4, 1);
        assert_eq!((mains(&revs), total), (vec![4], 2), "limit keeps the total");
        assert_eq!(ti.count(all, 5), 1);
        assert_eq!(ti.count(all, 1), 0);
    }

    #[test]
    fn spans() {
        let ti = sample();
        let (revs, total) = ti.revisions(KeySpan::new(b"a", b""), 6, 0);
        assert_eq!((mains(&revs), total), (vec![4], 1));
        let (revs, _) = ti.revisions(KeySpan::new(b"b", b"\0"), 4, 0);
        assert_eq!(mains(&revs), vec![3]);
        let (revs, _) = ti.revisions(KeySpan::new(b"a", b"c"), 6, 0);
        assert_eq!(mains(&revs), vec![4]);
        let (revs, total) = ti.revisions(KeySpan::new(b"c", b"a"), 6, 0);
        assert_eq!((revs.len(), total), (0, 0), "reversed span is empty, not a panic");
        assert_eq!(ti.count(KeySpan::new(b"zz", b""), 6), 0);
        let keys = ti.keys(KeySpan::new(b"a", b"\0"), 6);
        assert_eq!(keys, vec![(b"a".to_vec(), rev(4)), (b"c".to_vec(), rev(6))]);
    }

    #[test]
    fn tombstone_of_missing_key_is_none() {
        let mut ti = sample();
        assert!(ti.tombstone(b"b", rev(7)).is_none());
        assert!(ti.tombstone(b"nope", rev(7)).is_none());
        assert_eq!(ti, sample());
    }

    #[test]
    fn undo_in_reverse_order_restores() {
        let before = sample();
        let mut ti = before.clone();
        let undos = vec![
            ti.put(b"a", rev(7)),
            ti.put(b"new", Revision::new(7, 1)),
            ti.tombstone(b"c", Revision::new(7, 2)).expect("c is live"),
            ti.put(b"b", Revision::new(7, 3)),
        ];
        assert_ne!(ti, before);
        for u in undos.into_iter().rev() {
            ti.undo(u);
        }
        assert_eq!(ti, before);
    }

    #[test]
    fn compact_forgets_dead_keys_and_undoes() {
        let before = sample();
        let mut ti = before.clone();
        let (mut removed, mut undo) = (Vec::new(), Vec::new());
        ti.compact(6, &mut removed, &mut undo);
        removed.sort();
        assert_eq!(mains(&removed), vec![2, 3, 5]);
        assert_eq!(ti.len(), 2, "b is gone");
        assert_eq!(ti.get(b"a", 6).map(|r| r.version), Some(2));
        for u in undo.into_iter().rev() {
            ti.undo(u);
        }
        assert_eq!(ti, before);
    }

    #[test]
    fn restore_rebuilds_same_index() {
        let mut ti = TreeIndex::new();
        ti.restore(b"a", rev(2), false, 2, 1);
        ti.restore(b"b", rev(3), false, 3, 1);
        ti.restore(b"a", rev(4), false, 2, 2);
        ti.restore(b"b", rev(5), true, 0, 0);
        ti.restore(b"c", rev(6), false, 6, 1);
        assert_eq!(ti, sample());
    }
}

//! [`KeyIndex`]: the revisions of one key, grouped in generations (etcd's `key_index.go`).
//!
//! A generation runs from the put that creates a key to the delete (tombstone) that ends it. The
//! last generation is the open one: empty when the key does not exist right now. For example,
//! put at 2, put at 3, delete at 4, put at 6 gives `[{2, 3, 4(t)}, {6}]`; a delete at 7 then gives
//! `[{2, 3, 4(t)}, {6, 7(t)}, {}]`.

use super::revision::Revision;

/// One life of a key, from creation to deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Version of the newest revision in `revs` (versions count from 1 at creation).
    ver: i64,
    /// Main revision of the put that created this generation.
    created: i64,
    /// Revisions, oldest first; in a closed generation the last one is the tombstone.
    revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the newest revision whose main is `<= at_rev`.
    fn newest_at(&self, at_rev: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at_rev)
    }
}

/// What a key looked like at some revision, as [`KeyIndex::get`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRevision {
    /// Revision of the change that produced the value visible at the asked revision.
    pub modified: Revision,
    /// Main revision that created the key's current generation.
    pub created: i64,
    /// Version of the key at the asked revision (1 for the creating put).
    pub version: i64,
}

/// The history of one key: its generations, oldest first (etcd's `keyIndex`).
///
/// The key itself is the map key in [`super::index::TreeIndex`] and is not repeated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    /// The newest revision recorded, put or tombstone.
    modified: Revision,
    /// Never empty; the last generation is the open one.
    generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::new()
    }
}

impl KeyIndex {
    /// A key with no history: one empty open generation.
    pub fn new() -> Self {
        KeyIndex {
            modified: Revision::default(),
            generations: vec![Generation::default()],
        }
    }

    /// True when nothing is left (a single empty generation): the index can forget the key.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// True when the key exists now (its open generation has revisions).
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    /// The newest revision recorded for the key.
    pub fn modified(&self) -> Revision {
        self.modified
    }

    /// Records a put at `rev`; starts a generation (version 1) if the key does not exist.
    ///
    /// `rev` must be newer than every revision already recorded.
    pub fn put(&mut self, rev: Revision) {
        debug_assert!(rev > self.modified, "put {rev:?} after {:?}", self.modified);
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        let g = &mut self.generations[last];
        if g.revs.is_empty() {
            g.created = rev.main;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Records a delete at `rev`: appends the tombstone and opens an empty generation.
    ///
    /// Returns false (and changes nothing) when the key does not exist.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if !self.is_live() {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// Reverts the newest [`KeyIndex::put`], given the `modified()` from before it.
    pub fn undo_put(&mut self, prev_modified: Revision) {
        if let Some(g) = self.generations.last_mut() {
            g.revs.pop();
            g.ver -= 1;
            if g.revs.is_empty() {
                *g = Generation::default();
            }
        }
        self.modified = prev_modified;
    }

    /// Reverts the newest successful [`KeyIndex::tombstone`], given `modified()` from before it.
    pub fn undo_tombstone(&mut self, prev_modified: Revision) {
        self.generations.pop();
        self.undo_put(prev_modified);
    }

    /// Replays one history row while rebuilding the index on open.
    ///
    /// Rows must come in revision order. `created` and `version` come from the stored
    /// `KeyValue`: after a compaction the first row of a key may be neither its creation nor
    /// version 1. A tombstone without a live generation (its generation was compacted down to
    /// the tombstone alone) is kept as such, exactly as the live index keeps it.
    pub fn restore(&mut self, rev: Revision, tombstone: bool, created: i64, version: i64) {
        let last = self.generations.len() - 1;
        let g = &mut self.generations[last];
        if g.revs.is_empty() {
            g.created = if tombstone { rev.main } else { created };
        }
        g.revs.push(rev);
        g.ver = if tombstone { g.ver + 1 } else { version };
        self.modified = rev;
        if tombstone {
            self.generations.push(Generation::default());
        }
    }

    /// The key as of `at_rev`: `None` if it did not exist then (etcd's `keyIndex.get`).
    pub fn get(&self, at_rev: i64) -> Option<KeyRevision> {
        let g = self.find_generation(at_rev)?;
        let n = g.newest_at(at_rev)?;
        Some(KeyRevision {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// The generation alive at `at_rev`, if the key existed then (etcd's `findGeneration`).
    fn find_generation(&self, at_rev: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(newest)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            // A closed generation whose tombstone is at or before `at_rev`: the key was deleted.
            if i != last && newest.main <= at_rev {
                return None;
            }
            if first.main <= at_rev {
                return Some(g);
            }
        }
        None
    }

    /// Where compacting at `at_rev` cuts (etcd's `doCompact`): the first generation to keep and,
    /// within it, the index of the newest revision `<= at_rev` (everything before it goes).
    ///
    /// Generations whose tombstone is older than `at_rev` go entirely. A tombstone exactly at
    /// `at_rev` is kept, as etcd keeps it, so that a watch from the compacted revision still
    /// sees that delete.
    fn compaction_point(&self, at_rev: i64) -> (usize, Option<usize>) {
        let mut gen_idx = 0;
        while gen_idx + 1 < self.generations.len() {
            match self.generations[gen_idx].revs.last() {
                Some(tomb) if tomb.main >= at_rev => break,
                _ => gen_idx += 1,
            }
        }
        (gen_idx, self.generations[gen_idx].newest_at(at_rev))
    }

    /// True when [`KeyIndex::compact`] at `at_rev` would drop anything.
    pub fn compaction_changes(&self, at_rev: i64) -> bool {
        matches!(self.compaction_point(at_rev), (g, r) if g > 0 || r.is_some_and(|r| r > 0))
    }

    /// Drops every revision that no read at or after `at_rev` can need: for the generation alive
    /// at `at_rev`, everything older than its newest revision `<= at_rev`; every generation that
    /// ended before `at_rev`. Dropped revisions are appended to `removed` (their history rows
    /// must go too). Afterwards [`KeyIndex::is_empty`] tells whether the key can be forgotten.
    pub fn compact(&mut self, at_rev: i64, removed: &mut Vec<Revision>) {
        let (gen_idx, rev_idx) = self.compaction_point(at_rev);
        for g in self.generations.drain(..gen_idx) {
            removed.extend(g.revs);
        }
        if let (Some(g), Some(rev_idx)) = (self.generations.first_mut(), rev_idx) {
            removed.extend(g.revs.drain(..rev_idx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn got(ki: &KeyIndex, at: i64) -> Option<(i64, i64, i64)> {
        ki.get(at).map(|r| (r.modified.main, r.created, r.version))
    }

    /// put 2, put 3, delete 4, put 6, put 8 (etcd's key_index_test layout, shortened).
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(rev(2));
        ki.put(rev(3));
        assert!(ki.tombstone(rev(4)));
        ki.put(rev(6));
        ki.put(rev(8));
        ki
    }

    #[test]
    fn versions_and_generations() {
        let ki = sample();
        assert_eq!(got(&ki, 1), None);
        assert_eq!(got(&ki, 2), Some((2, 2, 1)));
        assert_eq!(got(&ki, 3), Some((3, 2, 2)));
        assert_eq!(got(&ki, 4), None, "deleted at 4");
        assert_eq!(got(&ki, 5), None);
        // Re-created: version restarts at 1 and create revision moves.
        assert_eq!(got(&ki, 6), Some((6, 6, 1)));
        assert_eq!(got(&ki, 7), Some((6, 6, 1)));
        assert_eq!(got(&ki, 8), Some((8, 6, 2)));
        assert_eq!(got(&ki, 100), Some((8, 6, 2)));
        assert!(ki.is_live());
        assert_eq!(ki.modified(), rev(8));
    }

    #[test]
    fn sub_revisions_use_main_only() {
        let mut ki = KeyIndex::new();
        ki.put(Revision::new(5, 3));
        assert_eq!(got(&ki, 5), Some((5, 5, 1)));
        assert_eq!(ki.get(5).map(|r| r.modified), Some(Revision::new(5, 3)));
    }

    #[test]
    fn tombstone_of_missing_key_is_refused() {
        let mut ki = KeyIndex::new();
        assert!(!ki.tombstone(rev(2)));
        ki.put(rev(3));
        assert!(ki.tombstone(rev(4)));
        assert!(!ki.is_live());
        assert!(!ki.tombstone(rev(5)));
        assert_eq!(ki.modified(), rev(4));
    }

    #[test]
    fn undo_restores_previous_state() {
        let before = sample();
        let mut ki = before.clone();
        let m = ki.modified();
        ki.put(rev(9));
        ki.undo_put(m);
        assert_eq!(ki, before);

        let m = ki.modified();
        assert!(ki.tombstone(rev(9)));
        ki.undo_tombstone(m);
        assert_eq!(ki, before);

        // Undo of the put that opened a generation.
        let mut ki = before.clone();
        assert!(ki.tombstone(rev(9)));
        let after_delete = ki.clone();
        let m = ki.modified();
        ki.put(rev(10));
        ki.undo_put(m);
        assert_eq!(ki, after_delete);

        let mut fresh = KeyIndex::new();
        fresh.put(rev(2));
        fresh.undo_put(Revision::default());
        assert_eq!(fresh, KeyIndex::new());
    }

    fn compacted(ki: &KeyIndex, at: i64) -> (KeyIndex, Vec<i64>) {
        let mut ki = ki.clone();
        let mut removed = Vec::new();
        let changes = ki.compaction_changes(at);
        ki.compact(at, &mut removed);
        assert_eq!(changes, !removed.is_empty(), "compaction_changes at {at}");
        (ki, removed.iter().map(|r| r.main).collect())
    }

    #[test]
    fn compact_keeps_newest_revision_at_or_below() {
        let ki = sample();
        let (c, removed) = compacted(&ki, 1);
        assert!(removed.is_empty());
        assert_eq!(c, ki);

        let (c, removed) = compacted(&ki, 2);
        assert!(removed.is_empty());
        assert_eq!(c, ki);

        let (c, removed) = compacted(&ki, 3);
        assert_eq!(removed, vec![2]);
        assert_eq!(got(&c, 3), Some((3, 2, 2)), "version/create survive compaction");
        assert_eq!(got(&c, 8), Some((8, 6, 2)));
    }

    #[test]
    fn compact_at_tombstone_keeps_the_tombstone() {
        let ki = sample();
        let (c, removed) = compacted(&ki, 4);
        assert_eq!(removed, vec![2, 3]);
        assert_eq!(got(&c, 4), None);
        assert_eq!(got(&c, 6), Some((6, 6, 1)));
        // The tombstone stays until a later compaction.
        let (c2, removed) = compacted(&c, 5);
        assert_eq!(removed, vec![4]);
        assert_eq!(got(&c2, 8), Some((8, 6, 2)));
    }

    #[test]
    fn compact_drops_ended_generations() {
        let ki = sample();
        let (c, removed) = compacted(&ki, 5);
        assert_eq!(removed, vec![2, 3, 4]);
        assert_eq!(got(&c, 5), None);
        assert_eq!(got(&c, 7), Some((6, 6, 1)));

        let (c, removed) = compacted(&ki, 7);
        assert_eq!(removed, vec![2, 3, 4]);
        assert_eq!(got(&c, 7), Some((6, 6, 1)));

        let (c, removed) = compacted(&ki, 9);
        assert_eq!(removed, vec![2, 3, 4, 6]);
        assert_eq!(got(&c, 9), Some((8, 6, 2)));
        assert!(!c.is_empty());
    }

    #[test]
    fn compact_deleted_key_becomes_empty() {
        let mut ki = KeyIndex::new();
        ki.put(rev(2));
        ki.put(rev(3));
        assert!(ki.tombstone(rev(5)));
        let (c, removed) = compacted(&ki, 5);
        assert_eq!(removed, vec![2, 3]);
        assert!(!c.is_empty(), "tombstone at the compact revision is kept");
        let (c, removed) = compacted(&ki, 6);
        assert_eq!(removed, vec![2, 3, 5]);
        assert!(c.is_empty());
    }

    #[test]
    fn restore_matches_live_index() {
        let live = sample();
        let mut restored = KeyIndex::new();
        restored.restore(rev(2), false, 2, 1);
        restored.restore(rev(3), false, 2, 2);
        restored.restore(rev(4), true, 0, 0);
        restored.restore(rev(6), false, 6, 1);
        restored.restore(rev(8), false, 6, 2);
        assert_eq!(restored, live);

        // After compaction at 3 the first row is version 2 of a generation created at 2.
        let (c, _) = compacted(&live, 3);
        let mut restored = KeyIndex::new();
        restored.restore(rev(3), false, 2, 2);
        restored.restore(rev(4), true, 0, 0);
        restored.restore(rev(6), false, 6, 1);
        restored.restore(rev(8), false, 6, 2);
        assert_eq!(restored, c);

        // After compaction at 4 the first row is the lone tombstone.
        let (c, _) = compacted(&live, 4);
        let mut restored = KeyIndex::new();
        restored.restore(rev(4), true, 0, 0);
        restored.restore(rev(6), false, 6, 1);
        restored.restore(rev(8), false, 6, 2);
        assert_eq!(got(&restored, 4), got(&c, 4));
        assert_eq!(got(&restored, 8), got(&c, 8));
        let (c2, r1) = compacted(&c, 7);
        let (r2, r2_removed) = compacted(&restored, 7);
        assert_eq!(r1, r2_removed);
        assert_eq!(c2, r2);
    }
}

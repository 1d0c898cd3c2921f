//! What is known of the Raft log in memory: every entry not yet purged (the newest held in
//! memory, older ones by where the WAL has them), the vote and the committed and last purged
//! log ids.
//!
//! The log store changes it before handing the same change to the WAL, and WAL replay rebuilds
//! it by making the same changes in the same order, so both go through the methods here.
//!
//! Memory is bounded by bytes, not entries: once an entry is written, the WAL tells where it
//! lies ([`LogCache::placed`]), and [`LogCache::evict`] lets go of the oldest written entries
//! while they add up to more than the budget. A follower that lags that far behind gets them
//! read back from the WAL. The budget does not depend on the snapshot interval, so large values
//! cannot fill memory with a hundred thousand entries before a snapshot purges them.
//!
//! The newest entries a purge removes from memory stay readable until the next purge, to a
//! read that starts among them ([`LogCache::recently_purged`]): openraft may purge entries that
//! one of its replication streams is about to read (a stream restarted from an older position while acknowledgements
//! of the previous one let the purge go ahead), and a read missing the front of its range makes
//! it send an AppendEntries whose entries do not follow its `prev_log_id` (a debug assertion in
//! its stream state; a malformed request in release builds). Found by the robustness suite.

use std::collections::BTreeMap;

use openraft::entry::RaftEntry;

use super::wal::{HardState, Location};
use super::{Entry, LogId, Vote};

/// At most this many purged entries stay readable (see [`LogCache::recently_purged`])...
pub const RETAINED_ENTRIES: usize = 1024;
/// ...and at most this many bytes of their frames.
pub const RETAINED_BYTES: u64 = 8 << 20;

/// The unpurged log and its metadata.
#[derive(Debug, Default, Clone)]
pub struct LogCache {
    /// Entries held in memory, by index: the newest ones.
    pub entries: BTreeMap<u64, Entry>,
    /// Entries let go of, all older than those in `entries`: their log id and their frame.
    pub spilled: BTreeMap<u64, (LogId, Location)>,
    /// Where the entries in `entries` that are written lie: those that may be let go of.
    written: BTreeMap<u64, Location>,
    /// The frame bytes of `written`.
    written_bytes: u64,
    /// The last purged log id: everything up to it is gone, but for `recently_purged`.
    pub last_purged: Option<LogId>,
    /// The newest entries the last purge removed from memory (at most
    /// [`RETAINED_ENTRIES`] and [`RETAINED_BYTES`]): a contiguous run ending at `last_purged`,
    /// still readable for a replication stream that lags (see the module docs). Empty after a
    /// purge to an id the log did not hold. Not part of the log's state: never written, not
    /// compared.
    pub recently_purged: BTreeMap<u64, Entry>,
    /// The last saved vote.
    pub vote: Option<Vote>,
    /// The last saved committed log id.
    pub committed: Option<LogId>,
}

/// The same entries in memory, the same spilled log ids, and the same vote, committed and last
/// purged. Where the WAL put the frames does not count, so a model kept without a WAL equals
/// the cache replayed from one.
impl PartialEq for LogCache {
    fn eq(&self, other: &Self) -> bool {
        let spilled = |c: &LogCache| c.spilled.iter().map(|(i, (id, _))| (*i, *id)).collect::<Vec<_>>();
        self.entries == other.entries
            && spilled(self) == spilled(other)
            && self.hard_state() == other.hard_state()
    }
}

impl LogCache {
    /// Adds (or replaces) an entry, in memory.
    pub fn append(&mut self, entry: Entry) {
        let index = entry.index();
        let replaced = self.written.remove(&index);
        self.unwrite(replaced);
        self.entries.insert(index, entry);
    }

    /// Records that the entry with `log_id` was written at `at`, if the log still holds it.
    pub fn placed(&mut self, log_id: LogId, at: Location) {
        if self
            .entries
            .get(&log_id.index)
            .is_some_and(|e| e.log_id() == log_id)
        {
            let replaced = self.written.insert(log_id.index, at);
            self.unwrite(replaced);
            self.written_bytes += u64::from(at.len);
        }
    }

    /// Lets go of the oldest written entries in memory while the written ones add up to more
    /// than `budget` bytes; they are then read back from the WAL when needed.
    pub fn evict(&mut self, budget: u64) {
        while self.written_bytes > budget {
            let (Some((&oldest, _)), Some((&index, &at))) =
                (self.entries.first_key_value(), self.written.first_key_value())
            else {
                break;
            };
            // Only ever the oldest entry, so the spilled ones stay a prefix of the log.
            if index != oldest {
                break;
            }
            self.written.remove(&index);
            self.written_bytes -= u64::from(at.len);
            if let Some(entry) = self.entries.remove(&index) {
                self.spilled.insert(index, (entry.log_id(), at));
            }
        }
    }

    /// Removes every entry at `from` and after.
    pub fn truncate_from(&mut self, from: u64) {
        self.recently_purged.split_off(&from);
        self.entries.split_off(&from);
        self.spilled.split_off(&from);
        let gone = self.written.split_off(&from);
        self.unwrite_all(gone);
    }

    /// Removes every entry up to `log_id` and remembers it as the last purged; the newest
    /// entries it removes from memory stay in [`LogCache::recently_purged`] if the log
    /// held `log_id` itself (so they are the committed log's).
    pub fn purge(&mut self, log_id: LogId) {
        let held = self
            .entries
            .get(&log_id.index)
            .is_some_and(|e| e.log_id() == log_id);
        match log_id.index.checked_add(1) {
            Some(keep_from) => {
                let kept = self.entries.split_off(&keep_from);
                let removed = std::mem::replace(&mut self.entries, kept);
                self.spilled = self.spilled.split_off(&keep_from);
                let kept = self.written.split_off(&keep_from);
                let gone = std::mem::replace(&mut self.written, kept);
                self.recently_purged = if held {
                    newest(removed, &gone)
                } else {
                    BTreeMap::new()
                };
                self.unwrite_all(gone);
            }
            None => {
                self.entries.clear();
                self.spilled.clear();
                self.written.clear();
                self.written_bytes = 0;
                self.recently_purged.clear();
            }
        }
        self.last_purged = Some(log_id);
    }

    /// Every entry's index, oldest first.
    pub fn indexes(&self) -> impl Iterator<Item = u64> + '_ {
        self.spilled.keys().chain(self.entries.keys()).copied()
    }

    /// The bytes of written entries held in memory.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    fn unwrite(&mut self, at: Option<Location>) {
        if let Some(at) = at {
            self.written_bytes -= u64::from(at.len);
        }
    }

    fn unwrite_all(&mut self, gone: BTreeMap<u64, Location>) {
        for at in gone.into_values() {
            self.unwrite(Some(at));
        }
    }

    /// The vote, committed and last purged log ids: what a WAL segment header carries.
    pub fn hard_state(&self) -> HardState {
        HardState {
            vote: self.vote,
            committed: self.committed,
            last_purged: self.last_purged,
        }
    }

    /// The id of the last entry, or the last purged one if there is none.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, e)| e.log_id())
            .or_else(|| self.spilled.last_key_value().map(|(_, (id, _))| *id))
            .or(self.last_purged)
    }
}

/// The newest of the `removed` entries, within [`RETAINED_ENTRIES`] and [`RETAINED_BYTES`] (of
/// the frames `written` gives; one not placed yet counts no bytes).
fn newest(removed: BTreeMap<u64, Entry>, written: &BTreeMap<u64, Location>) -> BTreeMap<u64, Entry> {
    let mut kept = BTreeMap::new();
    let mut bytes = 0;
    for (index, entry) in removed.into_iter().rev() {
        bytes += written.get(&index).map_or(0, |at| u64::from(at.len));
        if kept.len() >= RETAINED_ENTRIES || bytes > RETAINED_BYTES {
            break;
        }
        kept.insert(index, entry);
    }
    kept
}

#[cfg(test)]
mod tests {
    use openraft::impls::EntryPayload;

    use super::*;
    use crate::raft::codec::log_id;

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    /// Where entry `index` is said to lie: 100 bytes each, one after another.
    fn at(index: u64) -> Location {
        Location {
            seq: 1,
            offset: index * 100,
            len: 100,
        }
    }

    /// A cache of entries 1..=`last` in term 1, those up to `written` placed.
    fn cache(last: u64, written: u64) -> LogCache {
        let mut cache = LogCache::default();
        for index in 1..=last {
            cache.append(blank(1, index));
        }
        for index in 1..=written {
            cache.placed(log_id(1, 1, index), at(index));
        }
        cache
    }

    #[test]
    fn eviction_lets_go_of_the_oldest_written_entries_only() {
        let mut cache = cache(10, 6);
        assert_eq!(cache.written_bytes(), 600);
        cache.evict(250);
        assert_eq!(cache.spilled.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(cache.spilled[&3], (log_id(1, 1, 3), at(3)));
        assert_eq!(cache.written_bytes(), 200);
        // Unwritten entries stay, whatever the budget.
        cache.evict(0);
        assert_eq!(cache.spilled.len(), 6);
        assert_eq!(cache.entries.keys().copied().collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert_eq!(cache.indexes().collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        assert_eq!(cache.last_log_id(), Some(log_id(1, 1, 10)));
    }

    #[test]
    fn a_place_reported_for_a_replaced_entry_is_ignored() {
        let mut cache = cache(5, 3);
        cache.truncate_from(4);
        cache.append(blank(2, 4));
        // The WAL thread reports the old entry 4 it wrote before the truncation.
        cache.placed(log_id(1, 1, 4), at(4));
        cache.evict(0);
        assert_eq!(cache.spilled.len(), 3);
        assert!(
            cache.entries.contains_key(&4),
            "the new entry 4 is not written yet"
        );
        cache.placed(log_id(2, 1, 4), at(6));
        cache.evict(0);
        assert_eq!(cache.spilled[&4], (log_id(2, 1, 4), at(6)));
    }

    #[test]
    fn truncation_and_purge_drop_spilled_entries_and_their_bytes() {
        let mut cache = cache(10, 10);
        cache.evict(500);
        assert_eq!(cache.spilled.len(), 5);
        cache.truncate_from(8);
        assert_eq!(cache.written_bytes(), 200);
        cache.truncate_from(4);
        assert_eq!(cache.written_bytes(), 0);
        assert_eq!(cache.spilled.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(cache.last_log_id(), Some(log_id(1, 1, 3)));
        cache.purge(log_id(1, 1, 2));
        assert_eq!(cache.indexes().collect::<Vec<_>>(), [3]);
        cache.purge(log_id(1, 1, 3));
        assert_eq!(cache.last_log_id(), Some(log_id(1, 1, 3)));
        assert_eq!(cache.written_bytes(), 0);
    }

    #[test]
    fn the_newest_entries_a_purge_removes_stay_readable_until_the_next() {
        let mut log = cache(10, 8);
        log.purge(log_id(1, 1, 6));
        let recent = |c: &LogCache| c.recently_purged.keys().copied().collect::<Vec<_>>();
        assert_eq!(recent(&log), [1, 2, 3, 4, 5, 6]);
        assert_eq!(log.indexes().collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert_eq!(log.written_bytes(), 200, "purged entries count against no budget");
        log.purge(log_id(1, 1, 9));
        assert_eq!(recent(&log), [7, 8, 9], "9 is not written yet, and kept too");
        log.truncate_from(8);
        assert_eq!(recent(&log), [7]);
        // A purge to an id the log does not hold (another term) keeps nothing.
        let mut other = cache(10, 10);
        other.purge(log_id(2, 1, 5));
        assert!(recent(&other).is_empty());
        // At most RETAINED_ENTRIES.
        let mut long = cache((RETAINED_ENTRIES + 10) as u64, (RETAINED_ENTRIES + 10) as u64);
        long.purge(log_id(1, 1, (RETAINED_ENTRIES + 5) as u64));
        assert_eq!(long.recently_purged.len(), RETAINED_ENTRIES);
        assert_eq!(long.recently_purged.first_key_value().map(|(i, _)| *i), Some(6));
    }
}

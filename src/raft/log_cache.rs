//! What is known of the Raft log in memory: every entry not yet purged, the vote and the
//! committed and last purged log ids.
//!
//! The log store changes it before handing the same change to the WAL, and WAL replay rebuilds
//! it by making the same changes in the same order, so both go through the methods here.

use std::collections::BTreeMap;

use openraft::entry::RaftEntry;

use super::wal::HardState;
use super::{Entry, LogId, Vote};

/// The unpurged log and its metadata, in memory.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LogCache {
    /// Entries by index.
    pub entries: BTreeMap<u64, Entry>,
    /// The last purged log id: everything up to it is gone.
    pub last_purged: Option<LogId>,
    /// The last saved vote.
    pub vote: Option<Vote>,
    /// The last saved committed log id.
    pub committed: Option<LogId>,
}

impl LogCache {
    /// Adds (or replaces) an entry.
    pub fn append(&mut self, entry: Entry) {
        self.entries.insert(entry.index(), entry);
    }

    /// Removes every entry at `from` and after.
    pub fn truncate_from(&mut self, from: u64) {
        self.entries.split_off(&from);
    }

    /// Removes every entry up to `log_id` and remembers it as the last purged.
    pub fn purge(&mut self, log_id: LogId) {
        self.entries = match log_id.index.checked_add(1) {
            Some(keep_from) => self.entries.split_off(&keep_from),
            None => BTreeMap::new(),
        };
        self.last_purged = Some(log_id);
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
            .or(self.last_purged)
    }
}

//! Reads of the log for openraft's replication and apply: from memory, or from the WAL for
//! entries the log cache has let go of.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::OptionalSend;
use openraft::storage::RaftLogReader;

use super::read_cache;
use crate::raft::durable::with_path;
use crate::raft::log_cache::LogCache;
use crate::raft::wal::Location;
use crate::raft::wal::replay::read_entry;
use crate::raft::wal::segment::Segment;
use crate::raft::{Entry, LogId, TypeConfig, Vote};

/// A cheap reader of the log for replication tasks.
#[derive(Clone)]
pub struct LogReader {
    cache: Arc<RwLock<LogCache>>,
    /// The WAL's directory, where spilled entries are read back from.
    dir: Arc<PathBuf>,
}

impl LogReader {
    /// A reader of `cache`, whose spilled entries are in the WAL in `dir`.
    pub fn new(cache: Arc<RwLock<LogCache>>, dir: Arc<PathBuf>) -> Self {
        Self { cache, dir }
    }

    /// The entries in `range`: if it starts among the entries the last purge left readable
    /// (past the first of them), those first (see [`LogCache::recently_purged`]), then the
    /// log's. A lagging replication stream's read starts there; a read from the beginning of
    /// the log (openraft's start-up, its conformance suite) sees it as purged. The ones in
    /// memory are copied under the cache's lock; spilled ones are read from the WAL after it is
    /// let go. The WAL never rewrites a frame, so what is read is what the log held when the
    /// read started, unless a purge deleted the segment meanwhile: those entries are left out,
    /// as openraft allows for purged ones.
    pub fn read<RB: RangeBounds<u64>>(&self, range: RB) -> io::Result<Vec<Entry>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let (recent, spilled, resident) = {
            let cache = read_cache(&self.cache)?;
            let start = match range.start_bound() {
                Bound::Included(&i) => i,
                Bound::Excluded(&i) => i.saturating_add(1),
                Bound::Unbounded => 0,
            };
            let among_recent = cache
                .recently_purged
                .first_key_value()
                .is_some_and(|(&first, _)| start > first);
            let recent: Vec<Entry> = if among_recent {
                cache
                    .recently_purged
                    .range(bounds)
                    .map(|(_, e)| e.clone())
                    .collect()
            } else {
                Vec::new()
            };
            let spilled: Vec<(u64, LogId, Location)> = cache
                .spilled
                .range(bounds)
                .map(|(index, (log_id, at))| (*index, *log_id, *at))
                .collect();
            let resident: Vec<Entry> = cache.entries.range(range).map(|(_, e)| e.clone()).collect();
            (recent, spilled, resident)
        };
        if spilled.is_empty() && recent.is_empty() {
            return Ok(resident);
        }
        let mut entries = recent;
        entries.reserve(spilled.len() + resident.len());
        let mut open: Option<(u64, File)> = None;
        for (index, log_id, at) in spilled {
            match read_spilled(&self.dir, &mut open, log_id, at) {
                Ok(entry) => entries.push(entry),
                Err(err) => {
                    let purged = read_cache(&self.cache)?.last_purged;
                    if purged.is_some_and(|p| p.index >= index) {
                        // Purged while we read: it and everything before it is gone.
                        entries.clear();
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        entries.extend(resident);
        Ok(entries)
    }
}

/// Reads the entry `log_id` from its frame `at`, reusing `open` while the segment stays the same.
fn read_spilled(
    dir: &Path,
    open: &mut Option<(u64, File)>,
    log_id: LogId,
    at: Location,
) -> io::Result<Entry> {
    let path = dir.join(Segment::file_name(at.seq));
    if open.as_ref().is_none_or(|(seq, _)| *seq != at.seq) {
        let file = File::open(&path).map_err(|e| with_path(e, "open WAL segment", &path))?;
        *open = Some((at.seq, file));
    }
    let Some((_, file)) = open.as_ref() else {
        return Err(io::Error::other("no WAL segment open"));
    };
    let entry = read_entry(file, at).map_err(|e| with_path(e, "read an entry back from", &path))?;
    if entry.log_id != log_id {
        return Err(io::Error::other(format!(
            "{} holds entry {:?} where {log_id:?} was written",
            path.display(),
            entry.log_id
        )));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read(range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_cache(&self.cache)?.vote)
    }
}

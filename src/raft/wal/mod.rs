//! The Raft log's write-ahead log: append-only segment files, as etcd's `wal` package keeps them.
//!
//! # Format
//! `member/wal/` holds segment files named by a sequence number, `0000000000000001.wal`,
//! `0000000000000002.wal`, ... Each is a run of framed [`Record`]s (see [`record`] for the
//! framing and its CRC-32C): a header first, then entries, votes, committed log ids, truncations
//! and purges, in the order they happened. Replaying them in order rebuilds the log.
//!
//! A segment is preallocated to [`SEGMENT_SIZE`] (fallocate; plain appends where the file
//! system cannot), so an append changes neither size nor block map and fdatasync flushes data
//! only. Unwritten space reads as zeros, and a zero length ends the data.
//!
//! # Torn writes and stale bytes
//! After a crash the last segment may end in a torn write: the first frame that does not check
//! out ends the log there. Everything after that point is then cut off and preallocated afresh
//! (durably, before anything new is written), so past the end of the valid data there are only
//! zeros, and a record from an unacknowledged write can never reappear behind a newer one
//! written over its start. The CRC also covers the segment's sequence number and the frame's
//! offset, so bytes are only ever accepted where they were written. A bad frame anywhere else,
//! a missing segment, or a CRC failure in the last segment that cannot be a torn write (more
//! data follows it, and no sector of it is all zeros as an unwritten one would be: etcd's test)
//! is corruption, and opening fails.
//!
//! # Rotation and purge
//! When a segment is full, it is sealed (cut to its last record, fsynced) and the next one
//! starts with a header carrying the vote, committed and last purged log ids, so nothing older
//! is needed for them. A purge is a record; once it is durable, the oldest segments whose
//! entries are all purged are deleted, oldest first, each deletion made durable before the
//! next. Nothing is ever rewritten.
//!
//! # Layout
//! - [`record`]: one record and its framing;
//! - [`segment`]: one segment file;
//! - [`replay`]: reading the segments back on open, recovering a torn tail;
//! - [`writer`]: the [`Wal`] that appends batches, rotates and deletes purged segments.
//!
//! # Reading entries back
//! The log cache keeps at most a budget of entry bytes in memory; older entries are read back
//! from their frames ([`Location`], [`replay::read_entry`]) when a lagging follower needs them.
//! Since nothing is ever rewritten, a frame stays where it was written until its segment is
//! deleted after a purge.

pub mod record;
pub mod replay;
pub mod segment;
#[cfg(test)]
mod tests;
pub mod writer;

pub use record::Record;
pub use writer::Wal;

use super::{LogId, Vote};

/// The size segments are preallocated to; the next segment starts once a batch would pass it.
pub const SEGMENT_SIZE: u64 = 64 << 20;

/// The state beside the entries: what a segment's header carries forward.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardState {
    /// The last saved vote.
    pub vote: Option<Vote>,
    /// The last saved committed log id.
    pub committed: Option<LogId>,
    /// The last purged log id.
    pub last_purged: Option<LogId>,
}

/// Where a record's frame lies in the WAL: what reads an entry back once the log cache has
/// let go of it ([`replay::read_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The segment's sequence number.
    pub seq: u64,
    /// The frame's offset in the segment.
    pub offset: u64,
    /// The frame's length, header included.
    pub len: u32,
}

/// A segment on disk, and the highest entry index ever written to it (`None` if none was):
/// the segment may be deleted once that index is purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's sequence number.
    pub seq: u64,
    /// The highest entry index written to it.
    pub max_index: Option<u64>,
}

impl SegmentInfo {
    /// Whether every entry the segment holds is covered by `purged`.
    pub fn is_purged_by(&self, purged: Option<LogId>) -> bool {
        match (self.max_index, purged) {
            (None, _) => true,
            (Some(max), Some(purged)) => max <= purged.index,
            (Some(_), None) => false,
        }
    }
}

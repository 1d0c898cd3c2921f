//! The WAL writer: batches of records, one write and at most one fdatasync each, rotation to a
//! new segment when one is full, and deletion of segments whose entries are all purged.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::record::Record;
use super::replay::{list_segments, replay};
use super::segment::Segment;
use super::{HardState, Location, SegmentInfo};
use crate::raft::LogId;
use crate::raft::durable::{sync_dir, with_path};
use crate::raft::log_cache::LogCache;

/// An open WAL, appending to its last segment.
///
/// Records are [pushed](Wal::push) into a pending batch, which [`Wal::commit`] writes with one
/// write and, when asked, makes durable with one fdatasync. After a failed write or fdatasync
/// nothing more is written: what reached the disk is unknown (a failed fdatasync may have
/// dropped the dirty pages), so every later call fails too and the WAL must be reopened.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_size: u64,
    current: Segment,
    /// Every segment on disk, oldest first; the last is `current`.
    segments: VecDeque<SegmentInfo>,
    /// Vote, committed and last purged as of the records pushed so far.
    state: HardState,
    /// Frames pushed and not yet written.
    buf: Vec<u8>,
    /// Why writing stopped, after a failure.
    failed: Option<String>,
}

impl Wal {
    /// Opens the WAL in `dir` (creating it with a first segment if it has none), replays it, and
    /// returns the writer and the log the records leave. Segments are preallocated to
    /// `segment_size` ([`SEGMENT_SIZE`](super::SEGMENT_SIZE) outside tests).
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<(Wal, LogCache)> {
        Self::open_bounded(dir, segment_size, u64::MAX)
    }

    /// [`Wal::open`], keeping at most `cache_bytes` of written entries in the returned log
    /// cache (see [`LogCache::evict`]) while it replays.
    pub fn open_bounded(dir: &Path, segment_size: u64, cache_bytes: u64) -> io::Result<(Wal, LogCache)> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| with_path(e, "create", dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let seqs = list_segments(dir)?;
        let (cache, segments, current) = if seqs.is_empty() {
            let first = Segment::create(dir, 1, segment_size, &HardState::default())?;
            let info = SegmentInfo {
                seq: 1,
                max_index: None,
            };
            (LogCache::default(), VecDeque::from([info]), first)
        } else {
            let replayed = replay(dir, &seqs, segment_size, cache_bytes)?;
            (replayed.cache, replayed.segments, replayed.last)
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_size,
            current,
            segments,
            state: cache.hard_state(),
            buf: Vec::new(),
            failed: None,
        };
        Ok((wal, cache))
    }

    /// Adds `record` to the pending batch and returns where its frame will lie. If it would
    /// overflow the current segment, what is pending is written, the segment sealed and the
    /// next one started first.
    pub fn push(&mut self, record: Record) -> io::Result<Location> {
        self.check()?;
        let pushed = self.push_inner(&record);
        self.fail_on(pushed)
    }

    /// Writes the pending batch; with `sync`, makes everything written durable (one fdatasync)
    /// and then deletes the oldest segments whose entries are all purged.
    pub fn commit(&mut self, sync: bool) -> io::Result<()> {
        self.check()?;
        let committed = self.commit_inner(sync);
        self.fail_on(committed)
    }

    /// The committed log id as of the records pushed so far.
    pub fn committed(&self) -> Option<LogId> {
        self.state.committed
    }

    /// The segments on disk, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.segments.iter()
    }

    fn push_inner(&mut self, record: &Record) -> io::Result<Location> {
        let mut start = self.buf.len();
        let at = self.current.offset() + start as u64;
        record.encode(&mut self.buf, self.current.seq(), at)?;
        let end = self.current.offset() + self.buf.len() as u64;
        if end > self.segment_size && (start > 0 || self.current.has_records()) {
            // Frames are checksummed for their place: encode it again at the next segment's start.
            self.buf.truncate(start);
            self.rotate()?;
            start = 0;
            record.encode(&mut self.buf, self.current.seq(), self.current.offset())?;
        }
        let location = Location {
            seq: self.current.seq(),
            offset: self.current.offset() + start as u64,
            len: u32::try_from(self.buf.len() - start).map_err(io::Error::other)?,
        };
        match record {
            Record::Entry { index, .. } => {
                if let Some(info) = self.segments.back_mut() {
                    info.max_index = info.max_index.max(Some(*index));
                }
            }
            Record::Vote(vote) => self.state.vote = Some(*vote),
            Record::Committed(log_id) => self.state.committed = Some(*log_id),
            Record::Purge(log_id) => self.state.last_purged = Some(*log_id),
            Record::TruncateFrom(_) | Record::Header { .. } => {}
        }
        Ok(location)
    }

    fn commit_inner(&mut self, sync: bool) -> io::Result<()> {
        crate::failpoint::hit("wal-before-write");
        self.write_pending()?;
        if sync {
            crate::failpoint::hit("wal-before-sync");
            if crate::failpoint::fails("wal-sync") {
                return Err(io::Error::other("fdatasync failed (failpoint wal-sync)"));
            }
            self.current.sync()?;
            crate::failpoint::hit("wal-after-sync");
            self.delete_purged()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.current.write(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Seals the current segment (durably, with everything written to it) and starts the next
    /// one with a header carrying the state so far.
    fn rotate(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.current.seal()?;
        let seq = self.current.seq() + 1;
        self.current = Segment::create(&self.dir, seq, self.segment_size, &self.state)?;
        self.segments.push_back(SegmentInfo { seq, max_index: None });
        tracing::debug!(segment = %Segment::file_name(seq), "started a new WAL segment");
        Ok(())
    }

    /// Deletes the oldest segments (never the current one) whose entries are all purged, each
    /// deletion durable before the next, so that the segments left never have a gap. Only
    /// called once the purge records are durable.
    fn delete_purged(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.front().copied() else {
                break;
            };
            if !oldest.is_purged_by(self.state.last_purged) {
                break;
            }
            let path = self.dir.join(Segment::file_name(oldest.seq));
            fs::remove_file(&path).map_err(|e| with_path(e, "remove purged WAL segment", &path))?;
            sync_dir(&self.dir)?;
            self.segments.pop_front();
            tracing::debug!(segment = %Segment::file_name(oldest.seq), "deleted a purged WAL segment");
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(io::Error::other(format!(
                "the WAL stopped writing after an earlier failure: {why}"
            ))),
        }
    }

    fn fail_on<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(err) = &result {
            self.failed = Some(err.to_string());
        }
        result
    }
}

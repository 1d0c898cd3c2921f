//! Reading the WAL back: on open, the segments in order into a [`LogCache`], with recovery of a
//! torn tail in the last one; later, single entries the cache let go of ([`read_entry`]).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use openraft::entry::RaftEntry;

use super::record::{FRAME_HEADER, Record, Scan};
use super::segment::Segment;
use super::{Location, SegmentInfo};
use crate::raft::Entry;
use crate::raft::codec::{decode_entry, invalid_data};
use crate::raft::durable::{sync_dir, with_path};
use crate::raft::log_cache::LogCache;

/// etcd's minimum sector size: a torn write leaves whole sectors unwritten (all zeros).
const SECTOR: u64 = 512;

/// What replaying the WAL found.
#[derive(Debug)]
pub struct Replayed {
    /// The log as the records left it.
    pub cache: LogCache,
    /// Every segment, oldest first.
    pub segments: VecDeque<SegmentInfo>,
    /// The last segment, open to append after its valid data.
    pub last: Segment,
}

/// Where one segment's valid data ends, and what follows it.
struct SegmentEnd {
    info: SegmentInfo,
    /// Offset of the first record after the header.
    start: usize,
    /// Offset of the first byte that is not part of a valid record.
    end: usize,
    /// Why the data ends there, if not with zeros or the end of the file.
    torn: Option<String>,
    /// The file's length.
    file_len: usize,
}

/// Lists the segments in `dir`, oldest first, removing any left half-created by a crash.
/// Fails if a sequence number is missing between the first and the last.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let mut removed = false;
    for dirent in fs::read_dir(dir).map_err(|e| with_path(e, "list", dir))? {
        let dirent = dirent.map_err(|e| with_path(e, "list", dir))?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = Segment::parse_name(name) {
            seqs.push(seq);
        } else if Segment::is_leftover(name) {
            fs::remove_file(dirent.path()).map_err(|e| with_path(e, "remove", &dirent.path()))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(invalid_data(format!(
                "WAL in {} is missing segment {} (it has {} and {})",
                dir.display(),
                Segment::file_name(pair[0] + 1),
                Segment::file_name(pair[0]),
                Segment::file_name(pair[1]),
            )));
        }
    }
    Ok(seqs)
}

/// Replays the segments `seqs` of `dir` (as listed by [`list_segments`], not empty) and opens
/// the last one for appending. A torn tail in the last segment is cut off and the segment
/// preallocated to `segment_size` again, durably, before this returns.
/// Keeps at most `cache_bytes` of the entries replayed in memory: the oldest are let go of as
/// replay goes ([`LogCache::evict`]) and read back from their frames when needed.
pub fn replay(dir: &Path, seqs: &[u64], segment_size: u64, cache_bytes: u64) -> io::Result<Replayed> {
    let mut cache = LogCache::default();
    let mut segments = VecDeque::with_capacity(seqs.len());
    let mut last_end = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = dir.join(Segment::file_name(seq));
        let (data, file_len) = read_written(&path).map_err(|e| with_path(e, "read WAL segment", &path))?;
        let is_last = i + 1 == seqs.len();
        let segment = SegmentData { data, file_len };
        let end = replay_segment(segment, seq, i == 0, is_last, &mut cache, cache_bytes)
            .map_err(|e| with_path(e, "replay WAL segment", &path))?;
        segments.push_back(end.info);
        if is_last {
            last_end = Some(end);
        }
    }
    check_continuous(&cache, seqs[0])?;
    let Some(end) = last_end else {
        return Err(io::Error::other(format!(
            "no WAL segment to replay in {}",
            dir.display()
        )));
    };
    let last = Segment::open(dir, end.info.seq, end.start as u64, end.end as u64)?;
    if let Some(why) = &end.torn {
        tracing::warn!(
            segment = %Segment::file_name(end.info.seq),
            offset = end.end,
            why = %why,
            "the WAL ends in a torn write; cutting it off there"
        );
        last.discard_tail(segment_size)?;
    } else if (end.file_len as u64) < segment_size {
        last.reserve(segment_size)?;
    }
    Ok(Replayed {
        cache,
        segments,
        last,
    })
}

/// Checks that the log replayed has no hole: its entries follow each other, from the one after
/// the last purged on, and segments are only missing at the start (`first_seq` > 1) after a
/// purge. openraft only ever appends the next entry, truncates a suffix and purges a prefix, so
/// a hole means records were lost (a damaged purge taken for a torn write, say).
fn check_continuous(cache: &LogCache, first_seq: u64) -> io::Result<()> {
    if first_seq > 1 && cache.last_purged.is_none() {
        return Err(invalid_data(format!(
            "segments before {} were removed, but no purge is recorded",
            Segment::file_name(first_seq)
        )));
    }
    let mut expected = cache.last_purged.as_ref().map(|purged| purged.index + 1);
    for index in cache.indexes() {
        if let Some(expected) = expected
            && index != expected
        {
            return Err(invalid_data(format!(
                "the log has a hole: entry {index} follows {}",
                expected.saturating_sub(1)
            )));
        }
        expected = Some(index + 1);
    }
    Ok(())
}

/// How much of a segment file is read at a time while looking for the end of what was written.
const ZERO_SCAN_CHUNK: usize = 1 << 20;

/// A segment file's bytes up to the last one that is not zero (rounded up to a sector), and
/// the file's length. The last segment is preallocated, mostly zeros: reading it whole made
/// every start hold a 64 MiB buffer for a log of a few kilobytes.
fn read_written(path: &Path) -> io::Result<(Vec<u8>, usize)> {
    let file = File::open(path)?;
    let file_len = usize::try_from(file.metadata()?.len()).map_err(invalid_data)?;
    let mut chunk = vec![0; ZERO_SCAN_CHUNK.min(file_len)];
    let mut end = file_len;
    while end > 0 {
        let start = end.saturating_sub(chunk.len());
        let piece = &mut chunk[..end - start];
        file.read_exact_at(piece, start as u64)?;
        if let Some(last) = piece.iter().rposition(|&b| b != 0) {
            end = start + last + 1;
            break;
        }
        end = start;
    }
    let end = end.next_multiple_of(SECTOR as usize).min(file_len);
    let mut data = vec![0; end];
    file.read_exact_at(&mut data, 0)?;
    Ok((data, file_len))
}

/// What [`read_written`] read of a segment: past `data`, up to `file_len`, the file is zeros.
struct SegmentData {
    data: Vec<u8>,
    file_len: usize,
}

impl SegmentData {
    /// Makes `data` reach `end` (at most the file's length) with the zeros the file holds
    /// there; whether it grew.
    fn reach(&mut self, end: usize) -> bool {
        let end = end.min(self.file_len);
        let grew = end > self.data.len();
        if grew {
            self.data.resize(end, 0);
        }
        grew
    }
}

/// Replays one segment's records into `cache` and finds where its valid data ends.
fn replay_segment(
    mut segment: SegmentData,
    seq: u64,
    is_first: bool,
    is_last: bool,
    cache: &mut LogCache,
    cache_bytes: u64,
) -> io::Result<SegmentEnd> {
    let mut info = SegmentInfo { seq, max_index: None };
    let mut offset = 0usize;
    let mut start = 0usize;
    let scan = loop {
        let rest = segment.data.get(offset..).unwrap_or_default();
        let (record, len) = match Record::read(rest, seq, offset as u64)? {
            Scan::Record(record, len) => (record, len),
            // A frame whose last bytes are zeros runs past what was read: read on (zeros).
            Scan::Cut { len } if segment.reach(offset + FRAME_HEADER + len) => continue,
            other => break other,
        };
        match (offset, record) {
            (0, Record::Header { segment, state }) => {
                if segment != seq {
                    return Err(invalid_data(format!(
                        "the header names segment {segment}, not {seq}"
                    )));
                }
                if is_first {
                    (cache.vote, cache.committed, cache.last_purged) =
                        (state.vote, state.committed, state.last_purged);
                } else if state != cache.hard_state() {
                    return Err(invalid_data(format!(
                        "the header's state {state:?} differs from the state the segments before \
                         it leave, {:?}",
                        cache.hard_state()
                    )));
                }
                start = len;
            }
            (0, _) => return Err(invalid_data("the first record is not a segment header")),
            (_, Record::Header { .. }) => {
                return Err(invalid_data(format!("a second header at offset {offset}")));
            }
            (_, record) => {
                let at = Location {
                    seq,
                    offset: offset as u64,
                    len: u32::try_from(len).map_err(invalid_data)?,
                };
                apply(record, at, cache, &mut info)?;
                cache.evict(cache_bytes);
            }
        }
        offset += len;
    };
    if offset == 0 {
        return Err(invalid_data(format!(
            "no valid header ({scan:?}): a segment is only ever created with one"
        )));
    }
    let SegmentData { data, file_len } = segment;
    let rest = data.get(offset..).unwrap_or_default();
    let trailing = !all_zero(rest);
    if !is_last && (scan.is_bad() || file_len > offset) {
        return Err(invalid_data(format!(
            "corrupt at offset {offset} of {file_len} ({scan:?}); only the last segment may end \
             in a torn write"
        )));
    }
    if let Scan::Mismatch { len } = scan
        && !is_torn(&data, seq, offset, len)
    {
        return Err(invalid_data(format!(
            "corrupt at offset {offset}: a frame of {len} bytes fails its CRC and is not a torn \
             write (more data follows it and none of its sectors is unwritten, or a valid frame \
             starts inside it)"
        )));
    }
    let torn = match scan {
        _ if !trailing => None,
        Scan::Cut { len } => Some(format!("a frame of {len} bytes runs past the file's end")),
        Scan::Mismatch { len } => Some(format!("a torn frame of {len} bytes")),
        _ => Some("stray bytes after the end".to_string()),
    };
    Ok(SegmentEnd {
        info,
        start,
        end: offset,
        torn,
        file_len,
    })
}

/// Applies one record after a segment's header, found at `at`, as the log store did when it
/// was written.
fn apply(record: Record, at: Location, cache: &mut LogCache, info: &mut SegmentInfo) -> io::Result<()> {
    match record {
        Record::Entry { index, bytes } => {
            let entry = decoded_entry(index, &bytes)?;
            info.max_index = info.max_index.max(Some(index));
            let log_id = entry.log_id();
            cache.append(entry);
            cache.placed(log_id, at);
        }
        Record::Vote(vote) => cache.vote = Some(vote),
        Record::Committed(log_id) => cache.committed = Some(log_id),
        Record::TruncateFrom(from) => cache.truncate_from(from),
        Record::Purge(log_id) => cache.purge(log_id),
        Record::Header { .. } => return Err(invalid_data("a header after the first record")),
    }
    Ok(())
}

/// Whether the frame of `len` bytes at `offset` of segment `seq`, whose CRC fails, can be a
/// torn write: either nothing but zeros follows it (it was the last thing written), or a piece
/// of it, cut at sector boundaries, is all zeros (a sector that never reached the disk while
/// later ones did: etcd's torn-write test). Otherwise it is corruption of data that was once
/// complete. Either way, a valid frame starting inside the one that fails means that frame's
/// length is what was damaged (bit rot made it longer, over records written after it): that
/// is corruption too, not a torn write, or those records would be dropped without a word.
fn is_torn(data: &[u8], seq: u64, offset: usize, len: usize) -> bool {
    let end = (offset + len).min(data.len());
    let torn_looking = all_zero(&data[end..]) || {
        let mut start = offset + FRAME_HEADER.min(len);
        let mut zero_sector = false;
        while start < end && !zero_sector {
            let next = ((start as u64 / SECTOR + 1) * SECTOR) as usize;
            zero_sector = all_zero(&data[start..next.min(end)]);
            start = next;
        }
        zero_sector
    };
    torn_looking && !frame_inside(data, seq, offset + 1, end)
}

/// The most payload bytes [`frame_inside`] checksums: it runs once per open, after a crash or
/// damage, and a frame full of bytes that look like frame headers must not make opening slow.
/// Past it, a frame is judged as before the search existed.
const RESYNC_BUDGET_BYTES: usize = 64 << 20;

/// Whether a frame with a valid CRC (for its own place) starts in `from..end` and fits before
/// `end`. The CRC covers the segment and the offset, so a match is never by chance.
fn frame_inside(data: &[u8], seq: u64, from: usize, end: usize) -> bool {
    let mut budget = RESYNC_BUDGET_BYTES;
    for at in from..end.saturating_sub(FRAME_HEADER) {
        let Some(head) = data.get(at..at + 4) else { break };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len == 0 || at + FRAME_HEADER + len > end {
            continue;
        }
        let Some(rest) = budget.checked_sub(len) else {
            break;
        };
        budget = rest;
        if matches!(
            Record::read(&data[at..end], seq, at as u64),
            Ok(Scan::Record(..)) | Err(_)
        ) {
            return true;
        }
    }
    false
}

/// Whether `bytes` are all zeros (compared a page at a time: a segment is mostly zeros).
fn all_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes
        .chunks(ZEROS.len())
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
}

/// Decodes the entry recorded at `index`, checking that it is the one.
fn decoded_entry(index: u64, bytes: &[u8]) -> io::Result<Entry> {
    let entry = decode_entry(bytes)?;
    if entry.index() != index {
        return Err(invalid_data(format!(
            "the entry recorded at index {index} claims index {}",
            entry.index()
        )));
    }
    Ok(entry)
}

/// Reads back the entry whose frame is at `at` in `file`, segment `at.seq` of a WAL.
pub fn read_entry(file: &File, at: Location) -> io::Result<Entry> {
    let mut frame = vec![0; at.len as usize];
    file.read_exact_at(&mut frame, at.offset)?;
    match Record::read(&frame, at.seq, at.offset)? {
        Scan::Record(Record::Entry { index, bytes }, _) => decoded_entry(index, &bytes),
        other => Err(invalid_data(format!(
            "no entry at offset {} of WAL segment {}: {other:?}",
            at.offset, at.seq
        ))),
    }
}

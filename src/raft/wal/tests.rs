//! The WAL end to end: reopen after writes, torn tails, stale bytes, rotation and purge.
//!
//! Each test keeps a model [`LogCache`] changed the way the log store changes it, and checks
//! that reopening the WAL rebuilds exactly the model.

use std::fs;
use std::path::{Path, PathBuf};

use concord_proto::etcdserverpb::PutRequest;
use concord_proto::raftpb;
use openraft::impls::EntryPayload;

use super::record::{Record, Scan};
use super::segment::Segment;
use super::{SegmentInfo, Wal};
use crate::raft::codec::{encode_entry, log_id};
use crate::raft::log_cache::LogCache;
use crate::raft::{Command, Entry, Vote};

const SMALL: u64 = 4096;

fn entry(term: u64, index: u64) -> Entry {
    let put = Command::from(raftpb::command::Request::Put(PutRequest {
        key: format!("key-{index}").into_bytes(),
        value: vec![b'v'; 100],
        ..Default::default()
    }));
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(put),
    }
}

/// A WAL and the log it should hold.
struct Fixture {
    dir: tempfile::TempDir,
    segment_size: u64,
    wal: Option<Wal>,
    model: LogCache,
}

impl Fixture {
    fn new(segment_size: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (wal, cache) = Wal::open(&dir.path().join("wal"), segment_size).unwrap();
        assert_eq!(cache, LogCache::default());
        Fixture {
            dir,
            segment_size,
            wal: Some(wal),
            model: LogCache::default(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("wal")
    }

    fn wal(&mut self) -> &mut Wal {
        self.wal.as_mut().unwrap()
    }

    fn append(&mut self, term: u64, indexes: impl IntoIterator<Item = u64>) {
        for index in indexes {
            let entry = entry(term, index);
            let bytes = encode_entry(&entry).unwrap();
            self.wal().push(Record::Entry { index, bytes }).unwrap();
            self.model.append(entry);
        }
        self.wal().commit(true).unwrap();
    }

    fn vote(&mut self, vote: Vote) {
        self.wal().push(Record::Vote(vote)).unwrap();
        self.wal().commit(true).unwrap();
        self.model.vote = Some(vote);
    }

    fn committed(&mut self, term: u64, index: u64) {
        self.wal()
            .push(Record::Committed(log_id(term, 1, index)))
            .unwrap();
        self.wal().commit(false).unwrap();
        self.model.committed = Some(log_id(term, 1, index));
    }

    fn truncate_from(&mut self, from: u64) {
        self.wal().push(Record::TruncateFrom(from)).unwrap();
        self.wal().commit(false).unwrap();
        self.model.truncate_from(from);
    }

    fn purge(&mut self, term: u64, index: u64) {
        self.wal().push(Record::Purge(log_id(term, 1, index))).unwrap();
        self.wal().commit(true).unwrap();
        self.model.purge(log_id(term, 1, index));
    }

    /// Closes the WAL and opens it again; returns what it replayed.
    fn reopen(&mut self) -> LogCache {
        self.wal = None;
        let (wal, cache) = Wal::open(&self.path(), self.segment_size).unwrap();
        self.wal = Some(wal);
        cache
    }

    fn close(&mut self) {
        self.wal = None;
    }

    fn segment_files(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> = fs::read_dir(self.path())
            .unwrap()
            .map(|d| Segment::parse_name(d.unwrap().file_name().to_str().unwrap()).unwrap())
            .collect();
        seqs.sort_unstable();
        seqs
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.path().join(Segment::file_name(seq))
    }
}

/// The frames of a segment file: (start, end) of each, in order.
fn frames(path: &Path, seq: u64) -> Vec<(usize, usize)> {
    let data = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    while let Scan::Record(_, len) = Record::read(&data[offset..], seq, offset as u64).unwrap() {
        out.push((offset, offset + len));
        offset += len;
    }
    out
}

fn overwrite(path: &Path, at: usize, bytes: &[u8]) {
    let mut data = fs::read(path).unwrap();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    fs::write(path, data).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for dirent in fs::read_dir(from).unwrap() {
        let dirent = dirent.unwrap();
        fs::copy(dirent.path(), to.join(dirent.file_name())).unwrap();
    }
}

#[test]
fn a_new_wal_has_one_segment_and_reopens_empty() {
    let mut f = Fixture::new(SMALL);
    assert_eq!(f.reopen(), LogCache::default());
    assert_eq!(f.segment_files(), vec![1]);
    let len = fs::metadata(f.segment_path(1)).unwrap().len();
    assert_eq!(len, SMALL, "the segment is preallocated");
}

#[test]
fn entries_vote_and_committed_survive_reopen() {
    let mut f = Fixture::new(1 << 20);
    f.vote(Vote::new(1, 1));
    f.append(1, 0..10);
    f.committed(1, 7);
    f.vote(Vote::new_committed(2, 1));
    f.append(2, 10..12);
    f.committed(2, 11);
    assert_eq!(f.reopen(), f.model);
    // Appending after a reopen continues the same segment.
    f.append(2, 12..15);
    assert_eq!(f.reopen(), f.model);
    assert_eq!(f.segment_files(), vec![1]);
}

#[test]
fn truncate_then_reappend_survives_reopen() {
    let mut f = Fixture::new(1 << 20);
    f.append(1, 1..=10);
    f.truncate_from(6);
    f.append(2, 6..=8);
    assert_eq!(f.reopen(), f.model);
    let cache = f.reopen();
    assert_eq!(cache.entries.len(), 8);
    assert_eq!(cache.entries[&5].log_id, log_id(1, 1, 5));
    assert_eq!(cache.entries[&6].log_id, log_id(2, 1, 6));
    assert_eq!(cache.last_log_id(), Some(log_id(2, 1, 8)));
    // Truncating everything, then starting again.
    f.truncate_from(0);
    f.append(3, 1..=2);
    assert_eq!(f.reopen(), f.model);
}

#[test]
fn a_torn_last_record_is_cut_off_at_every_byte() {
    let mut f = Fixture::new(1 << 16);
    f.vote(Vote::new(1, 1));
    f.append(1, 1..=5);
    let before = f.model.clone();
    f.append(1, 6..=6);
    let after = f.model.clone();
    f.close();
    let (start, end) = *frames(&f.segment_path(1), 1).last().unwrap();
    for cut in start..=end {
        // Only the first `cut` bytes of the last record reached the disk; the rest is still
        // the preallocated zeros.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&f.path(), dir.path());
        let segment = dir.path().join(Segment::file_name(1));
        overwrite(&segment, cut, &vec![0; end - cut]);
        let (mut wal, cache) = Wal::open(dir.path(), 1 << 16).unwrap();
        let expected = if cut == end { &after } else { &before };
        assert_eq!(&cache, expected, "cut at {cut} of {start}..{end}");
        // The WAL goes on from the cut, and what it writes there is replayed.
        let next = entry(2, cache.entries.len() as u64 + 1);
        let index = next.log_id.index;
        let bytes = encode_entry(&next).unwrap();
        wal.push(Record::Entry { index, bytes }).unwrap();
        wal.commit(true).unwrap();
        drop(wal);
        let (_, cache) = Wal::open(dir.path(), 1 << 16).unwrap();
        let mut expected = expected.clone();
        expected.append(next);
        assert_eq!(cache, expected, "cut at {cut}, then appended");
    }
}

#[test]
fn stale_records_after_the_end_are_never_replayed() {
    let mut f = Fixture::new(1 << 16);
    f.append(1, 1..=1);
    let after_first = f.model.clone();
    // Two records of the same size in one batch; the first of them will be torn.
    f.append(1, 2..=3);
    f.close();
    let all = frames(&f.segment_path(1), 1);
    let (torn_start, torn_end) = all[all.len() - 2];
    let (_, stale_end) = all[all.len() - 1];
    // The sectors of the first frame's payload never reached the disk; the second's did.
    overwrite(
        &f.segment_path(1),
        torn_start + 8,
        &vec![0; torn_end - torn_start - 8],
    );
    assert_eq!(f.reopen(), after_first);
    // Nothing but zeros is left after the end.
    let data = fs::read(f.segment_path(1)).unwrap();
    assert!(data[torn_start..stale_end].iter().all(|&b| b == 0));
    // The same record again lands exactly where the torn one was, its end where the stale
    // record began: that record must not come back with it.
    f.model = after_first;
    f.append(1, 2..=2);
    assert_eq!(frames(&f.segment_path(1), 1).last().unwrap().1, torn_end);
    assert_eq!(f.reopen(), f.model);
    assert!(!f.model.entries.contains_key(&3));
}

#[test]
fn stray_bytes_after_a_zero_length_are_discarded() {
    let mut f = Fixture::new(1 << 16);
    f.append(1, 1..=3);
    f.close();
    let (_, end) = *frames(&f.segment_path(1), 1).last().unwrap();
    overwrite(&f.segment_path(1), end + 700, b"leftover");
    assert_eq!(f.reopen(), f.model);
    let data = fs::read(f.segment_path(1)).unwrap();
    assert!(data[end..].iter().all(|&b| b == 0));
    assert_eq!(data.len() as u64, 1 << 16, "preallocated again");
}

#[test]
fn a_crc_failure_that_is_not_a_torn_write_fails_open() {
    let mut f = Fixture::new(1 << 16);
    f.append(1, 1..=3);
    f.committed(1, 3);
    f.append(1, 4..=5);
    f.close();
    // A flipped bit in a small record inside one sector (so none of it is zeros), with more
    // records after it: bit rot, not a torn write.
    let all = frames(&f.segment_path(1), 1);
    let (start, end) = all[all.len() - 3];
    assert_eq!(
        start / 512,
        (end - 1) / 512,
        "the committed record fits in one sector"
    );
    let mut data = fs::read(f.segment_path(1)).unwrap();
    data[end - 2] ^= 0x10;
    fs::write(f.segment_path(1), data).unwrap();
    let err = Wal::open(&f.path(), f.segment_size).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("not a torn write"), "{err}");
}

#[test]
fn rotation_and_purge_delete_only_fully_purged_segments() {
    let mut f = Fixture::new(SMALL);
    f.vote(Vote::new_committed(1, 1));
    for batch in 0..40 {
        f.append(1, batch * 5 + 1..=batch * 5 + 5);
        f.committed(1, batch * 5 + 3);
    }
    let segments: Vec<SegmentInfo> = f.wal().segments().copied().collect();
    assert!(segments.len() > 5, "{segments:?}");
    assert_eq!(
        f.segment_files(),
        segments.iter().map(|s| s.seq).collect::<Vec<_>>()
    );
    // Every sealed segment stays within its preallocation and ends with its last record.
    for info in &segments[..segments.len() - 1] {
        let len = fs::metadata(f.segment_path(info.seq)).unwrap().len() as usize;
        assert!(len <= SMALL as usize);
        assert_eq!(frames(&f.segment_path(info.seq), info.seq).last().unwrap().1, len);
    }
    assert_eq!(f.reopen(), f.model);

    f.purge(1, 100);
    let left: Vec<SegmentInfo> = f.wal().segments().copied().collect();
    let deleted: Vec<&SegmentInfo> = segments.iter().filter(|s| !left.contains(s)).collect();
    assert!(!deleted.is_empty());
    assert!(deleted.iter().all(|s| s.max_index.unwrap() <= 100), "{deleted:?}");
    assert!(left[0].max_index.unwrap() > 100, "{left:?}");
    assert_eq!(f.segment_files(), left.iter().map(|s| s.seq).collect::<Vec<_>>());
    let cache = f.reopen();
    assert_eq!(cache, f.model);
    assert_eq!(cache.entries.keys().next(), Some(&101));
    assert_eq!(cache.last_purged, Some(log_id(1, 1, 100)));

    // A purge past the last entry (a snapshot installed) leaves only the current segment.
    f.purge(2, 500);
    assert_eq!(f.wal().segments().count(), 1);
    f.append(2, 501..=520);
    assert_eq!(f.reopen(), f.model);
    assert_eq!(f.model.entries.len(), 20);
}

#[test]
fn a_record_larger_than_a_segment_gets_one_of_its_own() {
    let mut f = Fixture::new(SMALL);
    f.append(1, 1..=2);
    let huge = Entry {
        log_id: log_id(1, 1, 3),
        payload: EntryPayload::Normal(Command::from(raftpb::command::Request::Put(PutRequest {
            key: b"big".to_vec(),
            value: vec![7; 3 * SMALL as usize],
            ..Default::default()
        }))),
    };
    let bytes = encode_entry(&huge).unwrap();
    f.wal().push(Record::Entry { index: 3, bytes }).unwrap();
    f.wal().commit(true).unwrap();
    f.model.append(huge);
    f.append(1, 4..=5);
    assert_eq!(f.reopen(), f.model);
    assert_eq!(f.segment_files(), vec![1, 2, 3]);
}

#[test]
fn corruption_before_the_last_segment_fails_open() {
    let mut f = Fixture::new(SMALL);
    f.append(1, 1..=60);
    assert!(f.segment_files().len() > 2);
    f.close();
    let (start, _) = frames(&f.segment_path(1), 1)[3];
    overwrite(&f.segment_path(1), start + 20, &[0; 8]);
    let err = Wal::open(&f.path(), SMALL).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("only the last segment"), "{err}");
    assert!(err.to_string().contains(&Segment::file_name(1)), "{err}");
}

#[test]
fn a_missing_segment_fails_open() {
    let mut f = Fixture::new(SMALL);
    f.append(1, 1..=60);
    f.close();
    fs::remove_file(f.segment_path(2)).unwrap();
    let err = Wal::open(&f.path(), SMALL).unwrap_err();
    assert!(err.to_string().contains("missing segment"), "{err}");
}

#[test]
fn a_sealed_last_segment_is_preallocated_again() {
    let mut f = Fixture::new(SMALL);
    f.append(1, 1..=60);
    f.close();
    // A crash after sealing a segment and before its successor was renamed into place.
    let last = *f.segment_files().last().unwrap();
    fs::remove_file(f.segment_path(last)).unwrap();
    fs::write(f.path().join(format!("{last:016x}.wal.tmp")), b"half").unwrap();
    let sealed = f.segment_path(last - 1);
    let (_, end) = *frames(&sealed, last - 1).last().unwrap();
    assert_eq!(fs::metadata(&sealed).unwrap().len(), end as u64);
    f.model = f.reopen();
    assert_eq!(fs::metadata(&sealed).unwrap().len(), SMALL);
    // The log goes on from the last entry that survived (the log has no holes).
    let next = f.model.entries.keys().last().unwrap() + 1;
    f.append(1, next..=next + 1);
    assert_eq!(f.reopen(), f.model);
    assert_eq!(f.model.entries.keys().last(), Some(&(next + 1)));
}

#[test]
fn a_half_created_segment_is_removed() {
    let mut f = Fixture::new(SMALL);
    f.append(1, 1..=3);
    f.close();
    fs::write(f.path().join("0000000000000002.wal.tmp"), b"half").unwrap();
    assert_eq!(f.reopen(), f.model);
    assert_eq!(f.segment_files(), vec![1]);
    f.append(1, 4..=60);
    assert_eq!(f.reopen(), f.model);
}

#[test]
fn a_last_record_that_ends_in_zeros_survives_reopen() {
    // Replay reads a segment only up to its last non-zero byte; a frame whose own last bytes
    // are zeros (a put of a value of zeros, the entry's last field) must still be read whole.
    let mut f = Fixture::new(1 << 20);
    f.append(1, 1..=3);
    let zeros = Command::from(raftpb::command::Request::Put(PutRequest {
        key: b"zeros".to_vec(),
        value: vec![0; 10_000],
        ..Default::default()
    }));
    let last = Entry {
        log_id: log_id(1, 1, 4),
        payload: EntryPayload::Normal(zeros),
    };
    let bytes = encode_entry(&last).unwrap();
    assert!(bytes.ends_with(&[0; 9_000]), "the frame ends in zeros");
    f.wal().push(Record::Entry { index: 4, bytes }).unwrap();
    f.wal().commit(true).unwrap();
    f.model.append(last);
    let replayed = f.reopen();
    assert_eq!(replayed, f.model);
    // And the next record goes after it, not over its zeros.
    f.append(1, 5..=5);
    assert_eq!(f.reopen(), f.model);
}

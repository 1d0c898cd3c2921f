//! WAL segments written as the log store writes them, then the last one damaged in every way a
//! disk can damage it (and records forged with a valid CRC), then opened again.

use std::fs;
use std::path::{Path, PathBuf};

use concord_proto::etcdserverpb::PutRequest;
use concord_proto::raftpb::command::Request;
use openraft::impls::EntryPayload;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::config;
use super::strategies::{any_log_id, entry_bytes, log_entry, vote};
use crate::raft::codec::{encode_entry, log_id};
use crate::raft::log_cache::LogCache;
use crate::raft::wal::record::{FRAME_HEADER, Record, Scan};
use crate::raft::wal::segment::Segment;
use crate::raft::wal::{HardState, Wal};
use crate::raft::{Command, Entry, Vote};

const SEGMENT: u64 = 4096;

/// One step of the log store, turned into WAL records by [`write_wal`].
#[derive(Debug, Clone)]
enum LogOp {
    Append { count: u64, value_len: usize },
    Vote,
    Commit,
    Truncate { back: u64 },
    Purge { back: u64 },
}

fn log_ops() -> BoxedStrategy<Vec<LogOp>> {
    let step = prop_oneof![
        8 => (1u64..5, 0usize..400).prop_map(|(count, value_len)| LogOp::Append { count, value_len }),
        1 => Just(LogOp::Vote),
        2 => Just(LogOp::Commit),
        1 => (1u64..4).prop_map(|back| LogOp::Truncate { back }),
        1 => (1u64..10).prop_map(|back| LogOp::Purge { back }),
    ];
    vec(step, 1..16).boxed()
}

/// What [`write_wal`] wrote.
struct Written {
    /// The log before any record, then after each record.
    models: Vec<LogCache>,
    /// Every entry written.
    entries: Vec<Entry>,
    /// How many records precede the last segment (the log it starts from is `models[sealed]`).
    sealed: usize,
    /// The last term written.
    term: u64,
}

fn wal_entry(term: u64, index: u64, value_len: usize) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Command::from(Request::Put(PutRequest {
            key: format!("key-{index}").into_bytes(),
            value: vec![b'v'; value_len],
            ..Default::default()
        }))),
    }
}

/// Writes `ops` as the log store would, keeping the log every record prefix leaves.
fn write_wal(dir: &Path, ops: &[LogOp]) -> Written {
    let (mut wal, mut model) = Wal::open(dir, SEGMENT).unwrap();
    let mut models = vec![model.clone()];
    let mut entries = Vec::new();
    let mut sealed = 0;
    let mut current = wal.segments().last().unwrap().seq;
    let mut term = 1;
    let mut push = |wal: &mut Wal, model: &mut LogCache, record: Record| {
        wal.push(record).unwrap();
        models.push(model.clone());
        let seq = wal.segments().last().unwrap().seq;
        if seq != current {
            // The record just pushed starts the new segment.
            current = seq;
            sealed = models.len() - 2;
        }
    };
    for (n, step) in ops.iter().enumerate() {
        let last = model.last_log_id().map_or(0, |id| id.index);
        let purged = model.last_purged.map_or(0, |id| id.index);
        match *step {
            LogOp::Append { count, value_len } => {
                for index in last + 1..=last + count {
                    let entry = wal_entry(term, index, value_len);
                    let bytes = encode_entry(&entry).unwrap();
                    entries.push(entry.clone());
                    model.append(entry);
                    push(&mut wal, &mut model, Record::Entry { index, bytes });
                }
            }
            LogOp::Vote => {
                term += 1;
                let vote = Vote::new(term, 1);
                model.vote = Some(vote);
                push(&mut wal, &mut model, Record::Vote(vote));
            }
            LogOp::Commit => {
                if let Some(id) = model.last_log_id() {
                    model.committed = Some(id);
                    push(&mut wal, &mut model, Record::Committed(id));
                }
            }
            LogOp::Truncate { back } => {
                let from = last.saturating_sub(back).max(purged) + 1;
                if from <= last {
                    term += 1;
                    model.truncate_from(from);
                    push(&mut wal, &mut model, Record::TruncateFrom(from));
                }
            }
            LogOp::Purge { back } => {
                let upto = last.saturating_sub(back);
                if upto > purged
                    && let Some(entry) = model.entries.get(&upto)
                {
                    let id = entry.log_id;
                    model.purge(id);
                    push(&mut wal, &mut model, Record::Purge(id));
                }
            }
        }
        wal.commit(n % 3 == 0).unwrap();
    }
    wal.commit(true).unwrap();
    Written {
        models,
        entries,
        sealed,
        term,
    }
}

/// The last segment file of the WAL in `dir`.
fn last_segment(dir: &Path) -> (u64, PathBuf) {
    let seq = fs::read_dir(dir)
        .unwrap()
        .filter_map(|d| Segment::parse_name(d.unwrap().file_name().to_str()?))
        .max()
        .unwrap();
    (seq, dir.join(Segment::file_name(seq)))
}

/// Where the valid records of a segment end.
fn data_end(data: &[u8], seq: u64) -> usize {
    let mut offset = 0;
    while let Ok(Scan::Record(_, len)) = Record::read(&data[offset..], seq, offset as u64) {
        offset += len;
    }
    offset
}

/// A place in the segment: mostly near its records, sometimes anywhere.
#[derive(Debug, Clone)]
struct Spot {
    at: Index,
    anywhere: bool,
}

impl Spot {
    fn offset(&self, data_end: usize, file_len: usize) -> usize {
        let span = if self.anywhere {
            file_len
        } else {
            (data_end + 64).min(file_len)
        };
        self.at.index(span.max(1)).min(file_len)
    }
}

/// Damage to the last segment.
#[derive(Debug, Clone)]
enum Damage {
    Flip(Spot, u8),
    Truncate(Spot),
    Append(Vec<u8>),
    Overwrite(Spot, Vec<u8>),
    /// Records from nowhere, framed with a valid CRC where the valid data ends (a bug of an
    /// older version, or a disk that lies).
    Forge(Vec<Record>),
    /// A frame with a valid CRC over any payload, where the valid data ends.
    ForgeRaw(Vec<u8>),
}

fn spot() -> BoxedStrategy<Spot> {
    (any::<Index>(), proptest::bool::weighted(0.2))
        .prop_map(|(at, anywhere)| Spot { at, anywhere })
        .boxed()
}

fn forged_record() -> BoxedStrategy<Record> {
    let entry = log_entry().prop_map(|entry| Record::Entry {
        index: entry.log_id.index,
        bytes: encode_entry(&entry).unwrap(),
    });
    let hard_state = (
        proptest::option::of(vote()),
        proptest::option::of(any_log_id()),
        proptest::option::of(any_log_id()),
    )
        .prop_map(|(vote, committed, last_purged)| HardState {
            vote,
            committed,
            last_purged,
        });
    prop_oneof![
        2 => entry,
        1 => (any::<u64>(), entry_bytes()).prop_map(|(index, bytes)| Record::Entry { index, bytes }),
        1 => (any::<u64>(), vec(any::<u8>(), 0..32))
            .prop_map(|(index, bytes)| Record::Entry { index, bytes }),
        1 => vote().prop_map(Record::Vote),
        1 => any_log_id().prop_map(Record::Committed),
        1 => prop_oneof![any::<u64>(), 0u64..40].prop_map(Record::TruncateFrom),
        1 => any_log_id().prop_map(Record::Purge),
        1 => (any::<u64>(), hard_state).prop_map(|(segment, state)| Record::Header { segment, state }),
    ]
    .boxed()
}

fn damage() -> BoxedStrategy<Damage> {
    let bytes = prop_oneof![
        3 => vec(any::<u8>(), 1..64),
        1 => (1usize..600).prop_map(|n| vec![0; n]),
    ];
    prop_oneof![
        3 => (spot(), 0u8..8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
        2 => spot().prop_map(Damage::Truncate),
        1 => vec(any::<u8>(), 1..64).prop_map(Damage::Append),
        2 => (spot(), bytes).prop_map(|(at, bytes)| Damage::Overwrite(at, bytes)),
        1 => vec(forged_record(), 1..3).prop_map(Damage::Forge),
        1 => (0u8..8, vec(any::<u8>(), 0..48))
            .prop_map(|(kind, body)| Damage::ForgeRaw([vec![kind], body].concat())),
    ]
    .boxed()
}

fn is_forged(damage: &[Damage]) -> bool {
    damage
        .iter()
        .any(|d| matches!(d, Damage::Forge(_) | Damage::ForgeRaw(_)))
}

/// A frame of `payload` with the CRC the WAL would give it at `offset` of segment `seq`.
fn raw_frame(seq: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut place = [0u8; 16];
    place[..8].copy_from_slice(&seq.to_le_bytes());
    place[8..].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&place), payload);
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Damages the segment file at `path`; returns whether all of the damage lies past the end of
/// its valid records (where only an unacknowledged write could have left anything).
fn damage_segment(path: &Path, seq: u64, damage: &[Damage]) -> bool {
    let mut data = fs::read(path).unwrap();
    let valid_end = data_end(&data, seq);
    let mut past_the_end = true;
    for d in damage {
        let end = data_end(&data, seq);
        let len = data.len();
        match d {
            Damage::Flip(spot, bit) if len > 0 => {
                let at = spot.offset(end, len).min(len - 1);
                past_the_end &= at >= valid_end;
                data[at] ^= 1 << bit;
            }
            Damage::Truncate(spot) => {
                let at = spot.offset(end, len);
                past_the_end &= at >= valid_end;
                data.truncate(at);
            }
            Damage::Append(bytes) => data.extend_from_slice(bytes),
            Damage::Overwrite(spot, bytes) => {
                let at = spot.offset(end, len);
                let stop = (at + bytes.len()).min(len);
                past_the_end &= at >= valid_end;
                data[at..stop].copy_from_slice(&bytes[..stop - at]);
            }
            Damage::Forge(records) => {
                let mut frames = Vec::new();
                for record in records {
                    let offset = (end + frames.len()) as u64;
                    // Some records cannot be encoded (too large): those are skipped.
                    let _ = record.encode(&mut frames, seq, offset);
                }
                write_at(&mut data, end, &frames);
            }
            Damage::ForgeRaw(payload) => write_at(&mut data, end, &raw_frame(seq, end as u64, payload)),
            _ => {}
        }
    }
    fs::write(path, data).unwrap();
    past_the_end
}

fn write_at(data: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if data.len() < at + bytes.len() {
        data.resize(at + bytes.len(), 0);
    }
    data[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Damages the last segment of a WAL written by `ops` and opens it. Opening fails, or gives a
/// log of entries that were written, at consecutive indexes, and goes on from there; the whole
/// log if the damage is all past the valid records. With `strict`, the log must be exactly the
/// one some prefix of the records left (from the last segment's start at least).
fn check_damaged_wal(ops: &[LogOp], damage: &[Damage], strict: bool) {
    let dir = tempfile::tempdir().unwrap();
    let written = write_wal(dir.path(), ops);
    let (seq, path) = last_segment(dir.path());
    let past_the_end = damage_segment(&path, seq, damage);

    let Ok((mut wal, cache)) = Wal::open(dir.path(), SEGMENT) else {
        return;
    };
    if is_forged(damage) {
        // Forged records may say anything; replaying them must still give the same log twice.
        drop(wal);
        let (mut wal, again) = Wal::open(dir.path(), SEGMENT).unwrap();
        assert_eq!(again, cache, "a second replay differs");
        wal.commit(true).unwrap();
        return;
    }
    let indexes: Vec<u64> = cache.entries.keys().copied().collect();
    assert!(
        indexes.windows(2).all(|w| w[1] == w[0] + 1),
        "the recovered entries have gaps: {indexes:?}"
    );
    for entry in cache.entries.values() {
        assert!(written.entries.contains(entry), "never written: {entry:?}");
    }
    if past_the_end {
        assert!(
            written.models.last() == Some(&cache),
            "damage past the valid records lost some: entries {indexes:?}"
        );
    }
    if strict {
        let recovered = written.models[written.sealed..].contains(&cache);
        assert!(
            recovered,
            "the recovered log is not one that a prefix of the records left (records before the \
             last segment: {}): entries {indexes:?}, last purged {:?}",
            written.sealed, cache.last_purged,
        );
    }

    // The WAL goes on from there, and what it writes next is replayed after it.
    let index = cache.last_log_id().map_or(1, |id| id.index + 1);
    let next = wal_entry(written.term + 1, index, 10);
    let bytes = encode_entry(&next).unwrap();
    wal.push(Record::Entry { index, bytes }).unwrap();
    wal.commit(true).unwrap();
    drop(wal);
    let (_, after) = Wal::open(dir.path(), SEGMENT).unwrap();
    let mut expected = cache;
    expected.append(next);
    assert_eq!(
        after, expected,
        "an entry appended after recovery is not replayed"
    );
}

proptest! {
    #![proptest_config(config(128))]

    /// The last segment damaged in any way: opening gives entries that were written, without
    /// gaps, and goes on from there, or fails; never panics.
    #[test]
    fn a_damaged_wal_recovers_or_fails(ops in log_ops(), damage in vec(damage(), 1..4)) {
        check_damaged_wal(&ops, &damage, false);
    }

    /// Any bytes at any place of a segment read as a record, the end, or a bad frame.
    #[test]
    fn any_frame_reads_or_fails(
        data in prop_oneof![
            vec(any::<u8>(), 0..64),
            (0u8..8, vec(any::<u8>(), 0..64))
                .prop_map(|(kind, body)| raw_frame(3, 64, &[vec![kind], body].concat())),
        ],
        seq in prop_oneof![Just(3u64), any::<u64>()],
        offset in prop_oneof![Just(64u64), any::<u64>()],
    ) {
        match Record::read(&data, seq, offset) {
            Ok(Scan::Record(_, len)) => prop_assert!(len > FRAME_HEADER && len <= data.len()),
            Ok(Scan::Mismatch { len }) => prop_assert!(len > FRAME_HEADER && len <= data.len()),
            Ok(Scan::Cut { .. } | Scan::End) | Err(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Stricter: the log opened is one the WAL was in, after some prefix of its records.
    #[test]
    #[ignore = "known limit: damage to the last records of the last segment can look like a torn \
                write (a frame cut or zeroed at its end), and is then dropped; a longer length and \
                a lost purge are caught now. Fails about once in 2,000 cases"]
    fn a_damaged_wal_recovers_a_log_it_held_or_fails(
        ops in log_ops(),
        damage in vec(damage(), 1..4),
    ) {
        check_damaged_wal(&ops, &damage, true);
    }
}

/// Bit rot in the length of an fsynced record that other fsynced records follow: the frame now
/// ends in the zeros past the data, so it looked like a torn write, and the records after it
/// were dropped without an error (once a bug). The valid frame starting inside it gives it
/// away: opening fails.
#[test]
fn a_longer_length_does_not_hide_fsynced_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT).unwrap();
    for index in 1..=3 {
        let bytes = encode_entry(&wal_entry(1, index, 100)).unwrap();
        wal.push(Record::Entry { index, bytes }).unwrap();
        wal.commit(true).unwrap();
    }
    drop(wal);
    let (_, path) = last_segment(dir.path());
    let mut data = fs::read(&path).unwrap();
    let frame_len =
        |at: usize| FRAME_HEADER + u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    let header = frame_len(0);
    let second = header + frame_len(header);
    // Entry 2's length grows by 256 bytes: past entry 3, into the zeros.
    data[second + 1] ^= 1;
    fs::write(&path, data).unwrap();
    match Wal::open(dir.path(), SEGMENT) {
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::InvalidData),
        Ok((_, cache)) => panic!(
            "opened with entries {:?}: fsynced entries 2 and 3 are gone",
            cache.entries.keys().collect::<Vec<_>>()
        ),
    }
}

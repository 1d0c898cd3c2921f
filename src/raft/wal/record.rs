//! One WAL record: what it says, and how it is framed and checksummed on disk.
//!
//! A frame is `len: u32 LE | crc: u32 LE | payload`, `len` bytes of payload: a kind byte and a
//! body. The CRC-32C is taken over the segment's sequence number and the frame's offset in the
//! segment (both u64 LE, neither stored) followed by the payload, so a frame only checks out at
//! the place it was written for: bytes from another segment, or shifted from another offset,
//! never pass for a record. A length of 0 is never written; it is what preallocated, unwritten
//! space reads as, and marks the end of the data.
//!
//! Bodies (integers little-endian, JSON through openraft's serde impls as in [`codec`]):
//! - header: format version u64, segment sequence u64, then vote, committed and last purged,
//!   each as a presence byte (0 or 1) followed, if present, by a u32 length and JSON;
//! - entry: index u64, then [`codec::encode_entry`]'s bytes;
//! - vote, committed, purge: JSON;
//! - truncate: the first index removed, u64.
//!
//! [`codec`]: crate::raft::codec
//! [`codec::encode_entry`]: crate::raft::codec::encode_entry

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::HardState;
use crate::raft::codec::{self, invalid_data};
use crate::raft::{LogId, Vote};

/// Bytes before a frame's payload: its length and CRC.
pub const FRAME_HEADER: usize = 8;

const KIND_HEADER: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_VOTE: u8 = 3;
const KIND_COMMITTED: u8 = 4;
const KIND_TRUNCATE: u8 = 5;
const KIND_PURGE: u8 = 6;

/// One change to the log, as the WAL stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The first record of every segment: the format version, the segment's sequence number,
    /// and the state so far, so that older segments are not needed for it.
    Header {
        /// The segment's sequence number (also its file name).
        segment: u64,
        /// Vote, committed and last purged log ids when the segment was started.
        state: HardState,
    },
    /// A log entry, already encoded with [`crate::raft::codec::encode_entry`].
    Entry {
        /// The entry's index.
        index: u64,
        /// The encoded entry.
        bytes: Vec<u8>,
    },
    /// A saved vote.
    Vote(Vote),
    /// A saved committed log id.
    Committed(LogId),
    /// Entries at this index and after are removed.
    TruncateFrom(u64),
    /// Entries up to this log id are purged.
    Purge(LogId),
}

/// What the bytes at an offset of a segment turned out to be.
#[derive(Debug)]
pub enum Scan {
    /// A record whose CRC checks out, and the length of its whole frame.
    Record(Record, usize),
    /// A zero length: nothing was ever written here.
    End,
    /// A frame whose length runs past the end of the data: cut off.
    Cut {
        /// The length the frame claims.
        len: usize,
    },
    /// A frame whose CRC fails: torn, stale or corrupt.
    Mismatch {
        /// The frame's whole length (header and payload).
        len: usize,
    },
}

impl Scan {
    /// Whether the bytes read are not a record (neither a record nor the end).
    pub fn is_bad(&self) -> bool {
        matches!(self, Scan::Cut { .. } | Scan::Mismatch { .. })
    }
}

impl Record {
    /// Appends this record to `buf`, framed for offset `offset` of segment `segment`.
    pub fn encode(&self, buf: &mut Vec<u8>, segment: u64, offset: u64) -> io::Result<()> {
        let start = buf.len();
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        let written = self.encode_payload(buf).and_then(|()| {
            let payload = &buf[start + FRAME_HEADER..];
            let len = u32::try_from(payload.len()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a WAL record of {} bytes is too large", payload.len()),
                )
            })?;
            Ok((len, checksum(segment, offset, payload)))
        });
        match written {
            Ok((len, crc)) => {
                buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
                buf[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
                Ok(())
            }
            Err(err) => {
                buf.truncate(start);
                Err(err)
            }
        }
    }

    /// Reads the frame at the start of `data`, which sits at `offset` of segment `segment`.
    ///
    /// A frame that is cut off is [`Scan::Cut`], one whose CRC fails [`Scan::Mismatch`]; one whose
    /// CRC holds but whose payload does not decode is an error, since only a bug or a format
    /// change makes that.
    pub fn read(data: &[u8], segment: u64, offset: u64) -> io::Result<Scan> {
        let Some((head, rest)) = data.split_first_chunk::<FRAME_HEADER>() else {
            return Ok(if data.iter().all(|&b| b == 0) {
                Scan::End
            } else {
                Scan::Cut { len: FRAME_HEADER }
            });
        };
        let [l0, l1, l2, l3, c0, c1, c2, c3] = *head;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        if len == 0 {
            return Ok(Scan::End);
        }
        let Some(payload) = rest.get(..len) else {
            return Ok(Scan::Cut { len });
        };
        if checksum(segment, offset, payload) != crc {
            return Ok(Scan::Mismatch {
                len: FRAME_HEADER + len,
            });
        }
        let record = Self::decode_payload(payload).map_err(|e| {
            invalid_data(format!(
                "WAL segment {segment}, offset {offset}: a record with a valid CRC does not decode: {e}"
            ))
        })?;
        Ok(Scan::Record(record, FRAME_HEADER + len))
    }

    fn encode_payload(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Record::Header { segment, state } => {
                buf.push(KIND_HEADER);
                buf.extend_from_slice(&codec::FORMAT_VERSION.to_le_bytes());
                buf.extend_from_slice(&segment.to_le_bytes());
                put_optional(buf, state.vote.as_ref())?;
                put_optional(buf, state.committed.as_ref())?;
                put_optional(buf, state.last_purged.as_ref())?;
            }
            Record::Entry { index, bytes } => {
                buf.push(KIND_ENTRY);
                buf.extend_from_slice(&index.to_le_bytes());
                buf.extend_from_slice(bytes);
            }
            Record::Vote(vote) => {
                buf.push(KIND_VOTE);
                buf.extend_from_slice(&codec::encode_json(vote)?);
            }
            Record::Committed(log_id) => {
                buf.push(KIND_COMMITTED);
                buf.extend_from_slice(&codec::encode_json(log_id)?);
            }
            Record::TruncateFrom(index) => {
                buf.push(KIND_TRUNCATE);
                buf.extend_from_slice(&index.to_le_bytes());
            }
            Record::Purge(log_id) => {
                buf.push(KIND_PURGE);
                buf.extend_from_slice(&codec::encode_json(log_id)?);
            }
        }
        Ok(())
    }

    fn decode_payload(payload: &[u8]) -> io::Result<Record> {
        let (&kind, mut body) = payload
            .split_first()
            .ok_or_else(|| invalid_data("empty payload"))?;
        let record = match kind {
            KIND_HEADER => {
                let version = take_u64(&mut body)?;
                if version != codec::FORMAT_VERSION {
                    return Err(invalid_data(format!(
                        "format version {version}, but this build reads version {}",
                        codec::FORMAT_VERSION
                    )));
                }
                let segment = take_u64(&mut body)?;
                let state = HardState {
                    vote: take_optional(&mut body)?,
                    committed: take_optional(&mut body)?,
                    last_purged: take_optional(&mut body)?,
                };
                if !body.is_empty() {
                    return Err(invalid_data("trailing bytes after a segment header"));
                }
                Record::Header { segment, state }
            }
            KIND_ENTRY => Record::Entry {
                index: take_u64(&mut body)?,
                bytes: body.to_vec(),
            },
            KIND_VOTE => Record::Vote(codec::decode_json(body)?),
            KIND_COMMITTED => Record::Committed(codec::decode_json(body)?),
            KIND_TRUNCATE => {
                let from = take_u64(&mut body)?;
                if !body.is_empty() {
                    return Err(invalid_data("trailing bytes after a truncate record"));
                }
                Record::TruncateFrom(from)
            }
            KIND_PURGE => Record::Purge(codec::decode_json(body)?),
            other => return Err(invalid_data(format!("unknown record kind {other}"))),
        };
        Ok(record)
    }
}

/// CRC-32C over the frame's place (segment, offset) and its payload.
fn checksum(segment: u64, offset: u64, payload: &[u8]) -> u32 {
    let mut place = [0u8; 16];
    place[..8].copy_from_slice(&segment.to_le_bytes());
    place[8..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&place), payload)
}

fn put_optional<T: Serialize>(buf: &mut Vec<u8>, value: Option<&T>) -> io::Result<()> {
    match value {
        None => buf.push(0),
        Some(value) => {
            let json = codec::encode_json(value)?;
            let len = u32::try_from(json.len()).map_err(io::Error::other)?;
            buf.push(1);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&json);
        }
    }
    Ok(())
}

fn take<'a>(body: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
    if body.len() < n {
        return Err(invalid_data("record body cut short"));
    }
    let (head, rest) = body.split_at(n);
    *body = rest;
    Ok(head)
}

fn take_u64(body: &mut &[u8]) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(take(body, 8)?);
    Ok(u64::from_le_bytes(bytes))
}

fn take_optional<T: DeserializeOwned>(body: &mut &[u8]) -> io::Result<Option<T>> {
    match take(body, 1)? {
        [0] => Ok(None),
        [1] => {
            let mut len = [0u8; 4];
            len.copy_from_slice(take(body, 4)?);
            let json = take(body, u32::from_le_bytes(len) as usize)?;
            codec::decode_json(json).map(Some)
        }
        _ => Err(invalid_data("bad presence byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::codec::log_id;

    fn samples() -> Vec<Record> {
        let vote = Vote::new(3, 7);
        vec![
            Record::Header {
                segment: 9,
                state: HardState::default(),
            },
            Record::Header {
                segment: 10,
                state: HardState {
                    vote: Some(vote),
                    committed: Some(log_id(3, 7, 40)),
                    last_purged: Some(log_id(2, 7, 12)),
                },
            },
            Record::Entry {
                index: 42,
                bytes: b"encoded entry".to_vec(),
            },
            Record::Vote(vote),
            Record::Committed(log_id(3, 7, 41)),
            Record::TruncateFrom(17),
            Record::Purge(log_id(1, 2, 3)),
        ]
    }

    fn read_one(data: &[u8], segment: u64, offset: u64) -> (Record, usize) {
        match Record::read(data, segment, offset).unwrap() {
            Scan::Record(record, len) => (record, len),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn records_round_trip() {
        for record in samples() {
            let mut buf = vec![0xAA];
            record.encode(&mut buf, 5, 4096).unwrap();
            let (back, len) = read_one(&buf[1..], 5, 4096);
            assert_eq!(back, record);
            assert_eq!(len, buf.len() - 1);
        }
    }

    #[test]
    fn consecutive_frames_read_back_in_order() {
        let mut buf = Vec::new();
        for record in samples() {
            let offset = buf.len() as u64;
            record.encode(&mut buf, 1, offset).unwrap();
        }
        let mut offset = 0;
        for record in samples() {
            let (back, len) = read_one(&buf[offset..], 1, offset as u64);
            assert_eq!(back, record);
            offset += len;
        }
        assert!(matches!(
            Record::read(&buf[offset..], 1, offset as u64).unwrap(),
            Scan::End
        ));
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_the_crc() {
        let record = Record::Committed(log_id(3, 7, 41));
        let mut buf = Vec::new();
        record.encode(&mut buf, 1, 0).unwrap();
        for byte in 4..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let scan = Record::read(&bad, 1, 0).unwrap();
                assert!(scan.is_bad(), "byte {byte} bit {bit}: {scan:?}");
            }
        }
    }

    #[test]
    fn a_frame_checks_out_only_where_it_was_written() {
        let mut buf = Vec::new();
        Record::TruncateFrom(5).encode(&mut buf, 1, 64).unwrap();
        assert!(matches!(Record::read(&buf, 1, 64).unwrap(), Scan::Record(..)));
        assert!(matches!(
            Record::read(&buf, 2, 64).unwrap(),
            Scan::Mismatch { .. }
        ));
        assert!(matches!(Record::read(&buf, 1, 0).unwrap(), Scan::Mismatch { .. }));
    }

    #[test]
    fn zeros_are_the_end_and_cut_frames_are_bad() {
        assert!(matches!(Record::read(&[0; 64], 1, 0).unwrap(), Scan::End));
        assert!(matches!(Record::read(&[0; 3], 1, 0).unwrap(), Scan::End));
        assert!(matches!(Record::read(&[], 1, 0).unwrap(), Scan::End));
        let mut buf = Vec::new();
        Record::Vote(Vote::new(1, 1)).encode(&mut buf, 1, 0).unwrap();
        for cut in 1..buf.len() {
            let scan = Record::read(&buf[..cut], 1, 0).unwrap();
            assert!(matches!(scan, Scan::Cut { .. }), "cut at {cut}: {scan:?}");
        }
    }

    #[test]
    fn a_valid_crc_over_an_unknown_kind_is_an_error() {
        let payload = [99u8, 1, 2, 3];
        let mut buf = Vec::new();
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(1, 0, &payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let err = Record::read(&buf, 1, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("unknown record kind 99"), "{err}");
    }

    #[test]
    fn another_format_version_is_refused() {
        let mut payload = vec![KIND_HEADER];
        payload.extend_from_slice(&(codec::FORMAT_VERSION + 1).to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&[0, 0, 0]);
        let mut buf = Vec::new();
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(1, 0, &payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let err = Record::read(&buf, 1, 0).unwrap_err();
        assert!(err.to_string().contains("format version"), "{err}");
    }
}

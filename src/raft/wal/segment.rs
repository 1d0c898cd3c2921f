//! One segment file of the WAL: its name, its creation (preallocated, header first), appends and
//! fdatasync, and sealing when the next segment takes over.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, fallocate};
use rustix::io::Errno;

use super::HardState;
use super::record::Record;
use crate::raft::durable::{sync_dir, with_path};

const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".wal.tmp";

/// The segment being appended to.
///
/// Its file is preallocated (when the file system can), so that an append changes neither the
/// file's size nor its block map and fdatasync has only data to flush.
#[derive(Debug)]
pub struct Segment {
    seq: u64,
    path: PathBuf,
    file: File,
    /// Where the first record after the header starts.
    start: u64,
    /// Where the next frame goes: the end of the valid data.
    offset: u64,
}

impl Segment {
    /// The file name of segment `seq`: 16 hex digits and `.wal`.
    pub fn file_name(seq: u64) -> String {
        format!("{seq:016x}{SUFFIX}")
    }

    /// The sequence number in a segment's file name, or `None` if it is not one.
    pub fn parse_name(name: &str) -> Option<u64> {
        let hex = name.strip_suffix(SUFFIX)?;
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    }

    /// Whether `name` is a segment that was being created when the process stopped.
    pub fn is_leftover(name: &str) -> bool {
        name.ends_with(TMP_SUFFIX)
    }

    /// Creates segment `seq` in `dir`, preallocated to `size` bytes and starting with a header
    /// record that carries `state`. Durable when it returns: it is written under a temp name,
    /// fsynced, renamed, and the directory is fsynced, so a crash never leaves a segment
    /// without its header.
    pub fn create(dir: &Path, seq: u64, size: u64, state: &HardState) -> io::Result<Segment> {
        let path = dir.join(Self::file_name(seq));
        let tmp = dir.join(format!("{seq:016x}{TMP_SUFFIX}"));
        let mut header = Vec::new();
        Record::Header {
            segment: seq,
            state: state.clone(),
        }
        .encode(&mut header, seq, 0)?;
        let create = || -> io::Result<File> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            preallocate(&file, size)?;
            file.write_all_at(&header, 0)?;
            file.sync_all()?;
            Ok(file)
        };
        let file = create().map_err(|e| with_path(e, "create WAL segment", &tmp))?;
        fs::rename(&tmp, &path).map_err(|e| with_path(e, "rename to", &path))?;
        sync_dir(dir)?;
        Ok(Segment {
            seq,
            path,
            file,
            start: header.len() as u64,
            offset: header.len() as u64,
        })
    }

    /// Opens segment `seq` in `dir` to append after its valid data, which ends at `offset`;
    /// its header ends at `start`.
    pub fn open(dir: &Path, seq: u64, start: u64, offset: u64) -> io::Result<Segment> {
        let path = dir.join(Self::file_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| with_path(e, "open WAL segment", &path))?;
        Ok(Segment {
            seq,
            path,
            file,
            start,
            offset,
        })
    }

    /// The segment's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Where the next frame goes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether anything follows the header.
    pub fn has_records(&self) -> bool {
        self.offset > self.start
    }

    /// Writes `frames` at the end of the valid data (not yet durable: see [`Segment::sync`]).
    pub fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(frames, self.offset)
            .map_err(|e| with_path(e, "write to", &self.path))?;
        self.offset += frames.len() as u64;
        Ok(())
    }

    /// Makes everything written durable with one fdatasync.
    pub fn sync(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        let synced = self
            .file
            .sync_data()
            .map_err(|e| with_path(e, "fdatasync of", &self.path));
        crate::metrics::observe(&crate::metrics::get().wal_fsync, started.elapsed());
        synced
    }

    /// Ends the file at the end of the valid data and makes that durable: a segment that is no
    /// longer the last one ends exactly with its last record.
    pub fn seal(&self) -> io::Result<()> {
        self.file
            .set_len(self.offset)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| with_path(e, "seal", &self.path))
    }

    /// Preallocates the segment to `size` again, durably: a sealed segment that became the last
    /// one (a crash between sealing it and starting the next) is appended to again.
    pub fn reserve(&self, size: u64) -> io::Result<()> {
        preallocate(&self.file, size)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| with_path(e, "preallocate", &self.path))
    }

    /// Drops whatever follows the valid data (a torn or stale tail) and preallocates the space
    /// again, durably: afterwards nothing but zeros follows the valid data, so no stale bytes
    /// can be read as records once new ones are written over them.
    pub fn discard_tail(&self, size: u64) -> io::Result<()> {
        let discard = || -> io::Result<()> {
            self.file.set_len(self.offset)?;
            preallocate(&self.file, size)?;
            self.file.sync_all()
        };
        discard().map_err(|e| with_path(e, "discard the torn tail of", &self.path))
    }
}

/// Makes the first `size` bytes of `file` read as zeros where nothing was written, reserving
/// the blocks (fallocate) so that appends change neither the size nor the block map. Where the
/// file system cannot fallocate, the file is extended with a hole instead, like etcd does: it
/// reads as zeros all the same, and blocks are allocated as appends reach them.
pub fn preallocate(file: &File, size: u64) -> io::Result<()> {
    match fallocate(file, FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => {
            if file.metadata()?.len() < size {
                file.set_len(size)?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_sequence_order_and_parse_back() {
        assert_eq!(Segment::file_name(1), "0000000000000001.wal");
        assert!(Segment::file_name(0xff) > Segment::file_name(0xa));
        for seq in [0, 1, 0xa, 0xff, u64::MAX] {
            assert_eq!(Segment::parse_name(&Segment::file_name(seq)), Some(seq));
        }
        for name in ["1.wal", "000000000000000g.wal", "0000000000000001.wal.tmp", "x"] {
            assert_eq!(Segment::parse_name(name), None, "{name}");
        }
        assert!(Segment::is_leftover("0000000000000001.wal.tmp"));
    }

    #[test]
    fn a_new_segment_is_preallocated_and_starts_with_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 3, 1 << 16, &HardState::default()).unwrap();
        let data = fs::read(dir.path().join(Segment::file_name(3))).unwrap();
        assert_eq!(data.len(), 1 << 16, "preallocated");
        let scan = Record::read(&data, 3, 0).unwrap();
        let super::super::record::Scan::Record(Record::Header { segment: 3, .. }, len) = scan else {
            panic!("expected the header, got {scan:?}");
        };
        assert_eq!(segment.offset(), len as u64);
        assert!(data[len..].iter().all(|&b| b == 0));
    }

    #[test]
    fn sealing_ends_the_file_at_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = Segment::create(dir.path(), 1, 1 << 16, &HardState::default()).unwrap();
        segment.write(b"abc").unwrap();
        segment.seal().unwrap();
        let len = fs::metadata(dir.path().join(Segment::file_name(1)))
            .unwrap()
            .len();
        assert_eq!(len, segment.offset());
    }
}

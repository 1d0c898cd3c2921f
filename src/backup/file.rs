//! The backup file: redb bytes, then their SHA-256 (32 bytes), as etcd's snapshot stream ends.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase};
use sha2::{Digest, Sha256};

use crate::{auth, crash, lease, mvcc};

/// Length of the trailing checksum: a SHA-256.
pub const CHECKSUM_LEN: u64 = 32;

/// Why a backup file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is shorter than a checksum: not a backup, or cut off.
    #[error("{0}: too short to be a snapshot ({1} bytes); was it cut off?")]
    TooShort(PathBuf, u64),
    /// The trailing checksum does not match the bytes before it.
    #[error(
        "{path}: snapshot file integrity check failed: expected sha256 {expected}, got {actual} (truncated or corrupt; restore with --skip-hash-check only for a database copied from a data directory)"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum the file ends with.
        expected: String,
        /// The checksum of the bytes before it.
        actual: String,
    },
    /// The bytes are not a database of Concord's state.
    #[error("{0}: not a concord snapshot: {1}")]
    NotASnapshot(PathBuf, String),
    /// The restore target already holds a member.
    #[error("data-dir {0:?} exists")]
    DataDirExists(PathBuf),
    /// The flags given to restore do not describe a member of a new cluster.
    #[error("{0}")]
    Flags(String),
}

impl BackupError {
    /// An I/O failure on `path`.
    pub fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| BackupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the trailing checksum of the backup at `path` and returns the length of the database
/// before it. With `skip_hash_check` the whole file is taken as the database (etcd's flag, for
/// a `db` file copied out of a data directory).
pub fn verify(path: &Path, skip_hash_check: bool) -> Result<u64, BackupError> {
    let len = std::fs::metadata(path).map_err(BackupError::io(path))?.len();
    if skip_hash_check {
        return Ok(len);
    }
    if len <= CHECKSUM_LEN {
        return Err(BackupError::TooShort(path.to_path_buf(), len));
    }
    let db_len = len - CHECKSUM_LEN;
    let mut file = File::open(path).map_err(BackupError::io(path))?;
    let mut hasher = Sha256::new();
    let copied = io::copy(&mut (&mut file).take(db_len), &mut HashWriter(&mut hasher))
        .map_err(BackupError::io(path))?;
    let mut trailer = Vec::with_capacity(CHECKSUM_LEN as usize);
    file.read_to_end(&mut trailer).map_err(BackupError::io(path))?;
    let actual = hasher.finalize();
    if copied != db_len || trailer.as_slice() != actual.as_slice() {
        return Err(BackupError::Checksum {
            path: path.to_path_buf(),
            expected: hex(&trailer),
            actual: hex(&actual),
        });
    }
    Ok(db_len)
}

/// Feeds what is written into a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies the first `db_len` bytes of the backup at `from` (its database) to a new file `to`,
/// fsynced.
pub fn extract(from: &Path, db_len: u64, to: &Path) -> Result<(), BackupError> {
    let mut src = File::open(from).map_err(BackupError::io(from))?.take(db_len);
    let mut dst = File::create_new(to).map_err(BackupError::io(to))?;
    io::copy(&mut src, &mut dst).map_err(BackupError::io(to))?;
    dst.sync_all().map_err(BackupError::io(to))?;
    Ok(())
}

/// Opens an extracted backup database and checks that every state table loads. redb panics on
/// some damaged files instead of failing: that is contained and reported as not a snapshot.
pub fn open_checked(path: &Path) -> Result<Database, BackupError> {
    let not_a_snapshot = |why: String| BackupError::NotASnapshot(path.to_path_buf(), why);
    crash::contain("opening a snapshot", || {
        let db = mvcc::open_database(path).map_err(|e| e.to_string())?;
        {
            let read = db.begin_read().map_err(|e| e.to_string())?;
            mvcc::check_loadable(&read).map_err(|e| format!("mvcc tables: {e}"))?;
            lease::table::load_in(&read).map_err(|e| format!("leases: {e}"))?;
            auth::table::load_in(&read).map_err(|e| format!("auth: {e}"))?;
        }
        Ok::<_, String>(db)
    })
    .map_err(not_a_snapshot)?
    .map_err(not_a_snapshot)
}

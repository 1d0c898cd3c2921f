//! Taking a backup on a serving member (etcd's `Maintenance.Snapshot`): one redb read
//! transaction is copied into a file of its own (writers go on meanwhile: redb readers never
//! block them), which is then streamed in chunks and followed by its SHA-256.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::raft::snapshot::copy_state_into;

/// Size of each chunk sent (etcd's `snapshotSendBufferSize`, 32 KiB).
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Prefix of the files backups are built in; [`sweep`] removes those a crash left behind.
const PREFIX: &str = "backup-";
const SUFFIX: &str = ".tmp";

/// One piece of a backup stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes.
    pub blob: Vec<u8>,
    /// How many bytes follow this chunk, checksum excluded (etcd's `remaining_bytes`); 0 on the
    /// checksum itself.
    pub remaining_bytes: u64,
}

/// A backup built and ready to stream; its file is removed when the stream ends or is dropped.
#[derive(Debug)]
pub struct Backup {
    path: PathBuf,
    /// Size of the database in bytes (the checksum is not counted).
    pub size: u64,
    /// The MVCC revision the backup holds.
    pub revision: i64,
}

/// Where a new backup of the member whose database lives in `dir` is built.
fn backup_path(dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    dir.join(format!("{PREFIX}{nanos}-{}{SUFFIX}", std::process::id()))
}

/// Copies the state as of now into a new file in `dir`. Blocking: call it off the runtime.
pub fn build(db: &Database, dir: &Path, revision_of: impl FnOnce() -> i64) -> io::Result<Backup> {
    let path = backup_path(dir);
    // The revision is read before the transaction begins, so the backup holds at least it;
    // the header is for information only (etcd's is the same).
    let revision = revision_of();
    let read = db.begin_read().map_err(io::Error::other)?;
    let built = copy_state_into(&read, &path, |_| Ok(())).map(drop);
    drop(read);
    // From here on, dropping the backup removes its file, whatever fails.
    let mut backup = Backup {
        size: 0,
        revision,
        path,
    };
    built?;
    backup.size = std::fs::metadata(&backup.path)?.len();
    Ok(backup)
}

impl Backup {
    /// Streams the file in [`CHUNK_BYTES`] chunks, then its SHA-256, into `to`, reading on a
    /// blocking thread. Stops early (removing the file) when the receiver goes away.
    pub fn stream(self, to: mpsc::Sender<io::Result<Chunk>>) {
        tokio::task::spawn_blocking(move || {
            if let Err(err) = self.send_all(&to) {
                let _ = to.blocking_send(Err(err));
            }
        });
    }

    fn send_all(&self, to: &mpsc::Sender<io::Result<Chunk>>) -> io::Result<()> {
        let mut file = File::open(&self.path)?;
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        while sent < self.size {
            let want = CHUNK_BYTES.min((self.size - sent) as usize);
            let mut blob = vec![0u8; want];
            file.read_exact(&mut blob)?;
            hasher.update(&blob);
            sent += want as u64;
            let chunk = Chunk {
                blob,
                remaining_bytes: self.size - sent,
            };
            if to.blocking_send(Ok(chunk)).is_err() {
                return Ok(()); // the client went away
            }
        }
        let checksum = Chunk {
            blob: hasher.finalize().to_vec(),
            remaining_bytes: 0,
        };
        let _ = to.blocking_send(Ok(checksum));
        Ok(())
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.path.display(), error = %err, "cannot remove a streamed backup");
        }
    }
}

/// Removes backups a crash left half-built or half-sent in `dir`.
pub fn sweep(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A backup of `db` built off the runtime.
pub async fn build_async(
    db: Arc<Database>,
    dir: PathBuf,
    revision_of: impl FnOnce() -> i64 + Send + 'static,
) -> io::Result<Backup> {
    tokio::task::spawn_blocking(move || build(&db, &dir, revision_of))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::file::{CHECKSUM_LEN, verify};

    fn collect(backup: Backup) -> Vec<Chunk> {
        let (tx, mut rx) = mpsc::channel(4);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async move {
            backup.stream(tx);
            let mut chunks = Vec::new();
            while let Some(chunk) = rx.recv().await {
                chunks.push(chunk.unwrap());
            }
            chunks
        })
    }

    #[test]
    fn a_stream_is_the_database_then_its_checksum_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let store = crate::mvcc::MvccStore::open(Arc::new(db)).unwrap();
        let backup = build(&store.database(), dir.path(), || 1).unwrap();
        let size = backup.size;
        let built_at = backup.path.clone();
        let chunks = collect(backup);
        assert!(!built_at.exists(), "the built file goes once streamed");
        let (checksum, data) = chunks.split_last().unwrap();
        assert_eq!(checksum.blob.len() as u64, CHECKSUM_LEN);
        assert_eq!(data.iter().map(|c| c.blob.len() as u64).sum::<u64>(), size);
        assert!(data.iter().all(|c| c.blob.len() <= CHUNK_BYTES));
        assert_eq!(data.last().unwrap().remaining_bytes, 0);
        assert_eq!(data[0].remaining_bytes, size - data[0].blob.len() as u64);

        let saved = dir.path().join("saved.db");
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.blob.clone()).collect();
        std::fs::write(&saved, &bytes).unwrap();
        assert_eq!(verify(&saved, false).unwrap(), size);
        std::fs::write(&saved, &bytes[..bytes.len() - 1]).unwrap();
        assert!(verify(&saved, false).is_err(), "a cut-off file is refused");
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        std::fs::write(&saved, &flipped).unwrap();
        assert!(verify(&saved, false).is_err(), "a changed byte is refused");
    }
}

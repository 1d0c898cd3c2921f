//! Online defragmentation (etcd's `Maintenance.Defragment`, without etcd's stop of the member):
//! the database is rewritten into a new, compact file while reads and writes go on, and the
//! store moves onto it in a short pause.
//!
//! 1. Copy every table from one read transaction into `db.redb.defrag` (writers go on: redb
//!    readers never block them).
//! 2. Catch up: copy the history rows written since, remove those a compaction removed since,
//!    and copy the small tables (revisions, leases, auth, alarms, applied state) whole. Passes
//!    repeat while much has changed; the last runs holding the store's index write lock, so
//!    nothing is applied meanwhile and the copy is exact.
//! 3. Still under the lock: rename the copy over `db.redb`, fsync the directory, and move the
//!    store onto the copy. Readers already inside a read transaction finish on the old file,
//!    which is freed when they are done. The old database is closed after the lock is released
//!    (redb takes a while, 200 ms for a 1 GiB file here, to tidy a file on close).
//!
//! A snapshot installed meanwhile (which replaces the whole state) makes the defragmentation give
//! up before the swap, changing nothing.
//!
//! A crash leaves either the old file (and a `.defrag` leftover, removed at the next start or
//! defragmentation) or the complete copy, which records the applied log index of what it holds:
//! Raft re-applies the rest, as after any restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableHandle, WriteTransaction,
};

use crate::mvcc::history::{HISTORY, META, META_COMPACTED_REVISION, copy_table};
use crate::mvcc::{MvccError, MvccStore, Revision};
use crate::raft::applied::SM_META;
use crate::raft::durable::sync_dir;
use crate::raft::snapshot::copy_state_into;
use crate::{alarm, auth, lease};

/// Extension of the file a defragmentation writes.
const DEFRAG: &str = "defrag";
/// Catch-up passes made without the lock while more than this many rows arrive in one.
const LOCKED_PASS_ROWS: u64 = 2_000;
/// Most catch-up passes made without the lock.
const UNLOCKED_PASSES: usize = 4;
/// The tables a member's database holds; a table outside this list stops a defragmentation
/// rather than be lost.
const KNOWN_TABLES: [&str; 6] = [
    "mvcc_history",
    "mvcc_meta",
    "leases",
    "auth",
    "alarms",
    "raft_sm_meta",
];

/// What a defragmentation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefragReport {
    /// File size before, in bytes.
    pub size_before: u64,
    /// File size after, in bytes.
    pub size_after: u64,
    /// Wall time of the whole defragmentation.
    pub took: Duration,
    /// How long applying and index reads were paused (the last pass and the swap).
    pub paused: Duration,
}

fn storage(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("defragment: {err}"))
}

fn mvcc(err: MvccError) -> io::Error {
    storage(err)
}

/// Where a defragmentation of `db_path` writes its copy.
fn copy_path(db_path: &Path) -> PathBuf {
    db_path.with_extension(DEFRAG)
}

/// Removes a copy a crash left behind next to `db_path`.
pub fn sweep(db_path: &Path) -> io::Result<()> {
    match std::fs::remove_file(copy_path(db_path)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Where the copy stands: the last history row copied and the compaction it reflects.
struct Progress {
    last_row: Option<[u8; 16]>,
    compacted: i64,
}

fn compacted_in(read: &ReadTransaction) -> Result<i64, MvccError> {
    let meta = read.open_table(META)?;
    Ok(meta
        .get(META_COMPACTED_REVISION)?
        .map_or(crate::mvcc::NEVER_COMPACTED, |v| v.value()))
}

fn last_row_in(read: &ReadTransaction) -> Result<Option<[u8; 16]>, MvccError> {
    let history = read.open_table(HISTORY)?;
    Ok(history.last()?.map(|(k, _)| k.value()))
}

fn check_tables(read: &ReadTransaction) -> io::Result<()> {
    for table in read.list_tables().map_err(storage)? {
        if !KNOWN_TABLES.contains(&table.name()) {
            return Err(storage(format!(
                "the database holds a table this version does not know ({:?}); nothing was changed",
                table.name()
            )));
        }
    }
    Ok(())
}

/// Brings the copy (written by `write`) up to what `read` sees; returns how many history rows
/// it copied or removed.
fn catch_up(read: &ReadTransaction, write: &WriteTransaction, progress: &mut Progress) -> io::Result<u64> {
    let source = read.open_table(HISTORY).map_err(storage)?;
    let mut copy = write.open_table(HISTORY).map_err(storage)?;
    let mut changed = 0u64;
    // Rows a compaction removed since the last pass.
    let compacted = compacted_in(read).map_err(mvcc)?;
    if compacted != progress.compacted {
        let end = Revision::new(compacted.saturating_add(1), 0).to_bytes();
        let mut gone = Vec::new();
        for entry in copy.range(..end).map_err(storage)? {
            let key = entry.map_err(storage)?.0.value();
            if source.get(key).map_err(storage)?.is_none() {
                gone.push(key);
            }
        }
        for key in &gone {
            copy.remove(key).map_err(storage)?;
        }
        changed += gone.len() as u64;
        progress.compacted = compacted;
    }
    // Rows written since (history only grows at its end).
    let new_rows = match progress.last_row {
        Some(last) => source.range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)),
        None => source.range::<[u8; 16]>(..),
    }
    .map_err(storage)?;
    for entry in new_rows {
        let (key, value) = entry.map_err(storage)?;
        copy.insert(key.value(), value.value()).map_err(storage)?;
        progress.last_row = Some(key.value());
        changed += 1;
    }
    drop(copy);
    // The small tables, whole.
    copy_table(read, write, META).map_err(mvcc)?;
    lease::table::copy(read, write).map_err(mvcc)?;
    auth::table::copy(read, write).map_err(mvcc)?;
    alarm::table::copy(read, write).map_err(mvcc)?;
    copy_table(read, write, SM_META).map_err(mvcc)?;
    Ok(changed)
}

fn pass(db: &Database, copy: &Database, progress: &mut Progress, durability: Durability) -> io::Result<u64> {
    let read = db.begin_read().map_err(storage)?;
    check_tables(&read)?;
    let mut write = copy.begin_write().map_err(storage)?;
    write.set_durability(durability).map_err(storage)?;
    let changed = catch_up(&read, &write, progress)?;
    write.commit().map_err(storage)?;
    Ok(changed)
}

/// Defragments the database of `store`, kept at `db_path`. Blocking: run it off the runtime.
pub fn defragment(store: &MvccStore, db_path: &Path) -> io::Result<DefragReport> {
    let started = Instant::now();
    let size_before = std::fs::metadata(db_path)?.len();
    let target = copy_path(db_path);
    sweep(db_path)?;
    let replacements = store.replacements();
    let copied = copy_everything(store, &target);
    let (copy, mut progress) = match copied {
        Ok(copied) => copied,
        Err(err) => {
            let _ = std::fs::remove_file(&target);
            return Err(err);
        }
    };
    let swapped = swap(store, db_path, &target, copy, &mut progress, replacements);
    if swapped.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    let paused = swapped?;
    let report = DefragReport {
        size_before,
        size_after: std::fs::metadata(db_path)?.len(),
        took: started.elapsed(),
        paused,
    };
    crate::metrics::observe(&crate::metrics::get().defrag_duration, report.took);
    tracing::info!(before = report.size_before, after = report.size_after, took = ?report.took, paused = ?report.paused, "defragmented the database");
    Ok(report)
}

/// Steps 1 and 2 without the lock: a copy of one read transaction, then catch-up passes
/// while many rows keep arriving.
fn copy_everything(store: &MvccStore, target: &Path) -> io::Result<(Database, Progress)> {
    let db = store.database();
    let read = db.begin_read().map_err(storage)?;
    check_tables(&read)?;
    let mut progress = Progress {
        last_row: last_row_in(&read).map_err(mvcc)?,
        compacted: compacted_in(&read).map_err(mvcc)?,
    };
    let copy = copy_state_into(&read, target, |_| Ok(()))?;
    drop(read);
    for _ in 0..UNLOCKED_PASSES {
        if pass(&store.database(), &copy, &mut progress, Durability::None)? <= LOCKED_PASS_ROWS {
            break;
        }
    }
    // Flush the copy now, so the locked pass has only its own few pages to make durable.
    pass(&store.database(), &copy, &mut progress, Durability::Immediate)?;
    Ok((copy, progress))
}

/// Step 2's last pass and step 3, under the index write lock. Returns how long it held it.
fn swap(
    store: &MvccStore,
    db_path: &Path,
    target: &Path,
    copy: Database,
    progress: &mut Progress,
    replacements: u64,
) -> io::Result<Duration> {
    let mut state = store.write_state().map_err(mvcc)?;
    let locked = Instant::now();
    if store.replacements() != replacements {
        return Err(storage(
            "a snapshot replaced the state while it was being copied; nothing was changed, run it again",
        ));
    }
    pass(&store.database(), &copy, progress, Durability::Immediate)?;
    std::fs::rename(target, db_path)?;
    crate::failpoint::hit("defrag");
    if let Some(dir) = db_path.parent() {
        sync_dir(dir)?;
    }
    let old = store.replace_database(&mut state, Arc::new(copy));
    drop(state);
    let paused = locked.elapsed();
    // Closing the old database takes a while (redb tidies its file): not while writers wait.
    drop(old);
    Ok(paused)
}

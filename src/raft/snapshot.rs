//! Snapshots: a point-in-time copy of the state machine in a redb file of its own.
//!
//! Building one copies every state table from a single read transaction (a consistent view)
//! into `snap/<index>-<term>.snap`, written under a temporary name, fsynced, then renamed, so
//! a crash never leaves a half snapshot in place. Installing copies the tables back in one
//! write transaction. Only the newest snapshot is kept.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftSnapshotBuilder;
use redb::{Database, Durability, ReadOnlyDatabase, ReadableDatabase, TableDefinition};

use super::applied::{read_applied_state_in, storage_err, write_applied_state};
use super::codec::{decode_json, encode_json};
use super::durable::sync_dir;
use super::{SnapshotMeta, TypeConfig};
use crate::mvcc::{self, MvccStore};
use crate::{alarm, auth, crash, lease};

/// The snapshot's own metadata, inside the snapshot file.
const SNAPSHOT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot_meta");
const KEY_META: &str = "meta";
const SUFFIX: &str = ".snap";
/// Extension of a snapshot being received from the leader.
const INCOMING: &str = "incoming";
/// Extension of a snapshot being built.
const BUILDING: &str = "tmp";
/// Extension a kept snapshot that cannot be read is renamed to (kept for inspection).
const DAMAGED: &str = "damaged";

/// A snapshot on disk: what openraft hands between the state machine and the network.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Path of the snapshot's redb file.
    pub path: PathBuf,
}

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Builds a snapshot from a consistent read of the live database.
pub struct SnapshotBuilder {
    store: Arc<MvccStore>,
    dir: PathBuf,
}

impl SnapshotBuilder {
    /// A builder that reads `store`'s database and writes into `dir`.
    pub fn new(store: Arc<MvccStore>, dir: PathBuf) -> Self {
        Self { store, dir }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let db = self.store.database();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || build(&db, &dir))
            .await
            .map_err(io::Error::other)?
    }
}

fn file_name(meta: &SnapshotMeta) -> String {
    let (index, term) = meta
        .last_log_id
        .as_ref()
        .map_or((0, 0), |id| (id.index, id.leader_id.term));
    format!("{index:020}-{term:020}{SUFFIX}")
}

fn build(db: &Database, dir: &Path) -> io::Result<Snapshot> {
    let read = db.begin_read().map_err(storage_err)?;
    let (last_log_id, last_membership) = read_applied_state_in(&read)?;
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let path = dir.join(file_name(&meta));
    let tmp = path.with_extension(BUILDING);
    let _ = std::fs::remove_file(&tmp);
    let copy = copy_state_into(&read, &tmp, |write| {
        write
            .open_table(SNAPSHOT_META)
            .map_err(storage_err)?
            .insert(KEY_META, encode_json(&meta)?.as_slice())
            .map_err(storage_err)?;
        Ok(())
    })?;
    // Closed before it gets its name: a reader that finds it (`current`, for a follower) must
    // be able to open it, and redb refuses to open a file this process still has open.
    drop(copy);
    crate::failpoint::hit("snapshot-build");
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    remove_others(dir, &path)?;
    tracing::info!(snapshot = %path.display(), "built snapshot");
    Ok(Snapshot {
        meta,
        snapshot: SnapshotFile { path },
    })
}

/// Writes a new redb file at `path` holding every state table as `read` sees them (the MVCC
/// tables, leases, auth, alarms and the applied state), plus whatever `extra` adds, durably,
/// and returns it open. Used for Raft snapshots, client backups (etcd's
/// `Maintenance.Snapshot`) and defragmentation.
pub fn copy_state_into(
    read: &redb::ReadTransaction,
    path: &Path,
    extra: impl FnOnce(&redb::WriteTransaction) -> io::Result<()>,
) -> io::Result<Database> {
    let (applied, membership) = read_applied_state_in(read)?;
    let mut copy = crate::mvcc::open_database(path).map_err(storage_err)?;
    let mut write = copy.begin_write().map_err(storage_err)?;
    // No fsync here: compacting below commits durably, after it has moved the pages to the
    // front and cut the file, so the pages that would only be cut off are never written back.
    write.set_durability(Durability::None).map_err(storage_err)?;
    mvcc::copy_tables(read, &write).map_err(storage_err)?;
    lease::table::copy(read, &write).map_err(storage_err)?;
    auth::table::copy(read, &write).map_err(storage_err)?;
    alarm::table::copy(read, &write).map_err(storage_err)?;
    write_applied_state(&write, &applied, Some(&membership))?;
    extra(&write)?;
    write.commit().map_err(storage_err)?;
    // A copy written in one transaction leaves pages free (redb's B-tree grows by copying, and
    // its file by doubling): this copy is ours alone, so give them back; then make it durable
    // (an empty durable commit, in case compacting found nothing to move).
    let written = std::fs::metadata(path).map_or(0, |m| m.len());
    copy.compact().map_err(storage_err)?;
    let mut sync = copy.begin_write().map_err(storage_err)?;
    sync.set_durability(Durability::Immediate).map_err(storage_err)?;
    sync.commit().map_err(storage_err)?;
    tracing::debug!(
        written,
        compacted = std::fs::metadata(path).map_or(0, |m| m.len()),
        "copied the state"
    );
    Ok(copy)
}

/// The newest snapshot in `dir`, if any.
pub fn current(dir: &Path) -> io::Result<Option<Snapshot>> {
    let mut newest: Option<PathBuf> = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_snapshot = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(SUFFIX));
        if is_snapshot && newest.as_ref().is_none_or(|n| path > *n) {
            newest = Some(path);
        }
    }
    let Some(path) = newest else { return Ok(None) };
    let read = crash::contain("reading a snapshot", || read_meta(&path))
        .and_then(|meta| meta.map_err(|e| e.to_string()));
    match read {
        Ok(meta) => Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })),
        // Damaged on disk: set aside, and openraft builds a new one from the state machine
        // (which holds everything the snapshot did) when it needs one.
        Err(err) => {
            let aside = path.with_extension(DAMAGED);
            tracing::error!(snapshot = %path.display(), moved_to = %aside.display(), error = %err, "the kept snapshot is unreadable");
            std::fs::rename(&path, &aside)?;
            Ok(None)
        }
    }
}

fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    let snap = ReadOnlyDatabase::open(path).map_err(storage_err)?;
    read_meta_in(&snap.begin_read().map_err(storage_err)?, path)
}

fn read_meta_in(read: &redb::ReadTransaction, path: &Path) -> io::Result<SnapshotMeta> {
    let table = read.open_table(SNAPSHOT_META).map_err(storage_err)?;
    let value = table
        .get(KEY_META)
        .map_err(storage_err)?
        .ok_or_else(|| storage_err(format!("{} has no snapshot metadata", path.display())))?;
    decode_json(value.value())
}

/// Where a snapshot received from the leader is written while it arrives: a name in `dir` that
/// no other transfer uses at the same time.
pub fn incoming_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = file_name(meta);
    let stem = name.strip_suffix(SUFFIX).unwrap_or(&name);
    dir.join(format!("{stem}-{nanos}.{INCOMING}"))
}

/// Removes what a crash or restart left half-done in `dir`: snapshots being received
/// (`*.incoming`) or built (`*.tmp`). Returns how many files went.
pub fn sweep_unfinished(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == INCOMING || e == BUILDING) {
            std::fs::remove_file(&path)?;
            tracing::info!(file = %path.display(), "removed an unfinished snapshot");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Checks that the file at `path` is a snapshot this member can install, before openraft is
/// handed it (openraft stops for good when installing fails): a redb file whose metadata is
/// `claimed` (what the leader said it sends), whose applied state agrees, and whose MVCC and
/// lease tables load.
pub fn validate(path: &Path, claimed: &SnapshotMeta) -> io::Result<()> {
    // redb panics on some damaged files instead of failing.
    crash::contain("checking a snapshot", || check(path, claimed))
        .map_err(|panicked| io::Error::new(io::ErrorKind::InvalidData, panicked))?
}

fn check(path: &Path, claimed: &SnapshotMeta) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let snap = ReadOnlyDatabase::open(path).map_err(|e| invalid(format!("not a snapshot: {e}")))?;
    let read = snap
        .begin_read()
        .map_err(|e| invalid(format!("unreadable snapshot: {e}")))?;
    let meta = read_meta_in(&read, path).map_err(|e| invalid(e.to_string()))?;
    if meta != *claimed {
        return Err(invalid(format!(
            "snapshot metadata {meta:?} differs from the announced {claimed:?}"
        )));
    }
    let (applied, membership) = read_applied_state_in(&read).map_err(|e| invalid(e.to_string()))?;
    if applied != meta.last_log_id || membership != meta.last_membership {
        return Err(invalid("snapshot state differs from its metadata".into()));
    }
    mvcc::check_loadable(&read).map_err(|e| invalid(format!("snapshot tables: {e}")))?;
    lease::table::load_in(&read).map_err(|e| invalid(format!("snapshot leases: {e}")))?;
    auth::table::load_in(&read).map_err(|e| invalid(format!("snapshot auth: {e}")))?;
    alarm::table::load_in(&read).map_err(|e| invalid(format!("snapshot alarms: {e}")))?;
    Ok(())
}

/// Replaces the live state with the snapshot's: the MVCC tables and index swap under the
/// store's write lock (readers never see a mix), together with the lease table and the applied
/// state, the auth table and the alarms, durably. The caller reloads the lessor, the auth store
/// and the alarms afterwards.
pub fn install(store: &MvccStore, meta: &SnapshotMeta, snapshot: &SnapshotFile) -> io::Result<()> {
    let snap = ReadOnlyDatabase::open(&snapshot.path).map_err(storage_err)?;
    let read = snap.begin_read().map_err(storage_err)?;
    let mut batch = store.begin_write().map_err(storage_err)?;
    batch.replace_with(&read).map_err(storage_err)?;
    lease::table::copy(&read, batch.transaction()).map_err(storage_err)?;
    auth::table::copy(&read, batch.transaction()).map_err(storage_err)?;
    alarm::table::copy(&read, batch.transaction()).map_err(storage_err)?;
    crate::failpoint::hit("snapshot-install");
    write_applied_state(
        batch.transaction(),
        &meta.last_log_id,
        Some(&meta.last_membership),
    )?;
    batch.commit(Durability::Immediate).map_err(storage_err)?;
    Ok(())
}

/// Keeps an installed snapshot as the current one (moving it into `dir` if it came from
/// elsewhere) and returns where it is kept.
pub fn keep(dir: &Path, meta: &SnapshotMeta, snapshot: SnapshotFile) -> io::Result<PathBuf> {
    let kept = dir.join(file_name(meta));
    if snapshot.path != kept {
        std::fs::rename(&snapshot.path, &kept)
            .or_else(|_| std::fs::copy(&snapshot.path, &kept).map(|_| ()))?;
        sync_dir(dir)?;
    }
    remove_others(dir, &kept)?;
    Ok(kept)
}

/// Removes the snapshots older than `keep` (their names sort by last log index, then term).
/// Never a newer one: a build that started before a snapshot from the leader was installed
/// finishes after it, and removing the installed one would leave the member with a snapshot
/// older than its purged log. Nor a snapshot being built (`*.tmp`): only a start sweeps those.
fn remove_others(dir: &Path, keep: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.as_path() < keep && path.extension().is_some_and(|e| e == "snap") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use concord_proto::etcdserverpb::PutRequest;

    use super::*;
    use crate::lease::Lessor;

    struct Member {
        _dir: tempfile::TempDir,
        db: Arc<Database>,
        store: MvccStore,
        lessor: Lessor,
    }

    fn member() -> Member {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("db.redb")).unwrap());
        let store = MvccStore::open(db.clone()).unwrap();
        let lessor = Lessor::open(&store).unwrap();
        Member {
            _dir: dir,
            db,
            store,
            lessor,
        }
    }

    impl Member {
        fn grant_with_key(&self, id: i64, key: &str) {
            let mut leases = self.lessor.lock();
            let mut batch = self.store.begin_write().unwrap();
            leases.grant(batch.transaction(), id, 30).unwrap();
            let from = batch.event_count();
            let put = PutRequest {
                key: key.into(),
                lease: id,
                ..Default::default()
            };
            batch.put(&put, &*leases).unwrap();
            leases.track(batch.events_since(from));
            batch.commit(Durability::Immediate).unwrap();
        }
    }

    #[test]
    fn a_damaged_kept_snapshot_is_set_aside_for_a_new_one() {
        let source = member();
        source.grant_with_key(7, "held");
        let snap_dir = tempfile::tempdir().unwrap();
        let built = build(&source.db, snap_dir.path()).unwrap();
        assert!(current(snap_dir.path()).unwrap().is_some());
        std::fs::write(&built.snapshot.path, b"rotten").unwrap();
        assert!(
            current(snap_dir.path()).unwrap().is_none(),
            "openraft will build a new one"
        );
        assert!(
            built.snapshot.path.with_extension(DAMAGED).exists(),
            "kept for inspection"
        );
        assert!(validate(&built.snapshot.path.with_extension(DAMAGED), &built.meta).is_err());
    }

    #[test]
    fn a_snapshot_kept_late_never_removes_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let name = |index: u64| dir.path().join(format!("{index:020}-{:020}{SUFFIX}", 3));
        for index in [10, 20, 30] {
            std::fs::write(name(index), b"x").unwrap();
        }
        let building = dir.path().join(format!("x.{BUILDING}"));
        std::fs::write(&building, b"being built").unwrap();
        // A build that began before snapshot 30 was installed finishes with 20.
        remove_others(dir.path(), &name(20)).unwrap();
        assert!(!name(10).exists(), "older: removed");
        assert!(name(20).exists());
        assert!(name(30).exists(), "newer: kept, and still the current one");
        assert!(building.exists(), "a build in progress is left alone");
    }

    #[test]
    fn snapshots_carry_the_leases_and_their_keys() {
        let source = member();
        source.grant_with_key(7, "held");
        let snap_dir = tempfile::tempdir().unwrap();
        let snapshot = build(&source.db, snap_dir.path()).unwrap();

        let target = member();
        target.grant_with_key(9, "replaced");
        install(&target.store, &snapshot.meta, &snapshot.snapshot).unwrap();
        target.lessor.reload(&target.store).unwrap();
        assert_eq!(
            target.lessor.ids(),
            [7],
            "the snapshot's leases replace the old ones"
        );
        let ttl = target.lessor.time_to_live(7, true).unwrap();
        assert_eq!((ttl.granted, ttl.keys), (30, vec![b"held".to_vec()]));
    }
}

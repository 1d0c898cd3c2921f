//! `concord snapshot restore`: a data directory for one member of a new cluster, holding a
//! backup's state (etcdutl's workflow: restore the same file once per member, each with its own
//! `--name` and `--initial-advertise-peer-urls` and the same `--initial-cluster`, then start
//! each member on its directory).
//!
//! The state keeps its revisions, leases and auth; the applied Raft state is cleared, so the
//! new cluster's log starts afresh on top of it. The member's identity (IDs derived as for any
//! new cluster) and the new membership are written beside the database; the first start
//! bootstraps Raft with that membership.

use std::path::{Path, PathBuf};

use redb::Durability;

use super::file::{self, BackupError};
use crate::config::{Config, Flags};
use crate::member::DB_FILE;
use crate::raft::applied::SM_META;
use crate::raft::durable::sync_dir;
use crate::raft::identity;

/// What a restore needs: the file and the new member's place in the new cluster.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup file.
    pub file: PathBuf,
    /// The data directory to create (must not exist).
    pub data_dir: PathBuf,
    /// This member's name.
    pub name: String,
    /// The new cluster: `name=peerURL,...`.
    pub initial_cluster: String,
    /// The new cluster's token.
    pub initial_cluster_token: String,
    /// This member's peer URLs.
    pub initial_advertise_peer_urls: String,
    /// Take the whole file as the database (a `db` copied out of a data directory).
    pub skip_hash_check: bool,
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The new member's ID.
    pub member_id: u64,
    /// The new cluster's ID.
    pub cluster_id: u64,
}

fn flags_config(options: &RestoreOptions) -> Result<Config, BackupError> {
    let flags = Flags {
        name: options.name.clone(),
        data_dir: options.data_dir.clone(),
        initial_cluster: options.initial_cluster.clone(),
        initial_cluster_token: options.initial_cluster_token.clone(),
        initial_advertise_peer_urls: options.initial_advertise_peer_urls.clone(),
        ..<Flags as clap::Parser>::parse_from(["concord"])
    };
    Config::from_flags(flags).map_err(|e| BackupError::Flags(e.to_string()))
}

/// Restores `options.file` into a new data directory. Nothing is left behind on failure.
pub fn restore(options: &RestoreOptions) -> Result<Restored, BackupError> {
    let data_dir = &options.data_dir;
    if data_dir.exists() {
        return Err(BackupError::DataDirExists(data_dir.clone()));
    }
    let config = flags_config(options)?;
    let db_len = file::verify(&options.file, options.skip_hash_check)?;
    let made = make_data_dir(options, &config, db_len);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(data_dir);
    }
    made
}

fn make_data_dir(options: &RestoreOptions, config: &Config, db_len: u64) -> Result<Restored, BackupError> {
    let member_dir = options.data_dir.join("member");
    std::fs::create_dir_all(&member_dir).map_err(BackupError::io(&member_dir))?;
    let building = member_dir.join(format!("{DB_FILE}.restoring"));
    file::extract(&options.file, db_len, &building)?;
    forget_applied_state(&building)?;
    let db_path = member_dir.join(DB_FILE);
    std::fs::rename(&building, &db_path).map_err(BackupError::io(&db_path))?;

    let me = identity::new_cluster_identity(config);
    let members = identity::initial_members(config);
    let flags_error = |e: crate::error::Error| BackupError::Flags(e.to_string());
    identity::write_identity(&member_dir.join("identity.json"), &me).map_err(flags_error)?;
    identity::write_bootstrap(&member_dir, &members).map_err(flags_error)?;
    sync_dir(&member_dir).map_err(BackupError::io(&member_dir))?;
    if let Some(parent) = absolute_parent(&options.data_dir) {
        sync_dir(&parent).map_err(BackupError::io(&parent))?;
    }
    Ok(Restored {
        member_id: me.member_id,
        cluster_id: me.cluster_id,
    })
}

fn absolute_parent(dir: &Path) -> Option<PathBuf> {
    std::path::absolute(dir).ok()?.parent().map(Path::to_path_buf)
}

/// Checks the extracted database and clears its applied Raft state (the old cluster's log
/// positions and membership mean nothing to the new one).
fn forget_applied_state(path: &Path) -> Result<(), BackupError> {
    let db = file::open_checked(path)?;
    let not_a_snapshot = |e: String| BackupError::NotASnapshot(path.to_path_buf(), e);
    let mut write = db.begin_write().map_err(|e| not_a_snapshot(e.to_string()))?;
    write
        .set_durability(Durability::Immediate)
        .map_err(|e| not_a_snapshot(e.to_string()))?;
    write
        .delete_table(SM_META)
        .map_err(|e| not_a_snapshot(e.to_string()))?;
    write.commit().map_err(|e| not_a_snapshot(e.to_string()))?;
    Ok(())
}

//! `concord snapshot restore|status`: the offline side of backups, with etcdutl's flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::BackupError;
use super::restore::{RestoreOptions, restore};
use super::status::status;

/// `concord snapshot ...`.
#[derive(Debug, Parser)]
#[command(name = "concord snapshot", about = "Restores a backup, or describes one")]
pub struct SnapshotCli {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Makes the data directory of one member of a new cluster from a backup.
    Restore {
        /// The backup (from `etcdctl snapshot save` or `concordctl`).
        file: PathBuf,
        /// The data directory to create (default: `<name>.concord`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// This member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The new cluster: `name=peerURL,...`.
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// The new cluster's token.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// This member's peer URLs.
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Take the whole file as the database (a `db` copied out of a data directory).
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Prints a backup's hash, revision, number of key revisions and size.
    Status {
        /// The backup.
        file: PathBuf,
        /// Output format: simple, json or table.
        #[arg(short = 'w', long = "write-out", default_value = "simple")]
        write_out: String,
        /// Take the whole file as the database.
        #[arg(long)]
        skip_hash_check: bool,
    },
}

/// Runs `concord snapshot` with `args` (starting with the program name) and returns what to
/// print.
pub fn run(args: impl IntoIterator<Item = String>) -> Result<String, BackupError> {
    let cli = SnapshotCli::parse_from(args);
    match cli.command {
        SnapshotCommand::Restore {
            file,
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        } => {
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.concord")));
            let restored = restore(&RestoreOptions {
                file,
                data_dir: data_dir.clone(),
                name: name.clone(),
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls,
                skip_hash_check,
            })?;
            Ok(format!(
                "restored snapshot into {} (member {:x} \"{name}\" of new cluster {:x})",
                data_dir.display(),
                restored.member_id,
                restored.cluster_id
            ))
        }
        SnapshotCommand::Status {
            file,
            write_out,
            skip_hash_check,
        } => status(&file, skip_hash_check)?.render(&write_out),
    }
}

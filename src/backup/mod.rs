//! Backups: etcd's `Maintenance.Snapshot` on the server, and `concord snapshot restore|status`
//! offline, as `etcdctl snapshot save` and `etcdutl snapshot restore|status` use them.
//!
//! A backup file is a redb database holding every state table (the same tables as a Raft
//! snapshot, [`crate::raft::snapshot::copy_state_into`]) followed by the SHA-256 of those bytes,
//! etcd's trailing checksum. [`save`] builds and streams one while the member keeps serving,
//! [`mod@file`] checks and opens one, [`restore`] makes a data directory of a new cluster from one,
//! [`status`] describes one, and [`cli`] is the `concord snapshot` command line.

pub mod cli;
pub mod file;
pub mod restore;
pub mod save;
pub mod status;

pub use file::BackupError;

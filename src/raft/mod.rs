//! Consensus: every write is a [`Command`] that goes through openraft before it is applied.
//!
//! # Layout
//! - [`command`]: the replicated [`Command`] and the state machine's [`CommandResult`].
//! - [`admission`]: the checks a command passes before it is proposed, wherever it enters.
//! - [`codec`]: how log entries, log ids and votes are encoded on disk (versioned).
//! - [`log_store`]: openraft's log storage: the [`log_cache`] in front of the [`wal`], with
//!   group commit (one fdatasync for every append waiting); the cache keeps the newest entries
//!   in memory up to a byte budget, and older ones are read back from the WAL.
//! - [`wal`]: the write-ahead log: append-only, preallocated, CRC-checked segment files.
//! - [`durable`]: directory fsync and atomic file replacement.
//! - [`state_machine`]: applies committed commands to the MVCC store, atomically with the
//!   applied log id ([`applied`]), and builds/installs snapshots.
//! - [`network`] and [`peer_service`]: the peer transport (client and server sides) over gRPC;
//!   [`peer_gate`] admits only members of this cluster, and [`peer_error`] says why a member
//!   did not do what another asked.
//! - [`membership`]: member add/remove/update/promote and publishing client URLs.
//! - `lease_consensus`: Raft as the leader's lease task sees it (`crate::lease::expiry`).
//! - [`identity`]: who the members are (etcd's member and cluster IDs, `--initial-cluster`).
//! - [`timing`]: openraft's configuration for etcd's flags.
//! - [`watchdog`]: ends the process when Raft stops on its own (a storage failure).

pub mod admission;
pub mod applied;
pub mod codec;
pub mod command;
pub mod durable;
#[cfg(test)]
mod fuzz;
pub mod identity;
mod lease_consensus;
pub mod log_cache;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod peer_error;
pub mod peer_gate;
pub mod peer_service;
pub mod snapshot;
pub mod state_machine;
#[cfg(test)]
mod storage_suite;
pub mod timing;
pub mod wal;
pub mod watchdog;

pub use command::{Command, CommandResult};
pub use identity::MemberNode;

openraft::declare_raft_types!(
    /// openraft's type configuration for Concord.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = MemberNode,
);

/// The Raft handle used everywhere in the server.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
/// A log id of this configuration.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote of this configuration.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A log entry of this configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A stored membership of this configuration.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

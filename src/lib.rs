//! Concord: a distributed coordination service that speaks etcd's v3 API.
//!
//! # Layout
//! The write path, one module per hop:
//! - [`api`]: gRPC services (one file per etcd service) validate requests and propose them;
//! - [`raft`]: openraft with a group-committed log and the state machine that applies commands;
//! - [`mvcc`]: the multi-version key-value store on redb that commands are applied to;
//! - [`watch`]: the hub that hands committed changes to watchers (slow ones catch up from history).
//!
//! Beside it, [`lease`]: leases and their keys, applied with the store, and the leader's clock
//! that expires them through Raft; and [`auth`]: users, roles and permissions, applied with the
//! store, and the checks every service makes while auth is on; and [`alarm`]: NOSPACE and
//! CORRUPT, raised through Raft, which refuse writes while they last.
//!
//! Beside them, [`backup`]: backups streamed by a serving member, and restored offline; and
//! [`defrag`]: the database rewritten compactly while the member serves; and [`compactor`]:
//! auto-compaction by period or by revisions; and [`corruption`]: members comparing hashes.
//!
//! Beside the gRPC services, [`gateway`]: etcd's HTTP/JSON API (and our services') on the same
//! port, calling the same services.
//!
//! Around it: [`metrics`] (Prometheus metrics under etcd's names), [`config`] (flags → validated config), [`member`] (a member assembled, top to
//! bottom), [`server`] (listeners, services and the ordered stop),
//! [`error`] (the one error type and its mapping to `tonic::Status`), [`crash`] (a member that
//! cannot go on exits instead of serving nothing) and [`failpoint`] (test-only crash points).

pub mod alarm;
pub mod api;
pub mod auth;
pub mod backup;
pub mod compactor;
pub mod config;
pub mod corruption;
pub mod crash;
pub mod defrag;
pub mod error;
pub mod failpoint;
pub mod gateway;
pub mod lease;
pub mod member;
pub mod metrics;
pub mod mvcc;
pub mod net;
pub mod raft;
pub mod server;
pub mod watch;

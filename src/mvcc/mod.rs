//! The MVCC key-value store: etcd v3's data model on redb.
//!
//! Every change gets a [`Revision`] and is kept as a row of an append-only history table; an
//! in-memory index maps each key to its revisions, so reads at any revision since the last
//! compaction are index lookups plus point reads. Writes come from Raft's apply loop in
//! batches ([`WriteBatch`]), sharing one redb write transaction with the state machine's own
//! tables.
//!
//! # Layout
//!
//! Following etcd's `server/mvcc`:
//!
//! - [`revision`]: [`Revision`] and its 16-byte big-endian history key.
//! - `key_index`: `KeyIndex`, one key's generations (etcd's `key_index.go`).
//! - `index`: `TreeIndex`, all keys in a `BTreeMap` (etcd's `index.go`).
//! - [`key_span`]: [`KeySpan`], etcd's `key` / `range_end` conventions.
//! - [`history`]: the redb tables and the row encoding.
//! - `range`: range reads (revision checks, count, filters, sort, limit).
//! - `view`: `ReadView`, what reads, compares and txn checks read from.
//! - `writer`: one write request in progress (etcd's `storeTxnWrite` with the applier's
//!   `Put` / `DeleteRange`).
//! - `compare` and `txn`: txn compares and execution (etcd's `applyCompare`, `applyTxn`).
//! - [`check`]: request validation (etcd's `v3rpc/key.go` checks, `checkIntervals`).
//! - `compaction`: compaction of the index and the history rows.
//! - `change_log`: the undo log and events of a batch.
//! - `store` and `write_batch`: [`MvccStore`] and [`WriteBatch`].
//! - [`error`]: [`MvccError`], with etcd's messages.
//!
//! # Tables
//!
//! - `mvcc_history`: `[u8; 16]` (main, sub; big-endian) → marker byte (0 put, 1 tombstone) +
//!   prost-encoded `mvccpb::KeyValue`.
//! - `mvcc_meta`: `&str` → `i64`: `current_revision`, `compacted_revision`.

mod change_log;
pub mod check;
mod compaction;
mod compare;
pub mod database;
pub mod error;
mod hash;
pub mod history;
mod index;
mod key_index;
pub mod key_span;
mod range;
pub mod revision;
mod store;
mod txn;
mod view;
mod write_batch;
mod writer;

#[cfg(test)]
pub(crate) mod test_util;

pub use database::open_database;
pub use error::MvccError;
pub use hash::KvHash;
pub use history::copy_tables;
pub use key_span::KeySpan;
pub use revision::Revision;
pub use store::{INITIAL_REVISION, MvccStore, NEVER_COMPACTED, check_loadable};
pub use write_batch::{Committed, WriteBatch};
pub use writer::LeaseLookup;
pub(crate) use writer::header as response_header;

//! Coordination recipes written once, over a small async key-value trait ([`Kv`]).
//!
//! The server implements [`Kv`] in-process, straight onto its Raft-backed store, and serves
//! etcd's Lock and Election services with these recipes; the client crate implements it over
//! gRPC. Every recipe is built from the same few primitives etcd's recipes use: a txn with
//! compares, a range, a watch from a revision, and leases. Keys that order their owners are
//! ordered by **create revision**, which the store assigns at commit, so the order is the
//! order of arrival and needs no clocks.

pub mod barrier;
pub mod config;
pub mod election;
pub mod error;
pub mod follow;
pub mod kv;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod mutex;
pub mod pubsub;
pub mod queue;
pub mod registry;
pub mod rwmutex;
pub mod semaphore;
pub mod session;

pub use error::Error;
pub use kv::{Kv, WatchBatch, WatchStream};

#[cfg(test)]
mod test_util;

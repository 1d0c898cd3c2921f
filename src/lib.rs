//! Concord server library.
pub mod mvcc;

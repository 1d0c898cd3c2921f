//! The applied state: the last log id applied and the membership, recorded in the state
//! machine's database in the same transaction as the data they describe (the role of etcd's
//! consistent index), so the two never disagree. The state machine writes it with every batch,
//! and a snapshot carries it.

use std::io;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::codec::{decode_json, encode_json};
use super::{LogId, StoredMembership};

/// The state machine's own records, in the same database as the MVCC tables.
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_sm_meta");
pub(crate) const KEY_APPLIED: &str = "applied";
pub(crate) const KEY_MEMBERSHIP: &str = "membership";

/// Reads the applied log id and membership recorded with the data.
pub(crate) fn read_applied_state(db: &Database) -> io::Result<(Option<LogId>, StoredMembership)> {
    read_applied_state_in(&db.begin_read().map_err(storage_err)?)
}

/// Reads the applied log id and membership inside a read transaction.
pub(crate) fn read_applied_state_in(
    txn: &redb::ReadTransaction,
) -> io::Result<(Option<LogId>, StoredMembership)> {
    let table = match txn.open_table(SM_META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((None, StoredMembership::default())),
        Err(err) => return Err(storage_err(err)),
    };
    let applied = match table.get(KEY_APPLIED).map_err(storage_err)? {
        Some(v) => Some(decode_json(v.value())?),
        None => None,
    };
    let membership = match table.get(KEY_MEMBERSHIP).map_err(storage_err)? {
        Some(v) => decode_json(v.value())?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Records the applied state inside an open write transaction.
pub(crate) fn write_applied_state(
    txn: &redb::WriteTransaction,
    applied: &Option<LogId>,
    membership: &StoredMembership,
) -> io::Result<()> {
    let mut table = txn.open_table(SM_META).map_err(storage_err)?;
    if let Some(applied) = applied {
        table
            .insert(KEY_APPLIED, encode_json(applied)?.as_slice())
            .map_err(storage_err)?;
    }
    table
        .insert(KEY_MEMBERSHIP, encode_json(membership)?.as_slice())
        .map_err(storage_err)?;
    Ok(())
}

/// A storage failure: fatal to Raft.
pub(crate) fn storage_err(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("state machine storage: {err}"))
}

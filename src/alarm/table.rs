//! The `alarms` table: one row per raised alarm, keyed by (member ID, alarm type).

use std::collections::BTreeSet;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction,
};

use super::Alarm;
use crate::mvcc::MvccError;
use crate::mvcc::history::copy_table;

/// (member ID, etcd `AlarmType` number) → nothing.
pub const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarms");

/// The alarms stored in `db`.
pub fn load(db: &Database) -> Result<BTreeSet<Alarm>, MvccError> {
    load_in(&db.begin_read()?)
}

/// The alarms stored in the database `read` reads.
pub fn load_in(read: &ReadTransaction) -> Result<BTreeSet<Alarm>, MvccError> {
    let table = match read.open_table(ALARMS) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(BTreeSet::new()),
        Err(err) => return Err(err.into()),
    };
    let mut alarms = BTreeSet::new();
    for entry in table.iter()? {
        alarms.insert(entry?.0.value());
    }
    Ok(alarms)
}

/// Replaces the stored alarms with `alarms`.
pub fn save(txn: &WriteTransaction, alarms: &BTreeSet<Alarm>) -> Result<(), MvccError> {
    txn.delete_table(ALARMS)?;
    let mut table = txn.open_table(ALARMS)?;
    for alarm in alarms {
        table.insert(alarm, ())?;
    }
    Ok(())
}

/// Replaces the `alarms` table written by `write` with the one `read` sees (snapshots).
pub fn copy(read: &ReadTransaction, write: &WriteTransaction) -> Result<(), MvccError> {
    copy_table(read, write, ALARMS)
}

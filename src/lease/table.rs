//! The `leases` table: one [`LeaseRecord`] per lease, in the state machine's database.
//!
//! Only the lease itself is stored (ID, granted TTL, remaining time at the last checkpoint);
//! which keys belong to it is rebuilt from the keys' own `lease` field on start, as etcd does,
//! so the two can never disagree.

use concord_proto::raftpb::LeaseRecord;
use prost::Message;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction,
};

use crate::mvcc::MvccError;
use crate::mvcc::history::copy_table;

/// Lease ID → prost-encoded [`LeaseRecord`].
pub const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");

/// Every stored lease.
pub fn load(db: &Database) -> Result<Vec<LeaseRecord>, MvccError> {
    load_in(&db.begin_read()?)
}

/// Every lease stored in the database `read` reads.
pub fn load_in(read: &ReadTransaction) -> Result<Vec<LeaseRecord>, MvccError> {
    let table = match read.open_table(LEASES) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let mut records = Vec::new();
    for entry in table.iter()? {
        let (_, value) = entry?;
        records.push(LeaseRecord::decode(value.value())?);
    }
    Ok(records)
}

/// Stores (or replaces) `record` in `txn`.
pub fn save(txn: &WriteTransaction, record: &LeaseRecord) -> Result<(), MvccError> {
    let mut table = txn.open_table(LEASES)?;
    table.insert(record.id, record.encode_to_vec().as_slice())?;
    Ok(())
}

/// Removes lease `id` in `txn`.
pub fn remove(txn: &WriteTransaction, id: i64) -> Result<(), MvccError> {
    let mut table = txn.open_table(LEASES)?;
    table.remove(id)?;
    Ok(())
}

/// Replaces the `leases` table written by `write` with the one `read` sees (snapshots).
pub fn copy(read: &ReadTransaction, write: &WriteTransaction) -> Result<(), MvccError> {
    copy_table(read, write, LEASES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        assert!(load(&db).unwrap().is_empty(), "no table yet");
        let a = LeaseRecord {
            id: 7,
            ttl: 10,
            remaining_ms: 0,
            generation: 0,
        };
        let b = LeaseRecord {
            id: -3,
            ttl: 60,
            remaining_ms: 1500,
            generation: 4,
        };
        let txn = db.begin_write().unwrap();
        save(&txn, &a).unwrap();
        save(&txn, &b).unwrap();
        txn.commit().unwrap();
        assert_eq!(load(&db).unwrap(), [b, a]);
        let txn = db.begin_write().unwrap();
        remove(&txn, 7).unwrap();
        txn.commit().unwrap();
        assert_eq!(load(&db).unwrap(), [b]);
    }
}

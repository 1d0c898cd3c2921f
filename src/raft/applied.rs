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

/// Records the applied state inside an open write transaction. The membership is written only
/// when given: a batch without a membership entry leaves the recorded one as it is, which saves
/// encoding and inserting it with every batch.
pub(crate) fn write_applied_state(
    txn: &redb::WriteTransaction,
    applied: &Option<LogId>,
    membership: Option<&StoredMembership>,
) -> io::Result<()> {
    let mut table = txn.open_table(SM_META).map_err(storage_err)?;
    if let Some(applied) = applied {
        table
            .insert(KEY_APPLIED, encode_json(applied)?.as_slice())
            .map_err(storage_err)?;
    }
    if let Some(membership) = membership {
        table
            .insert(KEY_MEMBERSHIP, encode_json(membership)?.as_slice())
            .map_err(storage_err)?;
    }
    Ok(())
}

/// A storage failure: fatal to Raft.
pub(crate) fn storage_err(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("state machine storage: {err}"))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::Membership;

    use super::*;
    use crate::raft::MemberNode;
    use crate::raft::codec::log_id;

    fn write(db: &Database, applied: LogId, membership: Option<&StoredMembership>) {
        let txn = db.begin_write().unwrap();
        write_applied_state(&txn, &Some(applied), membership).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_batch_without_membership_keeps_the_recorded_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let members = BTreeMap::from([(7u64, MemberNode::default())]);
        let membership = Membership::new(vec![BTreeSet::from([7u64])], members).unwrap();
        let stored = StoredMembership::new(Some(log_id(1, 7, 1)), membership);
        write(&db, log_id(1, 7, 1), Some(&stored));
        write(&db, log_id(1, 7, 5), None);

        let (applied, read_back) = read_applied_state(&db).unwrap();
        assert_eq!(applied, Some(log_id(1, 7, 5)));
        assert_eq!(read_back, stored);
    }
}

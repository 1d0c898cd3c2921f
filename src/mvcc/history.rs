//! The redb tables of the MVCC store and the encoding of history rows.
//!
//! - [`HISTORY`] (`mvcc_history`): key = [`Revision::to_bytes`] (16 bytes, big-endian main then
//!   sub), value = one marker byte ([`MARK_PUT`] or [`MARK_TOMBSTONE`]) followed by the
//!   prost-encoded `mvccpb::KeyValue`. A put row holds the full `KeyValue`; a tombstone row
//!   holds the key and `mod_revision` (the delete's revision).
//! - [`META`] (`mvcc_meta`): [`META_CURRENT_REVISION`] and [`META_COMPACTED_REVISION`], both
//!   `i64`, rewritten at most once per write batch (at commit).

use concord_proto::mvccpb::KeyValue;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction};

use super::error::MvccError;
use super::revision::{REVISION_BYTES, Revision};

/// Every change, keyed by revision: writes are appends at the end of the table.
pub const HISTORY: TableDefinition<'static, [u8; REVISION_BYTES], &'static [u8]> =
    TableDefinition::new("mvcc_history");

/// The store's revisions, which must survive even when compaction empties the history.
pub const META: TableDefinition<'static, &'static str, i64> = TableDefinition::new("mvcc_meta");

/// [`META`] key of the store's current revision.
pub const META_CURRENT_REVISION: &str = "current_revision";

/// [`META`] key of the revision of the last compaction (absent: never compacted).
pub const META_COMPACTED_REVISION: &str = "compacted_revision";

/// Marker byte of a put row.
pub const MARK_PUT: u8 = 0;

/// Marker byte of a tombstone (delete) row.
pub const MARK_TOMBSTONE: u8 = 1;

/// One decoded history row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// True for a delete.
    pub tombstone: bool,
    /// The key-value written (for a tombstone: key and mod_revision only).
    pub kv: KeyValue,
}

/// Encodes a history row value.
pub fn encode_row(tombstone: bool, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(if tombstone { MARK_TOMBSTONE } else { MARK_PUT });
    // Encoding into a Vec only fails for lack of capacity, which a Vec grows.
    let _ = kv.encode(&mut buf);
    buf
}

/// Decodes a history row value.
pub fn decode_row(bytes: &[u8]) -> Result<Row, MvccError> {
    let (&mark, rest) = bytes
        .split_first()
        .ok_or_else(|| MvccError::Storage("empty history row".into()))?;
    let tombstone = match mark {
        MARK_PUT => false,
        MARK_TOMBSTONE => true,
        other => {
            return Err(MvccError::Storage(format!("unknown history row marker {other}")));
        }
    };
    Ok(Row {
        tombstone,
        kv: KeyValue::decode(rest)?,
    })
}

/// The fields of a row needed to rebuild the index; decoding skips the value without copying it.
#[derive(Clone, PartialEq, Message)]
pub struct RowMeta {
    /// `KeyValue.key`.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// `KeyValue.create_revision`.
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// `KeyValue.version`.
    #[prost(int64, tag = "4")]
    pub version: i64,
}

/// Decodes only the index fields of a history row: (tombstone, meta).
pub fn decode_row_meta(bytes: &[u8]) -> Result<(bool, RowMeta), MvccError> {
    let (&mark, rest) = bytes
        .split_first()
        .ok_or_else(|| MvccError::Storage("empty history row".into()))?;
    Ok((mark == MARK_TOMBSTONE, RowMeta::decode(rest)?))
}

/// Read access to the history table, from a read or a write transaction.
pub trait History {
    /// The row at `rev`, if there is one.
    fn row(&self, rev: Revision) -> Result<Option<Row>, MvccError>;

    /// The key-value written at `rev`, which the index says exists.
    fn kv(&self, rev: Revision) -> Result<KeyValue, MvccError> {
        self.row(rev)?
            .map(|r| r.kv)
            .ok_or_else(|| MvccError::Storage(format!("history row {}/{} is missing", rev.main, rev.sub)))
    }
}

impl<T: ReadableTable<[u8; REVISION_BYTES], &'static [u8]>> History for T {
    fn row(&self, rev: Revision) -> Result<Option<Row>, MvccError> {
        match self.get(rev.to_bytes())? {
            Some(guard) => decode_row(guard.value()).map(Some),
            None => Ok(None),
        }
    }
}

/// Replaces the MVCC tables written by `write` with those `read` sees (missing tables count as
/// empty): how a snapshot is built from, and installed into, a database. To install into a
/// live store, go through [`super::WriteBatch::replace_with`], which swaps the index with it.
pub fn copy_tables(read: &ReadTransaction, write: &WriteTransaction) -> Result<(), MvccError> {
    copy_table(read, write, HISTORY)?;
    copy_table(read, write, META)
}

/// Replaces `table` in `write` with its contents in `read` (empty if `read` lacks it).
pub fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &ReadTransaction,
    write: &WriteTransaction,
    table: TableDefinition<'_, K, V>,
) -> Result<(), MvccError> {
    write.delete_table(table)?;
    let mut dst = write.open_table(table)?;
    match read.open_table(table) {
        Ok(src) => {
            for entry in src.iter()? {
                let (k, v) = entry?;
                dst.insert(k.value(), v.value())?;
            }
            Ok(())
        }
        Err(TableError::TableDoesNotExist(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv() -> KeyValue {
        KeyValue {
            key: concord_proto::Bytes::from_static(b"foo"),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: concord_proto::Bytes::from_static(b"bar"),
            lease: 7,
        }
    }

    #[test]
    fn row_round_trip() {
        for tombstone in [false, true] {
            let bytes = encode_row(tombstone, &kv());
            assert_eq!(bytes[0], if tombstone { MARK_TOMBSTONE } else { MARK_PUT });
            let row = decode_row(&bytes).expect("decodes");
            assert_eq!(row, Row { tombstone, kv: kv() });
            let (t, meta) = decode_row_meta(&bytes).expect("decodes");
            assert_eq!(t, tombstone);
            assert_eq!(
                meta,
                RowMeta {
                    key: b"foo".to_vec(),
                    create_revision: 2,
                    version: 3
                }
            );
        }
    }

    #[test]
    fn bad_rows_are_storage_errors() {
        assert!(matches!(decode_row(&[]), Err(MvccError::Storage(_))));
        assert!(matches!(decode_row(&[9]), Err(MvccError::Storage(_))));
        assert!(matches!(decode_row(&[0, 0xff]), Err(MvccError::Storage(_))));
    }
}

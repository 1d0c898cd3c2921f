//! The MVCC store's error type, with etcd's client-visible messages.

use concord_proto::rpctypes::{self, RpcError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything the MVCC store can fail with.
///
/// The `Display` texts are etcd's own, from [`rpctypes`], because clients match on them. Every variant except [`MvccError::Storage`] is the client's fault and leaves the
/// store unchanged. It is serde-serializable so that an apply result can carry it.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MvccError {
    /// The requested revision is older than the compacted revision.
    #[error("{}", rpctypes::COMPACTED.text())]
    Compacted,
    /// The requested revision is newer than the store's current revision.
    #[error("{}", rpctypes::FUTURE_REV.text())]
    FutureRev,
    /// A request carried an empty key.
    #[error("{}", rpctypes::EMPTY_KEY.text())]
    EmptyKey,
    /// `ignore_value` / `ignore_lease` was set on a key that does not exist.
    #[error("{}", rpctypes::KEY_NOT_FOUND.text())]
    KeyNotFound,
    /// `ignore_value` was set together with a non-empty value.
    #[error("{}", rpctypes::VALUE_PROVIDED.text())]
    ValueProvided,
    /// `ignore_lease` was set together with a non-zero lease.
    #[error("{}", rpctypes::LEASE_PROVIDED.text())]
    LeaseProvided,
    /// A txn writes the same key twice (or puts a key it also deletes) in one branch.
    #[error("{}", rpctypes::DUPLICATE_KEY.text())]
    DuplicateKey,
    /// A range request carried an unknown sort order or sort target.
    #[error("{}", rpctypes::INVALID_SORT_OPTION.text())]
    InvalidSortOption,
    /// A put names a lease that does not exist, or a lease request names a missing lease.
    #[error("{}", rpctypes::LEASE_NOT_FOUND.text())]
    LeaseNotFound,
    /// A lease grant chose an ID that is already in use.
    #[error("{}", rpctypes::LEASE_EXISTS.text())]
    LeaseExists,
    /// A raised NOSPACE alarm refuses writes that add data.
    #[error("{}", rpctypes::NO_SPACE.text())]
    NoSpace,
    /// A raised CORRUPT alarm refuses writes.
    #[error("{}", rpctypes::CORRUPT.text())]
    Corrupt,
    /// The auth store refused the command (it changed nothing).
    #[error(transparent)]
    Auth(crate::auth::AuthError),
    /// The database failed, or its contents could not be decoded.
    #[error("etcdserver: storage error: {0}")]
    Storage(String),
}

impl MvccError {
    /// True when the request was at fault (the store is unchanged); false for storage failures.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, MvccError::Storage(_))
    }

    /// The etcd error this is (its code and text); `None` for a storage failure.
    pub fn etcd(&self) -> Option<RpcError> {
        Some(match self {
            MvccError::Compacted => rpctypes::COMPACTED,
            MvccError::FutureRev => rpctypes::FUTURE_REV,
            MvccError::EmptyKey => rpctypes::EMPTY_KEY,
            MvccError::KeyNotFound => rpctypes::KEY_NOT_FOUND,
            MvccError::ValueProvided => rpctypes::VALUE_PROVIDED,
            MvccError::LeaseProvided => rpctypes::LEASE_PROVIDED,
            MvccError::DuplicateKey => rpctypes::DUPLICATE_KEY,
            MvccError::InvalidSortOption => rpctypes::INVALID_SORT_OPTION,
            MvccError::LeaseNotFound => rpctypes::LEASE_NOT_FOUND,
            MvccError::LeaseExists => rpctypes::LEASE_EXISTS,
            MvccError::NoSpace => rpctypes::NO_SPACE,
            MvccError::Corrupt => rpctypes::CORRUPT,
            MvccError::Auth(err) => err.etcd(),
            MvccError::Storage(_) => return None,
        })
    }
}

macro_rules! storage_from {
    ($($ty:ty),* $(,)?) => {
        $(
            impl From<$ty> for MvccError {
                fn from(err: $ty) -> Self {
                    MvccError::Storage(err.to_string())
                }
            }
        )*
    };
}

storage_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError,
    prost::DecodeError,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_etcd() {
        let cases = [
            (
                MvccError::Compacted,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                MvccError::FutureRev,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (MvccError::EmptyKey, "etcdserver: key is not provided"),
            (MvccError::KeyNotFound, "etcdserver: key not found"),
            (MvccError::ValueProvided, "etcdserver: value is provided"),
            (MvccError::LeaseProvided, "etcdserver: lease is provided"),
            (
                MvccError::DuplicateKey,
                "etcdserver: duplicate key given in txn request",
            ),
            (MvccError::InvalidSortOption, "etcdserver: invalid sort option"),
            (MvccError::LeaseNotFound, "etcdserver: requested lease not found"),
            (MvccError::LeaseExists, "etcdserver: lease already exists"),
            (
                MvccError::Storage("disk on fire".into()),
                "etcdserver: storage error: disk on fire",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
            assert_eq!(err.is_client_error(), !matches!(err, MvccError::Storage(_)));
        }
    }

    #[test]
    fn redb_errors_become_storage() {
        let err: MvccError = redb::StorageError::Corrupted("bad page".into()).into();
        assert!(matches!(&err, MvccError::Storage(s) if s.contains("bad page")));
        assert!(!err.is_client_error());
    }
}

//! The client's one error type.

/// What can go wrong in a client call.
///
/// A gRPC status from the server (or from the transport) is kept whole in [`Error::Status`],
/// code and message, so callers can match on etcd's texts (`etcdserver: requested lease not
/// found`, `etcdserver: mvcc: required revision has been compacted`, ...). A recipe's status
/// becomes [`Error::Status`] too, never [`Error::Recipe`], so there is one place to look.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused or failed the request, or no endpoint could be reached
    /// (`UNAVAILABLE`), or it did not answer in time (`DEADLINE_EXCEEDED`).
    #[error("{}", .0.message())]
    Status(tonic::Status),
    /// A coordination recipe failed for a reason of its own (the session expired, not the
    /// leader, a watch ended, ...).
    #[error(transparent)]
    Recipe(concord_recipes::Error),
    /// [`Client::connect`](crate::Client::connect) got no endpoints.
    #[error("no endpoints given")]
    NoEndpoints,
    /// An endpoint is not a URL the client can dial.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An argument cannot be used (an empty service name, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A value could not be encoded as JSON.
    #[error("encoding the value of {key}: {source}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// A stored value could not be decoded (an instance's metadata that is not JSON, say). A
    /// config version that does not decode is no error: [`LiveConfig`](crate::LiveConfig)
    /// keeps the last good one and reports it as a [`Rejection`](crate::Rejection).
    #[error("decoding {key} at version {version}: {source}")]
    Decode {
        /// What was decoded.
        key: String,
        /// Its revision.
        version: i64,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// A compare-and-swap found another version than the one expected.
    #[error("{key} is at version {current}, not {expected}")]
    VersionMismatch {
        /// The key written to.
        key: String,
        /// The version the write expected (0: the key must not exist).
        expected: i64,
        /// The version found (0: the key does not exist).
        current: i64,
    },
}

/// What kind of error an [`Error`] is, from the shared error vocabulary
/// ([`concord_proto::rpctypes`]): match on this instead of on texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The revision asked for was compacted away (`etcdserver: mvcc: required revision has been
    /// compacted`); start again from a newer one.
    Compacted {
        /// The oldest revision still kept, when the server said (a watch does; 0 otherwise).
        compact_revision: i64,
    },
    /// The lease does not exist (expired or revoked).
    LeaseNotFound,
    /// A session's lease is gone: whatever it held is gone too.
    SessionExpired,
    /// The member answering is not (or no longer) the leader, or an election's campaigner no
    /// longer leads.
    NotLeader,
    /// The cluster has no leader now, or an election nobody leads.
    NoLeader,
    /// The caller may not do this.
    PermissionDenied,
    /// No member could be reached, or it could not serve.
    Unavailable,
    /// The request took too long.
    Timeout,
    /// The request cannot be served as asked (bad input); retrying the same will fail again.
    InvalidArgument,
    /// What the request names does not exist (a config key, a version no longer kept, ...).
    NotFound,
    /// A compare-and-set lost, or a precondition does not hold.
    Conflict,
    /// A revision or version outside what is kept (below a topic's retention, ...).
    OutOfRange,
    /// Anything else.
    Other,
}

impl Error {
    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        use concord_proto::rpctypes;
        use tonic::Code;
        match self {
            Error::Recipe(concord_recipes::Error::SessionExpired) => ErrorKind::SessionExpired,
            Error::Recipe(concord_recipes::Error::NotLeader) => ErrorKind::NotLeader,
            Error::Recipe(concord_recipes::Error::NoLeader) => ErrorKind::NoLeader,
            Error::Recipe(concord_recipes::Error::WatchEnded(_)) => ErrorKind::Unavailable,
            Error::Recipe(concord_recipes::Error::InvalidArgument(_)) | Error::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
            Error::Recipe(concord_recipes::Error::OutOfRange(_)) => ErrorKind::OutOfRange,
            Error::Recipe(concord_recipes::Error::NotFound(_)) => ErrorKind::NotFound,
            Error::Recipe(
                concord_recipes::Error::Conflict(_)
                | concord_recipes::Error::Locked
                | concord_recipes::Error::NotHeld(_),
            )
            | Error::VersionMismatch { .. } => ErrorKind::Conflict,
            Error::Status(status) | Error::Recipe(concord_recipes::Error::Store(status)) => {
                if rpctypes::is_compacted(status) {
                    let compact_revision = status
                        .metadata()
                        .get(crate::watch::COMPACT_REVISION)
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(0);
                    ErrorKind::Compacted { compact_revision }
                } else if rpctypes::is_lease_not_found(status) {
                    ErrorKind::LeaseNotFound
                } else if rpctypes::is_no_leader(status) || rpctypes::ELECTION_NO_LEADER.is(status) {
                    ErrorKind::NoLeader
                } else if rpctypes::NOT_LEADER.is(status) || rpctypes::ELECTION_NOT_LEADER.is(status) {
                    ErrorKind::NotLeader
                } else if rpctypes::is_timeout(status) {
                    ErrorKind::Timeout
                } else {
                    match status.code() {
                        Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
                        Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorKind::Unavailable,
                        Code::DeadlineExceeded => ErrorKind::Timeout,
                        Code::InvalidArgument => ErrorKind::InvalidArgument,
                        Code::NotFound => ErrorKind::NotFound,
                        Code::FailedPrecondition => ErrorKind::Conflict,
                        Code::OutOfRange => ErrorKind::OutOfRange,
                        _ => ErrorKind::Other,
                    }
                }
            }
            Error::NoEndpoints | Error::InvalidEndpoint { .. } => ErrorKind::InvalidArgument,
            Error::Encode { .. } | Error::Decode { .. } => ErrorKind::InvalidArgument,
        }
    }

    /// Whether the same request may succeed if tried again later (the cluster was unreachable,
    /// had no leader, timed out); false for answers that will not change (bad input, not
    /// found, compacted, a lost compare-and-set, permission denied, a lost session).
    pub fn is_retryable(&self) -> bool {
        use concord_proto::rpctypes;
        use tonic::Code;
        match self {
            Error::Status(status) | Error::Recipe(concord_recipes::Error::Store(status)) => {
                rpctypes::is_no_leader(status)
                    || rpctypes::NOT_LEADER.is(status)
                    || rpctypes::is_timeout(status)
                    || matches!(
                        status.code(),
                        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
                    )
            }
            Error::Recipe(concord_recipes::Error::WatchEnded(_)) => true,
            _ => false,
        }
    }

    /// The gRPC code of a [`Status`](Error::Status) error or of a store error inside a recipe
    /// error, else the code a service would answer a recipe error with (see
    /// [`concord_recipes::Error::to_status`]); `None` for the client's own errors.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) | Error::Recipe(concord_recipes::Error::Store(status)) => {
                Some(status.code())
            }
            Error::Recipe(err) => Some(err.to_status().code()),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

impl From<concord_recipes::Error> for Error {
    fn from(err: concord_recipes::Error) -> Self {
        match err {
            concord_recipes::Error::Store(status) => Error::Status(status),
            other => Error::Recipe(other),
        }
    }
}

/// Results of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_shared_vocabulary() {
        use concord_proto::rpctypes;
        let status = |e: rpctypes::RpcError| Error::Status(e.status());
        assert_eq!(
            status(rpctypes::COMPACTED).kind(),
            ErrorKind::Compacted { compact_revision: 0 }
        );
        assert_eq!(status(rpctypes::LEASE_NOT_FOUND).kind(), ErrorKind::LeaseNotFound);
        assert_eq!(status(rpctypes::NO_LEADER).kind(), ErrorKind::NoLeader);
        assert_eq!(status(rpctypes::NOT_LEADER).kind(), ErrorKind::NotLeader);
        assert_eq!(status(rpctypes::TIMEOUT).kind(), ErrorKind::Timeout);
        assert_eq!(status(rpctypes::EMPTY_KEY).kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            Error::from(concord_recipes::Error::SessionExpired).kind(),
            ErrorKind::SessionExpired
        );
        let denied = Error::Status(tonic::Status::permission_denied("etcdserver: permission denied"));
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
        let unreachable = Error::Status(tonic::Status::unavailable("connection refused"));
        assert_eq!(unreachable.kind(), ErrorKind::Unavailable);

        assert!(unreachable.is_retryable());
        assert!(status(rpctypes::NO_LEADER).is_retryable());
        assert!(status(rpctypes::TIMEOUT).is_retryable());
        let not_leading = status(rpctypes::ELECTION_NOT_LEADER);
        assert_eq!(not_leading.kind(), ErrorKind::NotLeader);
        for final_answer in [
            status(rpctypes::COMPACTED),
            status(rpctypes::EMPTY_KEY),
            denied,
            not_leading,
        ] {
            assert!(!final_answer.is_retryable(), "{final_answer}");
        }
        // An election's "not leader" is an answer about the campaign, not the cluster.
        assert!(!Error::from(concord_recipes::Error::NotLeader).is_retryable());
    }

    #[test]
    fn a_recipe_status_is_a_status() {
        let err = Error::from(concord_recipes::Error::Store(tonic::Status::not_found(
            "etcdserver: requested lease not found",
        )));
        assert!(matches!(err, Error::Status(_)));
        assert_eq!(err.code(), Some(tonic::Code::NotFound));
        assert_eq!(err.to_string(), "etcdserver: requested lease not found");

        let err = Error::from(concord_recipes::Error::NotLeader);
        assert!(matches!(err, Error::Recipe(concord_recipes::Error::NotLeader)));
        assert_eq!(err.to_string(), "election: not leader");
    }
}

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

impl Error {
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

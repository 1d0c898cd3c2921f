//! The recipes' one error type.

use concord_proto::rpctypes;

/// What can go wrong in a recipe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused or failed a request; the status carries etcd's code and text
    /// (`etcdserver: requested lease not found`, ...), passed on unchanged.
    #[error("{}", .0.message())]
    Store(#[from] tonic::Status),
    /// A watch ended before the recipe saw what it waited for.
    #[error("watch ended: {0}")]
    WatchEnded(String),
    /// The session's lease expired or was revoked: whatever the recipe held with it is gone.
    #[error("session expired")]
    SessionExpired,
    /// Proclaim or resign by a campaigner that no longer leads (etcd's text).
    #[error("{}", rpctypes::ELECTION_NOT_LEADER.text())]
    NotLeader,
    /// Leader asked of an election nobody leads (etcd's text).
    #[error("{}", rpctypes::ELECTION_NO_LEADER.text())]
    NoLeader,
    /// A lock or semaphore was not acquired because another holds it (`try_lock`).
    #[error("mutex: Locked by another session")]
    Locked,
    /// Unlock or release of something this handle does not hold.
    #[error("{0}")]
    NotHeld(&'static str),
    /// The caller's input cannot be used (an empty name, a zero-sized semaphore, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A revision or version outside what is kept (below a topic's retention, ...).
    #[error("{0}")]
    OutOfRange(String),
    /// Something named does not exist (a config namespace, a version no longer kept, ...).
    #[error("{0}")]
    NotFound(String),
    /// A compare-and-set lost: what the caller expected is not what is stored.
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    /// The gRPC status a service answers with for this error, as etcd's Lock and Election
    /// services answer: they pass on errors of etcd's client library, which carry etcd's text
    /// but no gRPC code, so clients see `Unknown`. Only "try again" codes stay as they are.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        match self {
            Error::Store(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                ) =>
            {
                status.clone()
            }
            Error::WatchEnded(_) => tonic::Status::unavailable(self.to_string()),
            Error::SessionExpired => tonic::Status::unknown(rpctypes::LEASE_NOT_FOUND.text()),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(self.to_string()),
            _ => tonic::Status::unknown(self.to_string()),
        }
    }

    /// Whether the store could not be reached or the stream to it broke, rather than
    /// answered: a watch that ended, or a status that says the endpoint is unreachable,
    /// unhealthy or too slow, or that was made locally from a transport error. A wait that
    /// fails so can start again (the client has moved to another endpoint by then).
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            Error::WatchEnded(_) => true,
            Error::Store(status) => {
                matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
                ) || std::error::Error::source(status).is_some()
            }
            _ => false,
        }
    }

    /// The gRPC status Concord's own services (registry, config, pub/sub) answer with: the
    /// store's status unchanged, and a code of its own for each of the recipes' errors.
    pub fn to_service_status(&self) -> tonic::Status {
        use tonic::Status;
        match self {
            Error::Store(status) => status.clone(),
            Error::WatchEnded(_) => Status::unavailable(self.to_string()),
            Error::SessionExpired => rpctypes::LEASE_NOT_FOUND.status(),
            Error::InvalidArgument(_) => Status::invalid_argument(self.to_string()),
            Error::OutOfRange(_) => Status::out_of_range(self.to_string()),
            Error::NotFound(_) => Status::not_found(self.to_string()),
            Error::Conflict(_) | Error::Locked => Status::failed_precondition(self.to_string()),
            Error::NotLeader | Error::NoLeader | Error::NotHeld(_) => {
                Status::failed_precondition(self.to_string())
            }
        }
    }
}

/// Results of recipes.
pub type Result<T, E = Error> = std::result::Result<T, E>;

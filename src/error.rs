//! The server's error type, and its one mapping to `tonic::Status` with etcd's messages.

use tonic::{Code, Status};

use crate::mvcc::MvccError;

/// etcd's `etcdserver: request is too large`.
pub const ERR_REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub use concord_proto::rpctypes::ERR_TOO_MANY_OPS;
/// etcd's `etcdserver: no leader`.
pub const ERR_NO_LEADER: &str = "etcdserver: no leader";
/// etcd's `etcdserver: request timed out`.
pub const ERR_TIMEOUT: &str = "etcdserver: request timed out";
/// etcd's `etcdserver: too large lease TTL`.
pub const ERR_LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's `etcdserver: not leader` (a lease keepalive reached a member that is not the leader).
pub const ERR_NOT_LEADER: &str = "etcdserver: not leader";
/// etcd's `etcdserver: server stopped`.
pub const ERR_STOPPED: &str = "etcdserver: server stopped";

/// Everything that can go wrong in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store rejected the request (etcd's mvcc and request errors).
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// The request is larger than `--max-request-bytes`.
    #[error("{ERR_REQUEST_TOO_LARGE}")]
    RequestTooLarge,
    /// The txn has more operations than `--max-txn-ops`.
    #[error("{ERR_TOO_MANY_OPS}")]
    TooManyOps,
    /// A lease grant asked for more than the maximum TTL.
    #[error("{ERR_LEASE_TTL_TOO_LARGE}")]
    LeaseTtlTooLarge,
    /// A leader-only request reached a follower.
    #[error("{ERR_NOT_LEADER}")]
    NotLeader,
    /// etcd's `etcdserver: member not found`.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// etcd's `etcdserver: Peer URLs already exists`.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// etcd's `etcdserver: can only promote a learner member`.
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    /// etcd's `etcdserver: can only promote a learner member which is in sync with leader`.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// etcd's `etcdserver: re-configuration failed due to not enough started members`: a new
    /// voter would leave the cluster without a quorum of started members.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// No leader is known (quorum lost, or an election is under way).
    #[error("{ERR_NO_LEADER}")]
    NoLeader,
    /// The request did not finish in time.
    #[error("{ERR_TIMEOUT}")]
    Timeout,
    /// The server is shutting down.
    #[error("{ERR_STOPPED}")]
    Stopped,
    /// A command that no client of this member can have sent (an internal command from outside,
    /// a malformed forwarded one): refused before it reaches the log.
    #[error("etcdserver: invalid request: {0}")]
    Rejected(&'static str),
    /// Raft failed in a way the client cannot fix.
    #[error("etcdserver: raft: {0}")]
    Raft(String),
    /// A listener could not be bound (the message names the address).
    #[error("{0}")]
    Listen(std::io::Error),
    /// Disk or file-system failure.
    #[error("etcdserver: storage: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Config(_) => Code::InvalidArgument,
            Error::Mvcc(e) => mvcc_code(e),
            Error::RequestTooLarge | Error::TooManyOps | Error::Rejected(_) => Code::InvalidArgument,
            Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::MemberNotFound => Code::NotFound,
            Error::PeerUrlExists
            | Error::NotLearner
            | Error::LearnerNotReady
            | Error::NotEnoughStartedMembers => Code::FailedPrecondition,
            Error::NoLeader | Error::NotLeader | Error::Stopped => Code::Unavailable,
            Error::Timeout => Code::Unavailable,
            Error::Raft(_) | Error::Io(_) | Error::Listen(_) => Code::Unavailable,
        };
        Status::new(code, err.to_string())
    }
}

/// The gRPC codes etcd uses for each store error (see etcd's `rpctypes`).
fn mvcc_code(err: &MvccError) -> Code {
    match err {
        MvccError::Compacted | MvccError::FutureRev => Code::OutOfRange,
        MvccError::KeyNotFound => Code::InvalidArgument,
        MvccError::LeaseNotFound => Code::NotFound,
        MvccError::LeaseExists => Code::FailedPrecondition,
        MvccError::Storage(_) => Code::Unavailable,
        _ => Code::InvalidArgument,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_etcds_text_and_code() {
        let status = Status::from(Error::Mvcc(MvccError::Compacted));
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let status = Status::from(Error::RequestTooLarge);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "etcdserver: request is too large");
        let status = Status::from(Error::TooManyOps);
        assert_eq!(status.message(), "etcdserver: too many operations in txn request");
        assert_eq!(Status::from(Error::NoLeader).code(), Code::Unavailable);
    }
}

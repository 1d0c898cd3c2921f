//! The server's error type, and its one mapping to `tonic::Status` with etcd's messages.

use concord_proto::rpctypes::{self, RpcError};
use tonic::{Code, Status};

use crate::mvcc::MvccError;

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
    /// The auth store refused the request (etcd's auth errors).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The request is larger than `--max-request-bytes`.
    #[error("{}", rpctypes::REQUEST_TOO_LARGE.text())]
    RequestTooLarge,
    /// The txn has more operations than `--max-txn-ops`.
    #[error("{}", rpctypes::TOO_MANY_OPS.text())]
    TooManyOps,
    /// A lease grant asked for more than the maximum TTL.
    #[error("{}", rpctypes::LEASE_TTL_TOO_LARGE.text())]
    LeaseTtlTooLarge,
    /// A leader-only request reached a follower.
    #[error("{}", rpctypes::NOT_LEADER.text())]
    NotLeader,
    /// etcd's `etcdserver: member not found`.
    #[error("{}", rpctypes::MEMBER_NOT_FOUND.text())]
    MemberNotFound,
    /// etcd's `etcdserver: Peer URLs already exists`.
    #[error("{}", rpctypes::PEER_URL_EXISTS.text())]
    PeerUrlExists,
    /// etcd's `etcdserver: can only promote a learner member`.
    #[error("{}", rpctypes::MEMBER_NOT_LEARNER.text())]
    NotLearner,
    /// etcd's `etcdserver: can only promote a learner member which is in sync with leader`.
    #[error("{}", rpctypes::LEARNER_NOT_READY.text())]
    LearnerNotReady,
    /// etcd's `etcdserver: re-configuration failed due to not enough started members`: a new
    /// voter would leave the cluster without a quorum of started members.
    #[error("{}", rpctypes::NOT_ENOUGH_STARTED_MEMBERS.text())]
    NotEnoughStartedMembers,
    /// No leader is known (quorum lost, or an election is under way).
    #[error("{}", rpctypes::NO_LEADER.text())]
    NoLeader,
    /// The request did not finish in time.
    #[error("{}", rpctypes::TIMEOUT.text())]
    Timeout,
    /// The leader changed while the write was in its log: it may still take effect, so it is
    /// not asked again (etcd's `etcdserver: leader changed`).
    #[error("{}", rpctypes::LEADER_CHANGED.text())]
    LeaderChanged,
    /// The server is shutting down.
    #[error("{}", rpctypes::STOPPED.text())]
    Stopped,
    /// The leader refused a request this member handed it, with one of etcd's errors: the
    /// client gets it as the leader gave it.
    #[error("{message}")]
    Refused {
        /// The gRPC code.
        code: Code,
        /// etcd's text.
        message: String,
    },
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

impl Error {
    /// The etcd error this is, if it is one of etcd's (its code and text).
    fn etcd(&self) -> Option<RpcError> {
        Some(match self {
            Error::Mvcc(e) => return e.etcd(),
            Error::Auth(e) => e.etcd(),
            Error::RequestTooLarge => rpctypes::REQUEST_TOO_LARGE,
            Error::TooManyOps => rpctypes::TOO_MANY_OPS,
            Error::LeaseTtlTooLarge => rpctypes::LEASE_TTL_TOO_LARGE,
            Error::NotLeader => rpctypes::NOT_LEADER,
            Error::MemberNotFound => rpctypes::MEMBER_NOT_FOUND,
            Error::PeerUrlExists => rpctypes::PEER_URL_EXISTS,
            Error::NotLearner => rpctypes::MEMBER_NOT_LEARNER,
            Error::LearnerNotReady => rpctypes::LEARNER_NOT_READY,
            Error::NotEnoughStartedMembers => rpctypes::NOT_ENOUGH_STARTED_MEMBERS,
            Error::NoLeader => rpctypes::NO_LEADER,
            Error::Timeout => rpctypes::TIMEOUT,
            Error::LeaderChanged => rpctypes::LEADER_CHANGED,
            Error::Stopped => rpctypes::STOPPED,
            _ => return None,
        })
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        if let Some(etcd) = err.etcd() {
            return etcd.status();
        }
        if let Error::Refused { code, message } = err {
            return Status::new(code, message);
        }
        let code = match &err {
            Error::Config(_) | Error::Rejected(_) => Code::InvalidArgument,
            _ => Code::Unavailable,
        };
        Status::new(code, err.to_string())
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

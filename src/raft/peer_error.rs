//! Why the member a follower asked (the leader, it thought) did not do what it was asked: one
//! type on both ends of the peer link, carried as the `PeerError` message, so neither end
//! matches on error texts.

use concord_proto::raftpb::{self, peer_error::Reason};
use openraft::errors::{ClientWriteError, ForwardToLeader, RaftError};
use tonic::{Code, Status};

use super::TypeConfig;
use crate::error::Error;

/// Why a request handed to another member failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The member could not be reached: the request was never sent.
    Unreachable(String),
    /// The member does not lead (any more): ask the leader again.
    NotLeader,
    /// No member is known to lead: ask again after a pause.
    NoLeader,
    /// The leader took the request but did not finish it in time.
    Timeout,
    /// The leader refused the request with one of etcd's errors, for the client as it is.
    Refused {
        /// The gRPC code.
        code: Code,
        /// etcd's text.
        message: String,
    },
    /// Raft or the transport failed in a way the caller cannot fix.
    Failed(String),
}

impl PeerError {
    /// What a failed call to another member means: a connection that could not be made sent
    /// nothing; anything else may have reached it.
    pub fn from_call(status: &Status) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
        while let Some(err) = source {
            if err.is::<tonic::ConnectError>() {
                return PeerError::Unreachable(status.message().to_string());
            }
            source = err.source();
        }
        PeerError::Failed(status.message().to_string())
    }

    /// Why Raft refused a request here: this member does not lead, or Raft failed.
    pub fn from_raft(forward: Option<&ForwardToLeader<TypeConfig>>, err: &impl std::fmt::Display) -> Self {
        match forward {
            Some(forward) if forward.leader_id.is_some() => PeerError::NotLeader,
            Some(_) => PeerError::NoLeader,
            None => PeerError::Failed(err.to_string()),
        }
    }

    /// Whether the request can have taken effect (false: it was refused before any log took
    /// it, or never sent, so asking again is safe).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PeerError::Unreachable(_) | PeerError::NotLeader | PeerError::NoLeader
        )
    }

    /// The message on the wire.
    pub fn to_proto(&self) -> raftpb::PeerError {
        let (reason, code, message) = match self {
            PeerError::NotLeader => (Reason::NotLeader, Code::Ok, String::new()),
            PeerError::NoLeader => (Reason::NoLeader, Code::Ok, String::new()),
            PeerError::Timeout => (Reason::Timeout, Code::Ok, String::new()),
            PeerError::Refused { code, message } => (Reason::Refused, *code, message.clone()),
            // Unreachable only ever arises on the caller's side.
            PeerError::Unreachable(message) | PeerError::Failed(message) => {
                (Reason::Failed, Code::Ok, message.clone())
            }
        };
        raftpb::PeerError {
            reason: reason as i32,
            code: code as i32,
            message,
        }
    }

    /// The error a `PeerError` message carries.
    pub fn from_proto(message: raftpb::PeerError) -> Self {
        match Reason::try_from(message.reason) {
            Ok(Reason::NotLeader) => PeerError::NotLeader,
            Ok(Reason::NoLeader) => PeerError::NoLeader,
            Ok(Reason::Timeout) => PeerError::Timeout,
            Ok(Reason::Refused) => PeerError::Refused {
                code: Code::from_i32(message.code),
                message: message.message,
            },
            Ok(Reason::Failed) | Err(_) => PeerError::Failed(message.message),
        }
    }
}

/// What a write Raft did not take means, in place of openraft's `forward_to_leader()`, which
/// names a leader for two different cases: `Ok(Some(forward))` when Raft refused the write
/// before its log took it (ask the leader `forward` names, or wait for one; `Ok(None)` for any
/// other refusal), and `Err(LeaderChanged)` when the write's entry was in the log as leadership
/// moved (openraft's `LogEntryDiscarded`): it may still commit through the next leader, so
/// asking again could apply it twice.
pub fn write_refused(
    err: &RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> Result<Option<&ForwardToLeader<TypeConfig>>, Error> {
    match err {
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => Err(Error::LeaderChanged),
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => Ok(Some(forward)),
        _ => Ok(None),
    }
}

/// The leader's own error, as it goes back to the follower that asked.
impl From<Error> for PeerError {
    fn from(err: Error) -> Self {
        match err {
            Error::NotLeader => PeerError::NotLeader,
            Error::NoLeader => PeerError::NoLeader,
            Error::Timeout => PeerError::Timeout,
            Error::Raft(message) => PeerError::Failed(message),
            other => {
                let status = Status::from(other);
                PeerError::Refused {
                    code: status.code(),
                    message: status.message().to_string(),
                }
            }
        }
    }
}

/// The error the follower's client gets.
impl From<PeerError> for Error {
    fn from(err: PeerError) -> Self {
        match err {
            PeerError::NotLeader | PeerError::NoLeader => Error::NoLeader,
            PeerError::Timeout => Error::Timeout,
            PeerError::Refused { code, message } => Error::Refused { code, message },
            PeerError::Unreachable(message) | PeerError::Failed(message) => {
                Error::Raft(format!("forwarding to the leader: {message}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use concord_proto::rpctypes;

    use super::*;

    #[test]
    fn a_discarded_entry_is_not_a_refusal_to_ask_again() {
        let forward = ForwardToLeader::<TypeConfig>::empty();
        let discarded = RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward.clone()));
        let refused = RaftError::APIError(ClientWriteError::ForwardToLeader(forward));
        assert!(matches!(write_refused(&discarded), Err(Error::LeaderChanged)));
        assert!(matches!(write_refused(&refused), Ok(Some(_))));
        // What openraft's own accessor would have let through as "ask the leader again".
        assert!(discarded.forward_to_leader().is_some());
        let answer = PeerError::from(Error::LeaderChanged);
        assert!(!answer.is_retryable(), "{answer:?}");
    }
    use crate::mvcc::MvccError;

    #[test]
    fn errors_cross_the_link_as_they_are() {
        for err in [
            PeerError::NotLeader,
            PeerError::NoLeader,
            PeerError::Timeout,
            PeerError::Refused {
                code: Code::FailedPrecondition,
                message: rpctypes::PEER_URL_EXISTS.text().to_string(),
            },
            PeerError::Failed("disk on fire".into()),
        ] {
            assert_eq!(PeerError::from_proto(err.to_proto()), err);
        }
    }

    #[test]
    fn the_client_gets_the_leaders_etcd_error() {
        let refused = PeerError::from(Error::TooManyOps);
        let status = Status::from(Error::from(refused));
        assert_eq!(status.code(), rpctypes::TOO_MANY_OPS.code());
        assert!(rpctypes::TOO_MANY_OPS.is(&status));
        let store = Status::from(Error::from(PeerError::from(Error::Mvcc(MvccError::EmptyKey))));
        assert!(rpctypes::EMPTY_KEY.is(&store));
        assert!(matches!(Error::from(PeerError::NotLeader), Error::NoLeader));
        assert!(PeerError::Unreachable("refused".into()).is_retryable());
        assert!(!PeerError::Timeout.is_retryable());
    }
}

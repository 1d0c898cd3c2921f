//! The replicated command and the state machine's answer to it.
//!
//! A [`Command`] wraps Concord's protobuf `concordraftpb.Command`, so the log format is defined
//! by a `.proto` file and stays stable across openraft versions. openraft wants its application
//! data to be serde-serialisable; both types serialise as their protobuf bytes.

use std::fmt;

use concord_proto::raftpb::{self, forward_response::Outcome, store_error::Kind};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::peer_error::PeerError;
use crate::auth::AuthError;
use crate::mvcc::MvccError;

/// One replicated state change: every write request becomes exactly one `Command`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Command(pub raftpb::Command);

impl From<raftpb::command::Request> for Command {
    fn from(request: raftpb::command::Request) -> Self {
        Self(raftpb::Command {
            request: Some(request),
            auth_revision: 0,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use raftpb::command::Request;
        match &self.0.request {
            Some(Request::Put(_)) => write!(f, "put"),
            Some(Request::DeleteRange(_)) => write!(f, "delete_range"),
            Some(Request::Txn(_)) => write!(f, "txn"),
            Some(Request::Compaction(c)) => write!(f, "compaction({})", c.revision),
            Some(Request::LeaseGrant(g)) => write!(f, "lease_grant({:016x})", g.id),
            Some(Request::LeaseRevoke(r)) => write!(f, "lease_revoke({:016x})", r.id),
            Some(Request::LeaseCheckpoints(c)) => write!(f, "lease_checkpoints({})", c.checkpoints.len()),
            Some(Request::LeaseExpiry(e)) => write!(f, "lease_expiry({})", e.ids.len()),
            Some(Request::Auth(_)) => write!(f, "auth"),
            Some(Request::Alarm(a)) => write!(f, "alarm({}, {})", a.alarm, a.activate),
            None => write!(f, "empty"),
        }
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(deserializer)?;
        raftpb::Command::decode(bytes.as_slice())
            .map(Command)
            .map_err(serde::de::Error::custom)
    }
}

/// What applying one log entry produced.
///
/// Blank and membership entries produce [`CommandResult::Empty`]; a command produces its
/// response, or the etcd error it failed with (failing commands change nothing).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CommandResult {
    /// The entry carried no command.
    #[default]
    Empty,
    /// The command was applied.
    Applied(raftpb::CommandResponse),
    /// The command was rejected by the store; nothing changed.
    Rejected(MvccError),
}

impl CommandResult {
    /// How the leader answers a follower's `Forward` with this result.
    pub fn to_forward(&self) -> Outcome {
        match self {
            CommandResult::Empty => Outcome::Empty(true),
            CommandResult::Applied(response) => Outcome::Applied(response.clone()),
            CommandResult::Rejected(err) => Outcome::Rejected(store_error(err)),
        }
    }

    /// What a leader's answer to `Forward` says: the result, or why there is none.
    pub fn from_forward(outcome: Option<Outcome>) -> Result<CommandResult, PeerError> {
        match outcome {
            Some(Outcome::Applied(response)) => Ok(CommandResult::Applied(response)),
            Some(Outcome::Empty(_)) => Ok(CommandResult::Empty),
            Some(Outcome::Rejected(err)) => Ok(CommandResult::Rejected(mvcc_error(err))),
            Some(Outcome::Failed(err)) => Err(PeerError::from_proto(err)),
            None => Err(PeerError::Failed("the leader answered nothing".into())),
        }
    }
}

fn store_error(err: &MvccError) -> raftpb::StoreError {
    let (kind, detail) = match err {
        MvccError::Compacted => (Kind::Compacted, String::new()),
        MvccError::FutureRev => (Kind::FutureRev, String::new()),
        MvccError::EmptyKey => (Kind::EmptyKey, String::new()),
        MvccError::KeyNotFound => (Kind::KeyNotFound, String::new()),
        MvccError::ValueProvided => (Kind::ValueProvided, String::new()),
        MvccError::LeaseProvided => (Kind::LeaseProvided, String::new()),
        MvccError::DuplicateKey => (Kind::DuplicateKey, String::new()),
        MvccError::InvalidSortOption => (Kind::InvalidSortOption, String::new()),
        MvccError::LeaseNotFound => (Kind::LeaseNotFound, String::new()),
        MvccError::LeaseExists => (Kind::LeaseExists, String::new()),
        MvccError::NoSpace => (Kind::NoSpace, String::new()),
        MvccError::Corrupt => (Kind::Corrupt, String::new()),
        MvccError::Auth(err) => (Kind::Auth, err.name()),
        MvccError::Storage(detail) => (Kind::Storage, detail.clone()),
    };
    raftpb::StoreError {
        kind: kind as i32,
        detail,
    }
}

fn mvcc_error(err: raftpb::StoreError) -> MvccError {
    match Kind::try_from(err.kind) {
        Ok(Kind::Compacted) => MvccError::Compacted,
        Ok(Kind::FutureRev) => MvccError::FutureRev,
        Ok(Kind::EmptyKey) => MvccError::EmptyKey,
        Ok(Kind::KeyNotFound) => MvccError::KeyNotFound,
        Ok(Kind::ValueProvided) => MvccError::ValueProvided,
        Ok(Kind::LeaseProvided) => MvccError::LeaseProvided,
        Ok(Kind::DuplicateKey) => MvccError::DuplicateKey,
        Ok(Kind::InvalidSortOption) => MvccError::InvalidSortOption,
        Ok(Kind::LeaseNotFound) => MvccError::LeaseNotFound,
        Ok(Kind::LeaseExists) => MvccError::LeaseExists,
        Ok(Kind::NoSpace) => MvccError::NoSpace,
        Ok(Kind::Corrupt) => MvccError::Corrupt,
        Ok(Kind::Auth) => match AuthError::from_name(&err.detail) {
            Some(auth) => MvccError::Auth(auth),
            None => MvccError::Storage(format!("unknown auth error {:?}", err.detail)),
        },
        Ok(Kind::Storage) | Err(_) => MvccError::Storage(err.detail),
    }
}

/// serde form of [`CommandResult`], which openraft's `serde` feature requires of a response
/// type (it never leaves the member: a follower's `Forward` is answered with
/// [`CommandResult::to_forward`]): the response as protobuf bytes.
#[derive(Serialize, Deserialize)]
enum CommandResultWire {
    Empty,
    Applied(Vec<u8>),
    Rejected(MvccError),
}

impl Serialize for CommandResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            CommandResult::Empty => CommandResultWire::Empty,
            CommandResult::Applied(resp) => CommandResultWire::Applied(resp.encode_to_vec()),
            CommandResult::Rejected(err) => CommandResultWire::Rejected(err.clone()),
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CommandResult {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match CommandResultWire::deserialize(deserializer)? {
            CommandResultWire::Empty => CommandResult::Empty,
            CommandResultWire::Applied(bytes) => CommandResult::Applied(
                raftpb::CommandResponse::decode(bytes.as_slice()).map_err(serde::de::Error::custom)?,
            ),
            CommandResultWire::Rejected(err) => CommandResult::Rejected(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::etcdserverpb::PutRequest;

    #[test]
    fn command_round_trips_through_serde() {
        let cmd = Command::from(raftpb::command::Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
        let json = serde_json::to_vec(&cmd).unwrap();
        let back: Command = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, cmd);
        assert_eq!(cmd.to_string(), "put");
    }

    #[test]
    fn results_round_trip_through_a_forward_answer() {
        let rejections = [
            MvccError::Compacted,
            MvccError::FutureRev,
            MvccError::EmptyKey,
            MvccError::KeyNotFound,
            MvccError::ValueProvided,
            MvccError::LeaseProvided,
            MvccError::DuplicateKey,
            MvccError::InvalidSortOption,
            MvccError::LeaseNotFound,
            MvccError::LeaseExists,
            MvccError::Storage("disk on fire".into()),
        ];
        let results = [
            CommandResult::Empty,
            CommandResult::Applied(raftpb::CommandResponse::default()),
        ]
        .into_iter()
        .chain(rejections.into_iter().map(CommandResult::Rejected));
        for result in results {
            let answer = raftpb::ForwardResponse {
                outcome: Some(result.to_forward()),
            };
            let answer = raftpb::ForwardResponse::decode(answer.encode_to_vec().as_slice()).unwrap();
            assert_eq!(CommandResult::from_forward(answer.outcome), Ok(result));
        }
    }

    #[test]
    fn result_round_trips_through_serde() {
        for result in [
            CommandResult::Empty,
            CommandResult::Rejected(MvccError::Compacted),
            CommandResult::Applied(raftpb::CommandResponse::default()),
        ] {
            let json = serde_json::to_vec(&result).unwrap();
            let back: CommandResult = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, result);
        }
    }
}

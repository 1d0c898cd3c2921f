//! The replicated command and the state machine's answer to it.
//!
//! A [`Command`] wraps Concord's protobuf `concordraftpb.Command`, so the log format is defined
//! by a `.proto` file and stays stable across openraft versions. openraft wants its application
//! data to be serde-serialisable; both types serialise as their protobuf bytes.

use std::fmt;

use concord_proto::raftpb;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mvcc::MvccError;

/// One replicated state change: every write request becomes exactly one `Command`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Command(pub raftpb::Command);

impl From<raftpb::command::Request> for Command {
    fn from(request: raftpb::command::Request) -> Self {
        Self(raftpb::Command {
            request: Some(request),
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

/// serde form of [`CommandResult`]: the response as protobuf bytes.
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

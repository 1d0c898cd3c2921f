//! On-disk encodings of Raft state (format version [`FORMAT_VERSION`]).
//!
//! Log entries are protobuf (`concordraftpb.LogEntry`); the rare small records (vote, log ids,
//! membership) are JSON through openraft's serde impls. openraft's serde output is not promised
//! stable across its versions, so the format version is stored beside the data and checked on open.

use std::io;

use concord_proto::raftpb::{self, log_entry::Payload};
use openraft::entry::RaftEntry;
use openraft::impls::{EntryPayload, leader_id_adv::LeaderId};
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

use super::{Command, Entry, LogId};

/// Version of every encoding in this module; bump it when one changes.
pub const FORMAT_VERSION: u64 = 1;

/// Encodes a log entry for the WAL.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, io::Error> {
    let log_id = entry.log_id();
    let payload = match &entry.payload {
        EntryPayload::Blank => Payload::Blank(true),
        EntryPayload::Normal(cmd) => Payload::Normal(cmd.0.clone()),
        EntryPayload::Membership(m) => {
            Payload::MembershipJson(serde_json::to_string(m).map_err(io::Error::other)?)
        }
    };
    Ok(raftpb::LogEntry {
        term: log_id.leader_id.term,
        leader_node_id: log_id.leader_id.node_id,
        index: log_id.index,
        payload: Some(payload),
    }
    .encode_to_vec())
}

/// Decodes a log entry written by [`encode_entry`].
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, io::Error> {
    let pb = raftpb::LogEntry::decode(bytes).map_err(invalid_data)?;
    let payload = match pb.payload {
        Some(Payload::Blank(_)) => EntryPayload::Blank,
        Some(Payload::Normal(cmd)) => EntryPayload::Normal(Command(cmd)),
        Some(Payload::MembershipJson(json)) => {
            EntryPayload::Membership(serde_json::from_str(&json).map_err(invalid_data)?)
        }
        None => return Err(invalid_data("log entry without payload")),
    };
    Ok(Entry {
        log_id: log_id(pb.term, pb.leader_node_id, pb.index),
        payload,
    })
}

/// Builds a log id from its parts.
pub fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id }, index)
}

/// Encodes a small record (vote, log id, membership) as JSON.
pub fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

/// Decodes a record written by [`encode_json`].
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    serde_json::from_slice(bytes).map_err(invalid_data)
}

/// An `InvalidData` error: what was on disk is not what we wrote.
pub fn invalid_data(err: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use concord_proto::etcdserverpb::PutRequest;
    use openraft::Membership;

    use super::*;
    use crate::raft::MemberNode;

    #[test]
    fn entries_round_trip() {
        let put = Command::from(raftpb::command::Request::Put(PutRequest {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        }));
        let members = BTreeMap::from([(7u64, MemberNode::default())]);
        let membership = Membership::new(vec![BTreeSet::from([7u64])], members).unwrap();
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(put),
            EntryPayload::Membership(membership),
        ] {
            let entry = Entry {
                log_id: log_id(3, 7, 42),
                payload,
            };
            let back = decode_entry(&encode_entry(&entry).unwrap()).unwrap();
            assert_eq!(back, entry);
        }
    }

    #[test]
    fn garbage_is_invalid_data() {
        let err = decode_entry(&[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

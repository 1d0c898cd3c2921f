//! What a member decodes from the wire: log entries (the WAL's and AppendEntries' encoding),
//! peer messages (as `peer_service` and the network decode them) and client requests (through
//! the gRPC decoder the client services use).

use std::fmt::Debug;

use concord_proto::codec::GuardedCodec;
use concord_proto::etcdserverpb::{TxnRequest, TxnResponse, request_op};
use concord_proto::nesting::MAX_TXN_DEPTH;
use concord_proto::raftpb::command::Request;
use concord_proto::raftpb::{self, AppendEntriesMessage, JsonMessage, SnapshotChunk};
use openraft::Membership;
use openraft::errors::RaftError;
use openraft::impls::EntryPayload;
use openraft::raft::{
    AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse, VoteRequest,
    VoteResponse,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::codec::{Codec, CompressionEncoding, Streaming};

use super::apply::apply_and_restart;
use super::strategies::{
    any_log_id, command, entry_bytes, input, log_entry, membership, mutated, nested_txn, txn, unknown_field,
    vote,
};
use super::{admission, admitted, config};
use crate::config::Config;
use crate::raft::admission::Origin;
use crate::raft::codec::{decode_entry, encode_entry, log_id};
use crate::raft::membership::MembershipChange;
use crate::raft::{
    Command, CommandResult, Entry, LogId, MemberNode, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

/// Decodes `bytes` as a log entry; one that decodes encodes again to the same entry.
fn check_entry_bytes(bytes: &[u8]) {
    if let Ok(entry) = decode_entry(bytes) {
        let again = encode_entry(&entry).unwrap();
        assert_eq!(
            decode_entry(&again).unwrap(),
            entry,
            "a decoded entry reads back differently"
        );
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// What admission lets into the log reads back from a log entry (the WAL, AppendEntries),
    /// from openraft's serde form, and from a Forward.
    #[test]
    fn admitted_commands_round_trip(
        entries in vec(log_entry(), 1..6),
        depth in 1..=MAX_TXN_DEPTH,
    ) {
        let deepest = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Normal(Command::from(Request::Txn(nested_txn(depth)))),
        };
        for entry in entries.into_iter().chain([deepest]) {
            if let EntryPayload::Normal(command) = &entry.payload && !admitted(command) {
                continue;
            }
            let bytes = encode_entry(&entry).unwrap();
            prop_assert_eq!(&decode_entry(&bytes).unwrap(), &entry);
            if let EntryPayload::Normal(command) = &entry.payload {
                let json = serde_json::to_vec(command).unwrap();
                prop_assert_eq!(&serde_json::from_slice::<Command>(&json).unwrap(), command);
                let forwarded = raftpb::Command::decode(command.0.encode_to_vec().as_slice()).unwrap();
                prop_assert_eq!(&forwarded, &command.0);
            }
        }
    }

    #[test]
    fn log_entry_bytes_decode_or_fail(bytes in input(entry_bytes())) {
        check_entry_bytes(&bytes);
    }
}

// Peer messages: what `peer_service` decodes.

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Valid JSON of every openraft message and record a peer sends.
fn json_seed() -> BoxedStrategy<Vec<u8>> {
    type Answer<T> = Result<T, RaftError<TypeConfig>>;
    let ids = (vote(), any_log_id(), membership(), any::<u64>());
    ids.prop_flat_map(|(vote, id, membership, node)| {
        let stored = StoredMembership::new(Some(id), membership.clone());
        let meta = SnapshotMeta {
            last_log_id: Some(id),
            last_membership: stored.clone(),
        };
        let add = MembershipChange::Add {
            id: node,
            node: MemberNode::default(),
            learner: true,
        };
        let seeds = vec![
            json(&vote),
            json(&Some(id)),
            json(&None::<LogId>),
            json(&VoteRequest::<TypeConfig>::new(vote, Some(id))),
            json(&TransferLeaderRequest::<TypeConfig>::new(vote, node, Some(id))),
            json(&meta),
            json(&stored),
            json(&membership),
            json(&add),
            json(&MembershipChange::Publish(
                node,
                "n".into(),
                vec!["http://a:1".into()],
            )),
            json(&Ok::<(), String>(())),
            json(&Ok::<_, RaftError<TypeConfig>>(VoteResponse::<TypeConfig>::new(
                vote,
                Some(id),
                true,
            ))),
            json(&Ok::<_, RaftError<TypeConfig>>(
                AppendEntriesResponse::<TypeConfig>::HigherVote(vote),
            )),
            json(&Answer::<TransferLeaderResponse<TypeConfig>>::Ok(Ok(()))),
            json(&Ok::<_, String>(SnapshotResponse::<TypeConfig>::new(vote))),
            json(&CommandResult::Rejected(crate::mvcc::MvccError::Compacted)),
            json(&CommandResult::Applied(raftpb::CommandResponse::default())),
        ];
        proptest::sample::select(seeds)
    })
    .boxed()
}

/// A number in JSON replaced by an extreme one.
fn extreme_numbers(seed: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let extreme = prop_oneof![
        Just("-1"),
        Just("18446744073709551615"),
        Just("18446744073709551616"),
        Just("-9223372036854775809"),
        Just("1e999"),
        Just("0.5"),
        Just("null"),
        Just("\"1\""),
        Just("[]"),
        Just("{}"),
    ];
    (seed, any::<Index>(), extreme)
        .prop_map(|(json, at, extreme)| {
            let text = String::from_utf8(json).unwrap();
            let starts: Vec<usize> = text
                .char_indices()
                .filter(|&(i, c)| c.is_ascii_digit() && !text[..i].ends_with(|p: char| p.is_ascii_digit()))
                .map(|(i, _)| i)
                .collect();
            if starts.is_empty() {
                return text.into_bytes();
            }
            let start = starts[at.index(starts.len())];
            let end = text[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(text.len(), |n| start + n);
            format!("{}{}{}", &text[..start], extreme, &text[end..]).into_bytes()
        })
        .boxed()
}

fn json_input() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..64),
        3 => mutated(json_seed()),
        2 => extreme_numbers(json_seed()),
    ]
    .boxed()
}

fn try_json<T: DeserializeOwned + Debug>(json: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(json) {
        let _ = format!("{value:?}");
    }
}

/// Every JSON a peer's request or answer carries, decoded as peer_service and the network do.
fn decode_json_everywhere(json: &[u8]) {
    type Answer<T> = Result<T, RaftError<TypeConfig>>;
    try_json::<Vote>(json);
    try_json::<Option<LogId>>(json);
    try_json::<VoteRequest<TypeConfig>>(json);
    try_json::<TransferLeaderRequest<TypeConfig>>(json);
    try_json::<SnapshotMeta>(json);
    try_json::<MembershipChange>(json);
    try_json::<Result<(), String>>(json);
    try_json::<Answer<VoteResponse<TypeConfig>>>(json);
    try_json::<Answer<AppendEntriesResponse<TypeConfig>>>(json);
    try_json::<Answer<TransferLeaderResponse<TypeConfig>>>(json);
    try_json::<Result<SnapshotResponse<TypeConfig>, String>>(json);
    try_json::<CommandResult>(json);
    try_json::<Command>(json);
    if let Ok(membership) = serde_json::from_slice::<Membership<u64, MemberNode>>(json) {
        let _ = format!("{membership} {membership:?}");
    }
    if let Ok(stored) = serde_json::from_slice::<StoredMembership>(json) {
        let _ = format!("{stored} {stored:?}");
    }
}

/// What `peer_service` does with an AppendEntries.
fn receive_append_entries(bytes: &[u8]) {
    let Ok(message) = AppendEntriesMessage::decode(bytes) else {
        return;
    };
    for entry in &message.entries {
        check_entry_bytes(entry);
    }
    try_json::<Vote>(&message.vote_json);
    try_json::<Option<LogId>>(&message.prev_log_id_json);
    try_json::<Option<LogId>>(&message.leader_commit_json);
}

/// What `peer_service` does with the first chunk of a snapshot.
fn receive_snapshot_chunk(bytes: &[u8]) {
    if let Ok(chunk) = SnapshotChunk::decode(bytes) {
        try_json::<Vote>(&chunk.vote_json);
        try_json::<SnapshotMeta>(&chunk.meta_json);
    }
}

/// What `peer_service` does with a forwarded command: checks it, then (on the leader) applies it.
fn receive_forward(bytes: &[u8]) {
    if let Ok(command) = raftpb::Command::decode(bytes) {
        let command = Command(command);
        if admission().check(&command.0, Origin::Peer).is_ok() {
            apply_and_restart(&[command], 1, &[]);
        }
    }
}

fn peer_message() -> BoxedStrategy<Vec<u8>> {
    let append = (vec(entry_bytes(), 0..3), json_seed(), json_seed(), json_seed()).prop_map(
        |(entries, vote_json, prev_log_id_json, leader_commit_json)| {
            AppendEntriesMessage {
                vote_json,
                prev_log_id_json,
                leader_commit_json,
                entries,
            }
            .encode_to_vec()
        },
    );
    let chunk =
        (json_seed(), json_seed(), vec(any::<u8>(), 0..64)).prop_map(|(vote_json, meta_json, data)| {
            SnapshotChunk {
                vote_json,
                meta_json,
                data,
            }
            .encode_to_vec()
        });
    let message = json_seed().prop_map(|json| JsonMessage { json }.encode_to_vec());
    let forward = command().prop_map(|command| command.0.encode_to_vec());
    input(prop_oneof![append, chunk, message, forward].boxed())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn peer_messages_decode_or_fail(bytes in peer_message()) {
        receive_append_entries(&bytes);
        receive_snapshot_chunk(&bytes);
        if let Ok(message) = JsonMessage::decode(bytes.as_slice()) {
            decode_json_everywhere(&message.json);
        }
        receive_forward(&bytes);
    }

    #[test]
    fn openraft_json_decodes_or_fails(json in json_input()) {
        decode_json_everywhere(&json);
    }
}

// Client requests: the gRPC decoder the client services use, then admission and apply.

/// The largest message the client services decode (`server::routes`).
fn max_client_message() -> usize {
    Config::default().max_request_bytes + 512 * 1024
}

/// Feeds an HTTP/2 request body to the server's decoder for `Txn` and returns what it yields.
fn decode_txn_body(body: Vec<u8>) -> Vec<Result<TxnRequest, tonic::Status>> {
    let decoder = GuardedCodec::<TxnResponse, TxnRequest>::default().decoder();
    let body = axum::body::Body::from(body);
    let mut stream = Streaming::new_request(
        decoder,
        body,
        Some(CompressionEncoding::Gzip),
        Some(max_client_message()),
    );
    let mut out = Vec::new();
    // A body holds at most a few frames here; a unary call reads the first.
    for _ in 0..4 {
        match futures::executor::block_on(stream.message()) {
            Ok(Some(txn)) => out.push(Ok(txn)),
            Ok(None) => break,
            Err(status) => {
                out.push(Err(status));
                break;
            }
        }
    }
    out
}

/// A gRPC frame: not compressed (flag 0) or compressed (1), then the length.
fn frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The txn's nesting depth, counted on the decoded message.
fn depth(txn: &TxnRequest) -> usize {
    1 + txn
        .success
        .iter()
        .chain(&txn.failure)
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestTxn(t)) => Some(depth(t)),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// A txn `depth` deep with an unknown field inserted at the start of one level.
fn deep_txn_with_unknown_field() -> BoxedStrategy<Vec<u8>> {
    (1usize..60, any::<Index>(), unknown_field())
        .prop_map(|(depth, at, field)| {
            let level = at.index(depth);
            let mut bytes = nested_txn(depth - level).encode_to_vec();
            bytes.splice(0..0, field);
            for _ in 0..level {
                // RequestOp { request_txn: 4 } inside TxnRequest { success: 2 }.
                let op = [vec![0x22], varint(bytes.len()), bytes].concat();
                bytes = [vec![0x12], varint(op.len()), op].concat();
            }
            bytes
        })
        .boxed()
}

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn txn_payload() -> BoxedStrategy<Vec<u8>> {
    let valid = txn().prop_map(|txn| txn.encode_to_vec()).boxed();
    let deep = (1usize..80)
        .prop_map(|depth| nested_txn(depth).encode_to_vec())
        .boxed();
    prop_oneof![
        4 => input(valid),
        1 => mutated(deep),
        1 => deep_txn_with_unknown_field(),
    ]
    .boxed()
}

fn txn_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => txn_payload().prop_map(|payload| frame(false, &payload)),
        1 => vec(any::<u8>(), 0..64).prop_map(|payload| frame(true, &payload)),
        1 => mutated(txn_payload().prop_map(|payload| frame(false, &payload)).boxed()),
        1 => vec(any::<u8>(), 0..64),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(256))]

    /// A Txn request's body: decoded or refused; what decodes and passes admission reads back
    /// from a log entry, applies, and survives a restart.
    #[test]
    fn client_txns_decode_or_fail_then_apply(body in txn_body()) {
        for txn in decode_txn_body(body).into_iter().flatten() {
            let command = Command::from(Request::Txn(txn));
            if admission().check(&command.0, Origin::Client).is_err() {
                continue;
            }
            let entry = Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Normal(command.clone()),
            };
            prop_assert_eq!(decode_entry(&encode_entry(&entry).unwrap()).unwrap(), entry);
            apply_and_restart(&[command], 1, &[]);
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The guard's promise (`concord_proto::codec`): a txn nested deeper than
    /// `MAX_TXN_DEPTH` is refused before prost decodes it.
    #[test]
    fn the_decoder_refuses_txns_nested_too_deep(payload in deep_txn_with_unknown_field()) {
        for txn in decode_txn_body(frame(false, &payload)).into_iter().flatten() {
            let depth = depth(&txn);
            prop_assert!(depth <= MAX_TXN_DEPTH, "a txn {} deep passed the guard", depth);
        }
    }
}

/// The smallest case of the property above, once a bug: an empty group of an unknown field
/// ended `txn_depth`'s scan while prost skips it and decodes the 33 levels after it.
#[test]
fn an_unknown_group_does_not_hide_the_nesting_from_the_guard() {
    // An empty group of field 15 (start and end tags), then 33 levels.
    let payload = [vec![0x7b, 0x7c], nested_txn(MAX_TXN_DEPTH + 1).encode_to_vec()].concat();
    let decoded = decode_txn_body(frame(false, &payload));
    assert!(
        decoded.iter().all(Result::is_err),
        "decoded a txn {} deep",
        decoded[0].as_ref().map_or(0, depth)
    );
}

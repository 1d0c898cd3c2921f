//! Strategies: hostile values of every field a command carries, log entries, and mutations of
//! valid encodings.

use std::collections::{BTreeMap, BTreeSet};

use concord_proto::etcdserverpb::compare::TargetUnion;
use concord_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, request_op,
};
use concord_proto::raftpb::command::Request;
use concord_proto::raftpb::{self, LeaseCheckpoint, LeaseCheckpoints, LeaseExpiry};
use openraft::Membership;
use openraft::impls::EntryPayload;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::admitted;
use crate::lease::MAX_TTL_SECS;
use crate::raft::codec::{encode_entry, log_id};
use crate::raft::{Command, Entry, LogId, MemberNode, Vote};

/// Keys: mostly a few short ones (so commands meet), and the odd ones.
pub(super) fn key() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        10 => vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 1..3),
        1 => Just(Vec::new()),
        1 => Just(vec![0]),
        1 => Just(vec![0xff, 0xff]),
        1 => vec(any::<u8>(), 0..24),
        1 => vec(any::<u8>(), 256..1024),
    ]
    .boxed()
}

/// A range end: none (one key), "\0" (every key from `key`), or any key (also below `key`).
pub(super) fn range_end() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![4 => Just(Vec::new()), 2 => Just(vec![0]), 3 => key()].boxed()
}

pub(super) fn value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        4 => vec(any::<u8>(), 0..16),
        1 => vec(any::<u8>(), 0..4096),
    ]
    .boxed()
}

/// Revisions, limits, versions: mostly small (near the store's revisions), and the extremes.
pub(super) fn number() -> BoxedStrategy<i64> {
    prop_oneof![
        8 => -2i64..24,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => any::<i64>(),
    ]
    .boxed()
}

pub(super) fn lease_id() -> BoxedStrategy<i64> {
    prop_oneof![
        8 => 1i64..4,
        1 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => any::<i64>(),
    ]
    .boxed()
}

pub(super) fn ttl() -> BoxedStrategy<i64> {
    prop_oneof![
        6 => 1i64..100,
        1 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(MAX_TTL_SECS),
        1 => Just(MAX_TTL_SECS + 1),
        1 => any::<i64>(),
    ]
    .boxed()
}

pub(super) fn remaining_ms() -> BoxedStrategy<i64> {
    prop_oneof![
        6 => 1i64..100_000,
        1 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(MAX_TTL_SECS * 1000 + 999),
        1 => Just((MAX_TTL_SECS + 1) * 1000),
        1 => any::<i64>(),
    ]
    .boxed()
}

/// An enum field: the valid values, a few past them, and any `i32`.
pub(super) fn enum_value() -> BoxedStrategy<i32> {
    prop_oneof![
        10 => 0i32..7,
        1 => Just(-1),
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
        1 => any::<i32>(),
    ]
    .boxed()
}

pub(super) fn range_request() -> BoxedStrategy<RangeRequest> {
    (
        key(),
        range_end(),
        number(),
        number(),
        enum_value(),
        enum_value(),
        any::<[bool; 3]>(),
        proptest::array::uniform4(number()),
    )
        .prop_map(
            |(key, range_end, limit, revision, sort_order, sort_target, flags, bounds)| RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                serializable: flags[0],
                keys_only: flags[1],
                count_only: flags[2],
                min_mod_revision: bounds[0],
                max_mod_revision: bounds[1],
                min_create_revision: bounds[2],
                max_create_revision: bounds[3],
            },
        )
        .boxed()
}

pub(super) fn put_request() -> BoxedStrategy<PutRequest> {
    let lease = prop_oneof![3 => Just(0i64), 2 => lease_id()];
    (key(), value(), lease, any::<[bool; 3]>())
        .prop_map(|(key, value, lease, flags)| PutRequest {
            key,
            value,
            lease,
            prev_kv: flags[0],
            ignore_value: flags[1],
            ignore_lease: flags[2],
        })
        .boxed()
}

pub(super) fn delete_request() -> BoxedStrategy<DeleteRangeRequest> {
    (key(), range_end(), any::<bool>())
        .prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        })
        .boxed()
}

pub(super) fn compare() -> BoxedStrategy<Compare> {
    let target = prop_oneof![
        number().prop_map(TargetUnion::Version),
        number().prop_map(TargetUnion::CreateRevision),
        number().prop_map(TargetUnion::ModRevision),
        value().prop_map(TargetUnion::Value),
        lease_id().prop_map(TargetUnion::Lease),
    ];
    (
        enum_value(),
        enum_value(),
        key(),
        range_end(),
        proptest::option::weighted(0.9, target),
    )
        .prop_map(|(result, target, key, range_end, target_union)| Compare {
            result,
            target,
            key,
            range_end,
            target_union,
        })
        .boxed()
}

pub(super) fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// An op that is not a txn (or has no request at all).
pub(super) fn leaf_op() -> BoxedStrategy<RequestOp> {
    prop_oneof![
        3 => range_request().prop_map(|r| op(request_op::Request::RequestRange(r))),
        4 => put_request().prop_map(|r| op(request_op::Request::RequestPut(r))),
        2 => delete_request().prop_map(|r| op(request_op::Request::RequestDeleteRange(r))),
        1 => Just(RequestOp { request: None }),
    ]
    .boxed()
}

fn txn_of(op: BoxedStrategy<RequestOp>) -> BoxedStrategy<TxnRequest> {
    (vec(compare(), 0..3), vec(op.clone(), 0..4), vec(op, 0..4))
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed()
}

/// Txns up to four levels deep.
pub(super) fn txn() -> BoxedStrategy<TxnRequest> {
    txn_of(leaf_op())
        .prop_recursive(3, 32, 4, |inner| {
            let op = prop_oneof![
                3 => leaf_op(),
                1 => inner.prop_map(|t| op(request_op::Request::RequestTxn(t))),
            ];
            txn_of(op.boxed())
        })
        .boxed()
}

pub(super) fn request() -> BoxedStrategy<Request> {
    let checkpoint =
        (lease_id(), remaining_ms(), number()).prop_map(|(id, remaining_ms, generation)| LeaseCheckpoint {
            id,
            remaining_ms,
            generation,
        });
    prop_oneof![
        4 => put_request().prop_map(Request::Put),
        2 => delete_request().prop_map(Request::DeleteRange),
        4 => txn().prop_map(Request::Txn),
        1 => (number(), any::<bool>())
            .prop_map(|(revision, physical)| Request::Compaction(CompactionRequest { revision, physical })),
        3 => (lease_id(), ttl()).prop_map(|(id, ttl)| Request::LeaseGrant(LeaseGrantRequest { ttl, id })),
        1 => lease_id().prop_map(|id| Request::LeaseRevoke(LeaseRevokeRequest { id })),
        1 => vec(checkpoint, 0..4)
            .prop_map(|checkpoints| Request::LeaseCheckpoints(LeaseCheckpoints { checkpoints })),
        1 => vec(lease_id(), 0..4).prop_map(|ids| Request::LeaseExpiry(LeaseExpiry { ids })),
    ]
    .boxed()
}

/// A command of any kind, or an empty one.
pub(super) fn command() -> BoxedStrategy<Command> {
    proptest::option::weighted(0.95, request())
        .prop_map(|request| {
            Command(raftpb::Command {
                request,
                auth_revision: 0,
            })
        })
        .boxed()
}

pub(super) fn membership() -> BoxedStrategy<Membership<u64, MemberNode>> {
    (
        proptest::collection::btree_set(1u64..6, 1..4),
        proptest::collection::btree_set(1u64..9, 0..3),
        "[a-z]{0,4}",
    )
        .prop_map(|(voters, learners, name)| {
            let nodes: BTreeMap<u64, MemberNode> = voters
                .iter()
                .chain(&learners)
                .map(|&id| {
                    let node = MemberNode {
                        name: name.clone(),
                        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
                        client_urls: Vec::new(),
                    };
                    (id, node)
                })
                .collect();
            Membership::new(vec![voters], nodes).unwrap()
        })
        .boxed()
}

pub(super) fn any_log_id() -> BoxedStrategy<LogId> {
    (any::<u64>(), any::<u64>(), any::<u64>())
        .prop_map(|(term, node, index)| log_id(term, node, index))
        .boxed()
}

pub(super) fn vote() -> BoxedStrategy<Vote> {
    (any::<u64>(), any::<u64>(), any::<bool>())
        .prop_map(|(term, node, committed)| {
            if committed {
                Vote::new_committed(term, node)
            } else {
                Vote::new(term, node)
            }
        })
        .boxed()
}

pub(super) fn log_entry() -> BoxedStrategy<Entry> {
    let payload = prop_oneof![
        1 => Just(EntryPayload::Blank),
        4 => command().prop_map(EntryPayload::Normal),
        1 => membership().prop_map(EntryPayload::Membership),
    ];
    (any_log_id(), payload)
        .prop_map(|(log_id, payload)| Entry { log_id, payload })
        .boxed()
}

/// A txn nested `depth` levels (each level in the success branch of the one above).
pub(super) fn nested_txn(depth: usize) -> TxnRequest {
    let mut txn = TxnRequest {
        success: vec![op(request_op::Request::RequestPut(PutRequest {
            key: b"leaf".to_vec(),
            ..Default::default()
        }))],
        ..Default::default()
    };
    for _ in 1..depth {
        txn = TxnRequest {
            success: vec![op(request_op::Request::RequestTxn(txn))],
            ..Default::default()
        };
    }
    txn
}

// Mutations of valid encodings.

/// One change to a byte string; positions are taken modulo its length.
#[derive(Debug, Clone)]
pub(super) enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Overwrite(Index, Vec<u8>),
    Append(Vec<u8>),
}

pub(super) fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove(at, len)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..32)).prop_map(|(at, bytes)| Mutation::Overwrite(at, bytes)),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
    .boxed()
}

pub(super) fn mutate(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = data.len();
        match mutation {
            Mutation::Flip(at, bit) if len > 0 => data[at.index(len)] ^= 1 << bit,
            Mutation::Set(at, byte) if len > 0 => data[at.index(len)] = *byte,
            Mutation::Truncate(at) => data.truncate(at.index(len + 1)),
            Mutation::Insert(at, bytes) => {
                let at = at.index(len + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(at, n) if len > 0 => {
                let at = at.index(len);
                data.drain(at..(at + n).min(len));
            }
            Mutation::Overwrite(at, bytes) if len > 0 => {
                let at = at.index(len);
                let end = (at + bytes.len()).min(len);
                data[at..end].copy_from_slice(&bytes[..end - at]);
            }
            Mutation::Append(bytes) => data.extend_from_slice(bytes),
            _ => {}
        }
    }
    data
}

/// `seed`'s bytes, mostly with a few mutations.
pub(super) fn mutated(seed: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    (seed, vec(mutation(), 0..4))
        .prop_map(|(data, mutations)| mutate(data, &mutations))
        .boxed()
}

/// Arbitrary bytes, or `seed` mutated.
pub(super) fn input(seed: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![1 => vec(any::<u8>(), 0..256), 4 => mutated(seed)].boxed()
}

/// A protobuf field of a number no message here uses, of any wire type (groups included).
pub(super) fn unknown_field() -> BoxedStrategy<Vec<u8>> {
    (0u8..6, vec(any::<u8>(), 0..9))
        .prop_map(|(wire_type, body)| {
            let tag = |wire_type: u8| (15 << 3) | wire_type;
            match wire_type {
                0 => vec![tag(0), body.first().copied().unwrap_or(0) & 0x7f],
                1 => [vec![tag(1)], body.iter().copied().chain([0; 8]).take(8).collect()].concat(),
                2 => [vec![tag(2), body.len() as u8], body].concat(),
                3 => vec![tag(3), tag(4)],
                4 => vec![tag(4)],
                _ => [vec![tag(5)], body.iter().copied().chain([0; 4]).take(4).collect()].concat(),
            }
        })
        .boxed()
}

/// Encoded log entries of every kind, and entries of txns nested up to 80 levels.
pub(super) fn entry_bytes() -> BoxedStrategy<Vec<u8>> {
    let deep = (1usize..80).prop_map(|depth| {
        let entry = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Normal(Command::from(Request::Txn(nested_txn(depth)))),
        };
        encode_entry(&entry).unwrap()
    });
    prop_oneof![
        4 => log_entry().prop_map(|entry| encode_entry(&entry).unwrap()),
        1 => deep,
    ]
    .boxed()
}

/// The strategies are not wasted on refusals: many commands pass admission, and every kind is made.
#[test]
fn strategies_make_admitted_commands() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = vec(command(), 200);
    let commands = strategy.new_tree(&mut runner).unwrap().current();
    let admitted = commands.iter().filter(|c| admitted(c)).count();
    assert!(
        admitted >= 40,
        "only {admitted} of 200 generated commands are admitted"
    );
    let kinds: BTreeSet<String> = commands
        .iter()
        .map(|c| c.to_string().split('(').next().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 9, "{kinds:?}");
}

use concord_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse, request_op,
    response_op,
};
use concord_proto::nesting::MAX_TXN_DEPTH;
use concord_proto::raftpb::{self, AppendEntriesMessage, LeaseCheckpoints, LeaseExpiry, command_response};
use openraft::impls::EntryPayload;
use prost::Message;

use super::*;
use crate::mvcc::MvccError;
use crate::mvcc::test_util::{self, ANY_LEASE};
use crate::raft::codec::{decode_entry, encode_entry, log_id};
use crate::raft::{Command as RaftCommand, CommandResult, Entry};

fn admission(max_txn_ops: usize) -> Admission {
    Admission {
        max_request_bytes: 1536 * 1024,
        max_txn_ops,
    }
}

fn command(request: Request) -> Command {
    Command {
        request: Some(request),
        auth_revision: 0,
    }
}

fn put(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn txn_op(txn: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(txn)),
    }
}

/// `depth` levels; each level puts its own key, reads it back and holds the next level, and
/// the innermost level reads every key.
fn nested(depth: usize) -> TxnRequest {
    let mut txn = TxnRequest {
        success: vec![get("\0")],
        ..Default::default()
    };
    if let Some(request_op::Request::RequestRange(range)) = &mut txn.success[0].request {
        range.range_end = b"\0".to_vec();
    }
    for level in (1..depth).rev() {
        let key = format!("level-{level:02}");
        txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone().into(),
                ..Default::default()
            }],
            success: vec![put(&key), txn_op(txn)],
            failure: vec![],
        };
    }
    txn
}

fn depth_of(response: &TxnResponse) -> usize {
    1 + response
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(response_op::Response::ResponseTxn(t)) => Some(depth_of(t)),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn txns_nest_up_to_the_limit() {
    let edge = admission(128);
    let deepest = command(Request::Txn(nested(MAX_TXN_DEPTH)));
    assert!(edge.check(&deepest, Origin::Client).is_ok());
    let too_deep = command(Request::Txn(nested(MAX_TXN_DEPTH + 1)));
    assert!(matches!(
        edge.check(&too_deep, Origin::Client),
        Err(Error::TooManyOps)
    ));
    assert!(matches!(
        edge.check(&too_deep, Origin::Peer),
        Err(Error::TooManyOps)
    ));
}

#[test]
fn nested_txns_share_the_op_budget_as_in_etcd() {
    let edge = admission(128);
    let with_inner = |outer: usize, inner: usize| {
        let mut txn = TxnRequest {
            success: (0..outer - 1).map(|i| put(&format!("o{i}"))).collect(),
            ..Default::default()
        };
        txn.success.push(txn_op(TxnRequest {
            success: (0..inner).map(|i| put(&format!("i{i}"))).collect(),
            ..Default::default()
        }));
        edge.check(&command(Request::Txn(txn)), Origin::Client)
    };
    assert!(with_inner(64, 64).is_ok());
    assert!(matches!(with_inner(64, 65), Err(Error::TooManyOps)));
    assert!(matches!(with_inner(100, 40), Err(Error::TooManyOps)));
    assert!(with_inner(100, 28).is_ok());
    let wide = TxnRequest {
        failure: (0..129).map(|i| put(&format!("f{i}"))).collect(),
        ..Default::default()
    };
    assert!(matches!(
        edge.check(&command(Request::Txn(wide)), Origin::Client),
        Err(Error::TooManyOps)
    ));
}

/// Everything the edge accepts is read back by every decoder of a stored or replicated entry,
/// and its answer by every decoder of an answer.
#[test]
fn the_deepest_txn_round_trips_through_log_peer_and_answer() {
    let txn = nested(MAX_TXN_DEPTH);
    let cmd = command(Request::Txn(txn.clone()));
    admission(128).check(&cmd, Origin::Client).unwrap();

    // The WAL and AppendEntries: a LogEntry.
    let entry = Entry {
        log_id: log_id(1, 1, 7),
        payload: EntryPayload::Normal(RaftCommand(cmd.clone())),
    };
    let bytes = encode_entry(&entry).unwrap();
    assert_eq!(decode_entry(&bytes).unwrap(), entry);
    let append = AppendEntriesMessage {
        entries: vec![bytes],
        ..Default::default()
    };
    let append = AppendEntriesMessage::decode(append.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decode_entry(&append.entries[0]).unwrap(), entry);
    // Forward: a Command; openraft's serde form of it.
    assert_eq!(Command::decode(cmd.encode_to_vec().as_slice()).unwrap(), cmd);
    let json = serde_json::to_vec(&RaftCommand(cmd.clone())).unwrap();
    assert_eq!(serde_json::from_slice::<RaftCommand>(&json).unwrap().0, cmd);

    // Applied, and the answer in every form it travels in.
    let store = test_util::open();
    let (response, _) = store.batch(|b| b.txn(&txn, ANY_LEASE));
    let response = response.unwrap();
    assert_eq!(depth_of(&response), MAX_TXN_DEPTH);
    let result = CommandResult::Applied(raftpb::CommandResponse {
        response: Some(command_response::Response::Txn(response.clone())),
    });
    let json = serde_json::to_vec(&result).unwrap();
    assert_eq!(serde_json::from_slice::<CommandResult>(&json).unwrap(), result);
    let client_side = TxnResponse::decode(response.encode_to_vec().as_slice()).unwrap();
    assert_eq!(depth_of(&client_side), MAX_TXN_DEPTH);
}

#[test]
fn requests_get_the_stores_checks() {
    let edge = admission(8);
    let empty_put = command(Request::Put(PutRequest::default()));
    assert!(matches!(
        edge.check(&empty_put, Origin::Peer),
        Err(Error::Mvcc(MvccError::EmptyKey))
    ));
    let big = command(Request::Put(PutRequest {
        key: b"k".to_vec(),
        value: vec![0; 2 << 20],
        ..Default::default()
    }));
    assert!(matches!(
        edge.check(&big, Origin::Peer),
        Err(Error::RequestTooLarge)
    ));
    let many = command(Request::Txn(TxnRequest {
        success: (0..1000).map(|i| put(&format!("k{i}"))).collect(),
        ..Default::default()
    }));
    assert!(matches!(edge.check(&many, Origin::Peer), Err(Error::TooManyOps)));
    let op_without_request = command(Request::Txn(TxnRequest {
        success: vec![RequestOp { request: None }],
        ..Default::default()
    }));
    assert!(matches!(
        edge.check(&op_without_request, Origin::Client),
        Err(Error::Mvcc(MvccError::KeyNotFound))
    ));
    assert!(edge.check(&Command::default(), Origin::Peer).is_err());
}

#[test]
fn lease_commands_are_bounded() {
    let edge = admission(128);
    let grant = |id, ttl| command(Request::LeaseGrant(LeaseGrantRequest { id, ttl }));
    assert!(edge.check(&grant(5, 10), Origin::Peer).is_ok());
    assert!(edge.check(&grant(5, MAX_TTL_SECS), Origin::Peer).is_ok());
    assert!(edge.check(&grant(5, -1), Origin::Peer).is_err());
    assert!(edge.check(&grant(5, 0), Origin::Peer).is_err());
    assert!(edge.check(&grant(0, 10), Origin::Peer).is_err());
    assert!(matches!(
        edge.check(&grant(5, i64::MAX), Origin::Peer),
        Err(Error::LeaseTtlTooLarge)
    ));
    let checkpoint = |remaining_ms| {
        command(Request::LeaseCheckpoints(LeaseCheckpoints {
            checkpoints: vec![LeaseCheckpoint {
                id: 5,
                remaining_ms,
                generation: 1,
            }],
        }))
    };
    assert!(edge.check(&checkpoint(10_000), Origin::Peer).is_ok());
    assert!(edge.check(&checkpoint(0), Origin::Peer).is_err());
    assert!(edge.check(&checkpoint(i64::MAX), Origin::Peer).is_err());
    let expiry = command(Request::LeaseExpiry(LeaseExpiry { ids: vec![5] }));
    assert!(edge.check(&expiry, Origin::Peer).is_err());
}

/// Why the limit is needed: past about 49 levels, a decoded txn can no longer be read back
/// from the log, whatever the edge accepted.
#[test]
fn prost_cannot_read_back_a_log_entry_fifty_levels_deep() {
    let entry = |depth| Entry {
        log_id: log_id(1, 1, 7),
        payload: EntryPayload::Normal(RaftCommand(command(Request::Txn(nested(depth))))),
    };
    assert!(decode_entry(&encode_entry(&entry(48)).unwrap()).is_ok());
    let err = decode_entry(&encode_entry(&entry(50)).unwrap()).unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
}

//! Deeply nested txns. A txn may hold txns in its branches, without limit on the wire, and
//! every place that stores or replicates one wraps it in more messages; prost stops decoding at
//! 100 nested messages. Before the limit, a 50-level txn was acknowledged and then every start
//! failed to replay the WAL (the member was bricked), 51 levels and more got INTERNAL with a
//! 3 KB decode error, and followers rejected a deep entry the leader had accepted, so every
//! later write timed out. Now a txn nests at most [`MAX_TXN_DEPTH`] levels, deeper ones are
//! refused with etcd's `too many operations` before anything is written, and etcd's op budget
//! (a nested txn gets `--max-txn-ops` minus the ops of the levels above it) holds.

use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
use concord_proto::nesting::MAX_TXN_DEPTH;
use concord_proto::raftpb::command::Request;
use etcd_client::{Client, GetOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};

use super::{StandIn, WAIT, assert_restarts_intact, pairs_under, revision, status};
use crate::client_kv::connect;
use crate::cluster::harness::Cluster;
use crate::harness::Server;

/// etcd's answer to a txn with too many ops (and Concord's to one nested too deeply).
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

fn key(prefix: &str, level: usize) -> String {
    format!("{prefix}/{level:03}")
}

fn value(level: usize) -> String {
    format!("level-{level}")
}

/// A txn `depth` levels deep (1 = no nested txn): level L puts `prefix/L` and holds level
/// L + 1; the innermost level puts its own key and reads the whole prefix.
fn nested(prefix: &str, depth: usize) -> Txn {
    let mut txn = Txn::new().and_then([
        TxnOp::put(key(prefix, depth), value(depth), None),
        TxnOp::get(prefix, Some(GetOptions::new().with_prefix())),
    ]);
    for level in (1..depth).rev() {
        txn = Txn::new().and_then([
            TxnOp::put(key(prefix, level), value(level), None),
            TxnOp::txn(txn),
        ]);
    }
    txn
}

/// [`nested`] as the protobuf message a follower forwards (without the innermost read).
fn nested_message(prefix: &str, depth: usize) -> TxnRequest {
    let put = |level: usize| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key(prefix, level).into_bytes(),
            value: value(level).into_bytes(),
            ..Default::default()
        })),
    };
    let mut txn = TxnRequest {
        success: vec![put(depth)],
        ..Default::default()
    };
    for level in (1..depth).rev() {
        let inner = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn)),
        };
        txn = TxnRequest {
            success: vec![put(level), inner],
            ..Default::default()
        };
    }
    txn
}

/// What the keys under `prefix` hold once [`nested`]`(prefix, depth)` was applied.
fn written(prefix: &str, depth: usize) -> Vec<(String, String)> {
    (1..=depth)
        .map(|level| (key(prefix, level), value(level)))
        .collect()
}

/// How many txn levels a response has (1 = no nested txn response).
fn response_depth(resp: &TxnResponse) -> usize {
    let nested = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Txn(inner) => Some(inner),
        _ => None,
    });
    1 + nested.map_or(0, |inner| response_depth(&inner))
}

/// A txn of exactly 32 levels is applied, its response has every level, and the member then
/// restarts (after a clean stop and after `kill -9`) with every key and takes new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepest_allowed_txn_is_applied_and_survives_restarts() {
    assert_eq!(MAX_TXN_DEPTH, 32, "the tests below are written for 32 levels");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;

    let resp = c.txn(nested("deep", MAX_TXN_DEPTH)).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(response_depth(&resp), MAX_TXN_DEPTH);
    let expected = written("deep", MAX_TXN_DEPTH);
    assert_eq!(pairs_under(&mut c, "deep/").await, expected);

    assert_restarts_intact(&mut server, "deep/", &expected).await;
}

/// One level more than allowed, and the depths that once got through or broke the member,
/// are refused with etcd's error and code, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeper_txns_are_refused_with_too_many_operations() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("keep", "me", None).await.unwrap();
    let before = revision(&mut c).await;

    for depth in [MAX_TXN_DEPTH + 1, 50, 51, 200] {
        let err = status(c.txn(nested("deep", depth)).await.unwrap_err());
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::InvalidArgument, TOO_MANY_OPS),
            "a txn {depth} levels deep"
        );
    }
    assert_eq!(revision(&mut c).await, before, "a refused txn changed the store");
    assert!(pairs_under(&mut c, "deep/").await.is_empty());

    let kept = vec![("keep".to_string(), "me".to_string())];
    assert_restarts_intact(&mut server, "keep", &kept).await;
}

/// etcd's op budget: a nested txn counts as one op of its level and may itself hold only
/// `--max-txn-ops` (128) minus the ops of the level above. 100 puts + a txn of 40 is refused;
/// 64 puts + a txn of 63 fits exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_txns_share_the_op_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let before = revision(&mut c).await;

    let over = outer_and_nested("over", 100, 40);
    let err = status(c.txn(over).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::InvalidArgument, TOO_MANY_OPS)
    );
    assert_eq!(
        revision(&mut c).await,
        before,
        "the refused txn changed the store"
    );
    assert!(pairs_under(&mut c, "over/").await.is_empty());

    let resp = c.txn(outer_and_nested("fits", 64, 63)).await.unwrap();
    assert!(resp.succeeded());
    let stored = pairs_under(&mut c, "fits/").await;
    assert_eq!(stored.len(), 64 + 63);
    assert_restarts_intact(&mut server, "fits/", &stored).await;
}

/// A txn of `outer` puts plus a nested txn of `inner` puts, every key distinct.
fn outer_and_nested(prefix: &str, outer: usize, inner: usize) -> Txn {
    let puts = |level: &str, n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("{prefix}/{level}/{i:03}"), "v", None))
            .collect()
    };
    let mut ops = puts("outer", outer);
    ops.push(TxnOp::txn(Txn::new().and_then(puts("inner", inner))));
    Txn::new().and_then(ops)
}

/// A txn a follower forwards (the peer `Forward` RPC) is checked as a client's is: before,
/// it went to Raft as it came, so a depth the client edge refused, or one no member could read
/// back from its log, was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_deep_txns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let mut peer = StandIn::join(&server).await;
    let before = revision(&mut c).await;

    // The codec refuses them before prost decodes them (from 50 levels on, prost could not),
    // with etcd's error as a status.
    for depth in [MAX_TXN_DEPTH + 1, 40, 45, 50, 51, 200] {
        let status = peer
            .forward(Request::Txn(nested_message("deep", depth)))
            .await
            .expect_err("refused before it is decoded");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.message(),
            TOO_MANY_OPS,
            "a forwarded txn {depth} levels deep"
        );
    }
    assert_eq!(revision(&mut c).await, before, "a refused txn changed the store");
    assert!(server.is_running(), "{}", server.log_tail());

    // The deepest allowed is applied, and replayed on restarts.
    let answer = peer
        .forward(Request::Txn(nested_message("deep", MAX_TXN_DEPTH)))
        .await
        .expect("the Forward call");
    assert_eq!(answer, "", "a forwarded 32-level txn");
    let expected = written("deep", MAX_TXN_DEPTH);
    assert_eq!(pairs_under(&mut c, "deep/").await, expected);
    assert_restarts_intact(&mut server, "deep/", &expected).await;
}

/// Deeper txns sent to a follower are refused; a 32-level one is forwarded, replicated and
/// applied by every member; writes keep working afterwards, and a follower restarted with
/// `kill -9` replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepest_allowed_txn_through_a_follower_reaches_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = (leader + 1) % 3;

    let mut c = cluster
        .client_with_timeout(follower, Duration::from_secs(10))
        .await;
    for depth in [MAX_TXN_DEPTH + 1, 40, 45, 49] {
        let err = status(c.txn(nested("deep", depth)).await.unwrap_err());
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::InvalidArgument, TOO_MANY_OPS),
            "a txn {depth} levels deep through a follower"
        );
    }
    let resp = c
        .txn(nested("deep", MAX_TXN_DEPTH))
        .await
        .unwrap_or_else(|e| panic!("32-level txn through a follower: {e}\n{}", cluster.logs()));
    assert!(resp.succeeded());
    let expected = written("deep", MAX_TXN_DEPTH);
    for i in 0..3 {
        let mut member = cluster.client(i).await;
        await_local_keys(&mut member, "deep/", &expected, &cluster, i).await;
    }

    // Later writes commit, through every member.
    for i in 0..3 {
        let mut member = cluster.client(i).await;
        member
            .put(format!("later/m{i}"), "v", None)
            .await
            .unwrap_or_else(|e| panic!("put through m{i} after the deep txn: {e}\n{}", cluster.logs()));
    }

    // The follower that took the txn replays it from its own log.
    cluster.kill9(follower);
    cluster.restart(follower);
    let mut member = cluster.client(follower).await;
    await_local_keys(&mut member, "deep/", &expected, &cluster, follower).await;
    let later: Vec<(String, String)> = (0..3).map(|i| (format!("later/m{i}"), "v".to_string())).collect();
    await_local_keys(&mut member, "later/", &later, &cluster, follower).await;
    member
        .put("later/after-restart", "v", None)
        .await
        .unwrap_or_else(|e| panic!("put through the restarted follower: {e}\n{}", cluster.logs()));
}

/// Polls member `i`'s own copy (serializable reads) until the keys under `prefix` are
/// `expected`.
async fn await_local_keys(
    c: &mut Client,
    prefix: &str,
    expected: &[(String, String)],
    cluster: &Cluster,
    i: usize,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = c
            .get(prefix, Some(GetOptions::new().with_prefix().with_serializable()))
            .await
            .ok()
            .map(|resp| {
                resp.kvs()
                    .iter()
                    .map(|kv| {
                        (
                            kv.key_str().unwrap().to_string(),
                            kv.value_str().unwrap().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            });
        if got.as_deref() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {got:?} under {prefix:?}, expected {} keys\n{}",
            cluster.name(i),
            expected.len(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

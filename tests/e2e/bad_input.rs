//! Bad input gets etcd's error (or etcd's answer), and leaves the store unchanged.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::client_kv::connect;
use crate::harness::Server;

async fn revision(c: &mut Client) -> i64 {
    c.get("any", None).await.unwrap().header().unwrap().revision()
}

fn status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_empty_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--max-txn-ops", "8", "--max-request-bytes", "65536"],
    );
    let mut c = connect(&server).await;
    c.put("keep", "me", None).await.unwrap();
    let before = revision(&mut c).await;

    let too_large = status(c.put("big", vec![b'x'; 100_000], None).await.unwrap_err());
    assert_eq!(too_large.code(), tonic::Code::InvalidArgument);
    assert_eq!(too_large.message(), "etcdserver: request is too large");

    let ops: Vec<TxnOp> = (0..9).map(|i| TxnOp::put(format!("t{i}"), "v", None)).collect();
    let too_many = status(c.txn(Txn::new().and_then(ops)).await.unwrap_err());
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        too_many.message(),
        "etcdserver: too many operations in txn request"
    );

    let empty = status(c.put("", "v", None).await.unwrap_err());
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert_eq!(empty.message(), "etcdserver: key is not provided");
    let empty_get = status(c.get("", None).await.unwrap_err());
    assert_eq!(empty_get.message(), "etcdserver: key is not provided");

    let dup = status(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await
            .unwrap_err(),
    );
    assert_eq!(dup.message(), "etcdserver: duplicate key given in txn request");

    assert_eq!(
        revision(&mut c).await,
        before,
        "rejected requests changed the store"
    );
    for k in ["big", "t0", "d"] {
        assert_eq!(c.get(k, None).await.unwrap().count(), 0, "{k} was written");
    }
    assert_eq!(c.get("keep", None).await.unwrap().kvs()[0].value(), b"me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ranges_answer_as_etcd_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    for k in ["a", "b", "c"] {
        c.put(k, "v", None).await.unwrap();
    }
    let before = revision(&mut c).await;
    // etcd answers range_end < key with an empty result, not an error.
    let backwards = c.get("c", Some(GetOptions::new().with_range("a"))).await.unwrap();
    assert_eq!((backwards.kvs().len(), backwards.count()), (0, 0));
    // ...and a negative limit as no limit.
    let negative = c
        .get("a", Some(GetOptions::new().with_range("z").with_limit(-1)))
        .await
        .unwrap();
    assert_eq!(negative.kvs().len(), 3);
    assert!(!negative.more());
    // Deleting a backwards range deletes nothing.
    let deleted = c
        .delete("c", Some(etcd_client::DeleteOptions::new().with_range("a")))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 0);
    assert_eq!(revision(&mut c).await, before);
    assert_eq!(
        c.get("a", Some(GetOptions::new().with_range("z")))
            .await
            .unwrap()
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_etcd_service_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    assert!(c.defragment().await.is_ok(), "Maintenance defragments");
    assert!(c.user_list().await.is_ok(), "Auth is served");
}

/// The member's last Raft log index.
async fn raft_index(c: &mut Client) -> u64 {
    c.status().await.unwrap().raft_index()
}

/// A txn the store would refuse is refused at the edge, and one that only reads is served as a
/// read (as etcd does): neither takes a Raft log entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_read_only_txns_take_no_raft_entry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("a", "1", None).await.unwrap();
    let before = raft_index(&mut c).await;

    let dup = status(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await
            .unwrap_err(),
    );
    assert_eq!(dup.message(), "etcdserver: duplicate key given in txn request");

    let compare = Compare::value("a", CompareOp::Equal, "1");
    let read = c
        .txn(
            Txn::new()
                .when([compare.clone()])
                .and_then([TxnOp::get("a", None)]),
        )
        .await
        .unwrap();
    assert!(read.succeeded());
    let serializable = c
        .txn(
            Txn::new()
                .when([compare])
                .and_then([TxnOp::get("a", Some(GetOptions::new().with_serializable()))]),
        )
        .await
        .unwrap();
    assert!(serializable.succeeded());
    for response in [read, serializable] {
        let etcd_client::TxnOpResponse::Get(got) = &response.op_responses()[0] else {
            panic!("a range answers a range");
        };
        assert_eq!(got.kvs()[0].value(), b"1");
        assert_eq!(response.header().unwrap().revision(), 2);
    }
    assert_eq!(
        raft_index(&mut c).await,
        before,
        "a refused or read-only txn took a Raft entry"
    );
}

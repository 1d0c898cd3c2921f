//! The KV service through the `etcd-client` crate, as a Rust user of etcd would use it.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

use crate::harness::Server;

pub async fn connect(server: &Server) -> Client {
    Client::connect([server.url()], None)
        .await
        .expect("connect to concord")
}

fn keys(resp: &etcd_client::GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_options() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    // a=2, b=3, c=4 (revisions); then b again at 5.
    for (k, v) in [("a", "zz"), ("b", "yy"), ("c", "xx"), ("b", "ww")] {
        c.put(k, v, None).await.unwrap();
    }
    let all = c.get("a", Some(GetOptions::new().with_range("d"))).await.unwrap();
    assert_eq!(keys(&all), ["a", "b", "c"]);
    assert_eq!(all.count(), 3);
    assert_eq!(all.header().unwrap().revision(), 5);

    let limited = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(&limited), ["a", "b"]);
    assert!(limited.more());
    assert_eq!(limited.count(), 3);

    let by_value = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Value, SortOrder::Ascend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&by_value), ["b", "c", "a"]);
    let by_version = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Version, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&by_version)[0], "b");

    let at_rev3 = c
        .get("b", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(at_rev3.kvs()[0].value(), b"yy");
    assert_eq!(at_rev3.kvs()[0].version(), 1);

    let keys_only = c
        .get("a", Some(GetOptions::new().with_keys_only()))
        .await
        .unwrap();
    assert!(keys_only.kvs()[0].value().is_empty());
    let count_only = c
        .get("", Some(GetOptions::new().with_all_keys().with_count_only()))
        .await
        .unwrap();
    assert!(count_only.kvs().is_empty());
    assert_eq!(count_only.count(), 3);

    let min_mod = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_min_mod_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&min_mod), ["b", "c"]);
    let max_create = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_max_create_revision(2)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&max_create), ["a"]);
    let serializable = c
        .get("c", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(keys(&serializable), ["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_options() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let first = c
        .put("k", "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(first.prev_key().is_none());
    let second = c
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(second.prev_key().unwrap().value(), b"v1");

    // ignore_value keeps the value and bumps the version.
    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"v2"[..], 3));
    let err = c
        .put("missing", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("etcdserver: key not found"), "{err}");

    // Delete then re-create: a new generation starts at version 1.
    for k in ["p/1", "p/2", "p/3"] {
        c.put(k, "x", None).await.unwrap();
    }
    let deleted = c
        .delete("p/", Some(DeleteOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 3);
    assert_eq!(deleted.prev_kvs().len(), 3);
    let rev_after_delete = deleted.header().unwrap().revision();
    let nothing = c
        .delete("p/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(nothing.deleted(), 0);
    assert_eq!(
        nothing.header().unwrap().revision(),
        rev_after_delete,
        "deleting nothing is no revision"
    );
    c.put("p/1", "again", None).await.unwrap();
    let kv = c.get("p/1", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.version(), 1);
    assert_eq!(kv.create_revision(), rev_after_delete + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_and_nested_txn() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("x", "1", None).await.unwrap(); // rev 2
    c.put("y", "1", None).await.unwrap(); // rev 3

    let cases = [
        (Compare::value("x", CompareOp::Equal, "1"), true),
        (Compare::value("x", CompareOp::NotEqual, "1"), false),
        (Compare::version("x", CompareOp::Greater, 0), true),
        (Compare::create_revision("y", CompareOp::Less, 3), false),
        (Compare::mod_revision("y", CompareOp::Equal, 3), true),
        (Compare::lease("x", CompareOp::Equal, 0), true),
        (Compare::version("nosuch", CompareOp::Equal, 0), true),
        (Compare::version("x", CompareOp::Equal, 1).with_prefix(), true),
        (
            Compare::mod_revision("a", CompareOp::Less, 3).with_range("z"),
            false,
        ),
    ];
    for (i, (cmp, expected)) in cases.into_iter().enumerate() {
        let resp = c.txn(Txn::new().when([cmp])).await.unwrap();
        assert_eq!(resp.succeeded(), expected, "case {i}");
    }
    assert_eq!(
        c.get("x", None).await.unwrap().header().unwrap().revision(),
        3,
        "read-only txns add no revision"
    );

    let nested = Txn::new()
        .when([Compare::value("x", CompareOp::Equal, "1")])
        .and_then([
            TxnOp::put("x", "2", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("z", "3", None), TxnOp::get("x", None)])),
        ]);
    let resp = c.txn(nested).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 4, "one txn is one revision");
    let TxnOpResponse::Txn(inner) = &resp.op_responses()[1] else {
        panic!("nested txn response")
    };
    let TxnOpResponse::Get(get) = &inner.op_responses()[1] else {
        panic!("get response")
    };
    assert_eq!(get.kvs()[0].value(), b"2", "a txn reads its own writes");
    let z = c.get("z", None).await.unwrap().kvs()[0].clone();
    assert_eq!(z.mod_revision(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    for v in 0..5 {
        c.put("c", v.to_string(), None).await.unwrap();
    }
    c.compact(4, None).await.unwrap();
    let err = c
        .get("c", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap_err();
    let etcd_client::Error::GRpcStatus(status) = err else {
        panic!("grpc status expected")
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let at4 = c
        .get("c", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(at4.kvs()[0].value(), b"2");
}

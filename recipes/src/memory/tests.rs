use std::time::Duration;

use concord_proto::etcdserverpb::Compare;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::mvccpb::KeyValue;
use futures::StreamExt;

use super::*;
use crate::kv::{create_revision_is, delete_op, get_op, prefix_end, put_op, range_result};

async fn put(kv: &MemoryKv, key: &str, value: &str, lease: i64) -> TxnResponse {
    let txn = TxnRequest {
        success: vec![put_op(key, value, lease)],
        ..Default::default()
    };
    kv.txn(txn).await.unwrap()
}

fn compare(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: Some(value),
        ..Default::default()
    }
}

async fn next(stream: &mut WatchStream) -> WatchBatch {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn keys(kvs: &[KeyValue]) -> Vec<&[u8]> {
    kvs.iter().map(|kv| &kv.key[..]).collect()
}

#[tokio::test]
async fn each_changing_write_is_one_revision() {
    let kv = MemoryKv::new();
    assert_eq!(kv.revision(), 1);
    assert_eq!(put(&kv, "a", "1", 0).await.header.unwrap().revision, 2);
    put(&kv, "a", "2", 0).await;
    let a = kv
        .range(RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a.header.unwrap().revision, 3);
    let a = &a.kvs[0];
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, &a.value[..]),
        (2, 3, 2, &b"2"[..])
    );

    let nothing = TxnRequest {
        success: vec![delete_op("missing")],
        ..Default::default()
    };
    assert_eq!(kv.txn(nothing).await.unwrap().header.unwrap().revision, 3);
    let two = TxnRequest {
        success: vec![put_op("b", "", 0), put_op("c", "", 0)],
        ..Default::default()
    };
    assert_eq!(kv.txn(two).await.unwrap().header.unwrap().revision, 4);
}

#[tokio::test]
async fn txn_compares_choose_the_branch_and_ops_answer_in_order() {
    let kv = MemoryKv::new();
    let create = TxnRequest {
        compare: vec![create_revision_is("k", 0)],
        success: vec![put_op("k", "v", 0), get_op("k")],
        failure: vec![get_op("k")],
    };
    let first = kv.txn(create.clone()).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(range_result(&first, 1)[0].value, &b"v"[..]); // reads see the txn's own writes
    let second = kv.txn(create).await.unwrap();
    assert!(!second.succeeded);
    assert_eq!(range_result(&second, 0)[0].create_revision, 2);

    use CompareResult::*;
    use CompareTarget::*;
    let holds = [
        (
            compare("k", Value, Equal, TargetUnion::Value(b"v".to_vec())),
            true,
        ),
        (
            compare("k", Value, Greater, TargetUnion::Value(b"u".to_vec())),
            true,
        ),
        (compare("k", Mod, Less, TargetUnion::ModRevision(3)), true),
        (compare("k", Version, NotEqual, TargetUnion::Version(1)), false),
        (compare("k", Lease, Equal, TargetUnion::Lease(0)), true),
        (
            compare("k", Create, Greater, TargetUnion::CreateRevision(2)),
            false,
        ),
        // A missing key has no value: even NOT_EQUAL fails, as in etcd.
        (
            compare("gone", Value, NotEqual, TargetUnion::Value(b"x".to_vec())),
            false,
        ),
        (compare("gone", Version, Equal, TargetUnion::Version(0)), true),
        // Mismatched target and value never hold.
        (compare("k", Mod, Equal, TargetUnion::Version(1)), false),
    ];
    for (compare, expected) in holds {
        let txn = TxnRequest {
            compare: vec![compare.clone()],
            ..Default::default()
        };
        assert_eq!(kv.txn(txn).await.unwrap().succeeded, expected, "{compare:?}");
    }
}

#[tokio::test]
async fn ranges_filter_sort_and_limit() {
    let kv = MemoryKv::new();
    for key in ["p/b", "p/a", "p/c", "q"] {
        put(&kv, key, key, 0).await;
    }
    let prefix = RangeRequest {
        key: b"p/".to_vec(),
        range_end: prefix_end(b"p/"),
        ..Default::default()
    };
    let by_create = RangeRequest {
        sort_target: SortTarget::Create as i32,
        sort_order: SortOrder::Ascend as i32,
        ..prefix.clone()
    };
    let all = kv.range(by_create.clone()).await.unwrap();
    assert_eq!(keys(&all.kvs), [&b"p/b"[..], b"p/a", b"p/c"]);
    let newest_before_c = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        max_create_revision: 3,
        limit: 1,
        ..by_create
    };
    let newest = kv.range(newest_before_c).await.unwrap();
    assert_eq!((keys(&newest.kvs), newest.more), (vec![&b"p/a"[..]], true));

    let by_key = kv.range(prefix.clone()).await.unwrap();
    assert_eq!(keys(&by_key.kvs), [&b"p/a"[..], b"p/b", b"p/c"]);
    let count = kv
        .range(RangeRequest {
            count_only: true,
            ..prefix.clone()
        })
        .await
        .unwrap();
    assert_eq!((count.count, count.kvs.len()), (3, 0));
    let bare = kv
        .range(RangeRequest {
            keys_only: true,
            ..prefix
        })
        .await
        .unwrap();
    assert!(bare.kvs.iter().all(|kv| kv.value.is_empty()));
    let to_end = RangeRequest {
        key: b"p/c".to_vec(),
        range_end: vec![0],
        ..Default::default()
    };
    assert_eq!(keys(&kv.range(to_end).await.unwrap().kvs), [&b"p/c"[..], b"q"]);
    let backwards = RangeRequest {
        key: b"q".to_vec(),
        range_end: b"a".to_vec(),
        ..Default::default()
    };
    assert!(kv.range(backwards).await.unwrap().kvs.is_empty());
}

#[tokio::test]
async fn ranges_read_past_revisions() {
    let kv = MemoryKv::new();
    put(&kv, "a", "1", 0).await;
    put(&kv, "a", "2", 0).await;
    kv.txn(TxnRequest {
        success: vec![delete_op("a")],
        ..Default::default()
    })
    .await
    .unwrap();
    let at = |revision| RangeRequest {
        key: b"a".to_vec(),
        revision,
        ..Default::default()
    };
    assert_eq!(kv.range(at(2)).await.unwrap().kvs[0].value, &b"1"[..]);
    assert_eq!(kv.range(at(3)).await.unwrap().kvs[0].value, &b"2"[..]);
    assert!(kv.range(at(4)).await.unwrap().kvs.is_empty());
    assert!(kv.range(at(1)).await.unwrap().kvs.is_empty());
    assert!(kv.range(at(5)).await.is_err());
}

#[tokio::test]
async fn watches_replay_history_then_go_live() {
    let kv = MemoryKv::new();
    put(&kv, "w", "1", 0).await; // 2
    put(&kv, "other", "", 0).await; // 3
    put(&kv, "w", "2", 0).await; // 4
    let request = WatchCreateRequest {
        key: b"w".to_vec(),
        start_revision: 2,
        ..Default::default()
    };
    let mut replay = kv.watch(request).await.unwrap();
    let mut live = kv
        .watch(WatchCreateRequest {
            key: b"w".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kv.watchers(b"w"), 2);

    let mod_revisions = |batch: &WatchBatch| -> Vec<i64> {
        batch
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    };
    assert_eq!(mod_revisions(&next(&mut replay).await), [2]);
    assert_eq!(mod_revisions(&next(&mut replay).await), [4]);
    kv.txn(TxnRequest {
        success: vec![delete_op("w")],
        ..Default::default()
    })
    .await
    .unwrap(); // 5
    for stream in [&mut replay, &mut live] {
        let batch = next(stream).await;
        assert_eq!((batch.revision, mod_revisions(&batch)), (5, vec![5]));
        assert_eq!(batch.events[0].r#type, EventType::Delete as i32);
        assert_eq!(batch.events[0].prev_kv, None); // not asked for
    }
    drop(live);
    assert_eq!(kv.watchers(b"w"), 1);
}

#[tokio::test]
async fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let kv = MemoryKv::new();
    let lease = kv.lease_grant(5).await.unwrap().id;
    put(&kv, "l/a", "", lease).await;
    put(&kv, "l/b", "", lease).await;
    put(&kv, "l/c", "", 0).await;
    let prefix = WatchCreateRequest {
        key: b"l/".to_vec(),
        range_end: prefix_end(b"l/"),
        ..Default::default()
    };
    let mut watch = kv.watch(prefix).await.unwrap();
    assert_eq!(kv.lease_keep_alive(lease).await.unwrap(), 5);

    assert!(kv.expire_lease(lease));
    assert_eq!(kv.revision(), 5);
    let batch = next(&mut watch).await;
    assert_eq!(batch.events.len(), 2);
    assert!(batch.events.iter().all(|e| e.r#type == EventType::Delete as i32));
    let left = kv.range(RangeRequest {
        key: b"l/".to_vec(),
        range_end: prefix_end(b"l/"),
        ..Default::default()
    });
    assert_eq!(keys(&left.await.unwrap().kvs), [&b"l/c"[..]]);

    assert_eq!(kv.lease_keep_alive(lease).await.unwrap(), 0);
    assert_eq!(kv.keep_alives(lease), 2);
    let err = kv.txn(TxnRequest {
        success: vec![put_op("x", "", lease)],
        ..Default::default()
    });
    let Err(crate::Error::Store(status)) = err.await else {
        panic!("put on a gone lease")
    };
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::NotFound, "etcdserver: requested lease not found")
    );
    assert!(kv.lease_revoke(lease).await.is_err());
    assert_eq!(kv.revision(), 5);
}

#[tokio::test]
async fn a_watch_from_a_future_revision_skips_what_comes_before() {
    let kv = MemoryKv::new();
    let request = WatchCreateRequest {
        key: b"f".to_vec(),
        start_revision: 3,
        ..Default::default()
    };
    let mut watch = kv.watch(request).await.unwrap();
    put(&kv, "f", "2", 0).await;
    put(&kv, "f", "3", 0).await;
    assert_eq!(
        next(&mut watch).await.events[0].kv.as_ref().unwrap().value,
        &b"3"[..]
    );
}

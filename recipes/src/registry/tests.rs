use concord_proto::etcdserverpb::TxnRequest;
use serde_json::json;

use super::*;
use crate::memory::MemoryKv;
use crate::test_util::{FlakyKv, bounded, session};

fn ids<'a>(instances: impl Iterator<Item = &'a Instance>) -> Vec<&'a str> {
    instances.map(|i| i.id.as_str()).collect()
}

fn named(changes: &[MembershipChange]) -> Vec<String> {
    changes
        .iter()
        .map(|change| match change {
            MembershipChange::Added(i) => format!("+{}", i.id),
            MembershipChange::Updated(i) => format!("~{}", i.id),
            MembershipChange::Removed { id } => format!("-{id}"),
        })
        .collect()
}

/// A watch and the view it keeps: each step is a revision and the changes it made to the view.
struct Viewed<K: Kv> {
    watch: ServiceWatch<K>,
    view: MembershipView,
}

impl<K: Kv> Viewed<K> {
    fn new(watch: ServiceWatch<K>) -> Self {
        Self {
            watch,
            view: MembershipView::default(),
        }
    }

    async fn step(&mut self) -> (i64, Vec<String>) {
        let membership = bounded(self.watch.next()).await.unwrap();
        let revision = membership.revision;
        (revision, named(&self.view.apply(membership)))
    }

    async fn changes(&mut self) -> Vec<String> {
        self.step().await.1
    }

    fn ids(&self) -> Vec<String> {
        self.view.instances().keys().cloned().collect()
    }
}

#[tokio::test(start_paused = true)]
async fn register_list_replace_drain_deregister() {
    let kv = MemoryKv::new();
    let registry = Registry::new(kv.clone());
    let lease = session(&kv).await.lease();
    let metadata = Some(json!({"zone": "a", "weight": 2}));
    registry
        .register(
            "billing",
            "b-1",
            &endpoint("10.0.0.1:80", metadata.clone()),
            lease,
        )
        .await
        .unwrap();
    registry
        .register("billing", "b-2", &endpoint("10.0.0.2:80", None), lease)
        .await
        .unwrap();
    registry
        .register("billing-eu", "x", &endpoint("10.0.9.9:80", None), lease)
        .await
        .unwrap();
    let (_, found) = registry.list("billing").await.unwrap();
    assert_eq!(
        ids(found.iter()),
        ["b-1", "b-2"],
        "not billing-eu's (etcd-io/etcd#15022)"
    );
    assert_eq!(found[0].endpoint.metadata, metadata);
    assert_eq!(found[0].lease, lease);

    // Registering an ID again replaces it.
    registry
        .register("billing", "b-1", &endpoint("10.0.0.3:80", None), lease)
        .await
        .unwrap();
    let (_, found) = registry.list("billing").await.unwrap();
    assert_eq!(found[0].endpoint.addr, "10.0.0.3:80");
    assert_eq!(found.len(), 2);

    assert!(registry.drain("billing", "b-2").await.unwrap());
    assert!(registry.drain("billing", "b-2").await.unwrap(), "twice is fine");
    let (_, found) = registry.list("billing").await.unwrap();
    assert!(found[1].endpoint.draining);
    assert_eq!(found[1].lease, lease, "draining keeps the lease");
    assert!(!registry.drain("billing", "nobody").await.unwrap());

    assert!(registry.deregister("billing", "b-1").await.unwrap());
    assert!(!registry.deregister("billing", "b-1").await.unwrap());
    let (_, found) = registry.list("billing").await.unwrap();
    assert_eq!(ids(found.iter()), ["b-2"]);
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_and_changes_nothing() {
    let kv = MemoryKv::new();
    let registry = Registry::new(kv.clone());
    let ok = endpoint("h:1", None);
    for (service, id) in [("", "a"), ("a/b", "a"), ("svc", "")] {
        let refused = registry.register(service, id, &ok, 0).await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{service:?} {id:?}"
        );
    }
    let empty_addr = registry.register("svc", "a", &endpoint("", None), 0).await;
    assert!(matches!(empty_addr, Err(Error::InvalidArgument(_))));
    let not_an_object = registry
        .register("svc", "a", &endpoint("h:1", Some(json!([1]))), 0)
        .await;
    assert!(matches!(not_an_object, Err(Error::InvalidArgument(_))));
    assert!(Registry::with_prefix(kv.clone(), "no-slash").is_err());
    assert!(registry.list("svc").await.unwrap().1.is_empty());
}

#[tokio::test(start_paused = true)]
async fn values_in_etcds_format_written_by_others_are_read_and_others_skipped() {
    let kv = MemoryKv::new();
    let registry = Registry::new(kv.clone());
    let by_go = br#"{"Op":0,"Addr":"1.2.3.4:5","Metadata":null}"#.to_vec();
    let txn = TxnRequest {
        success: vec![
            put_op("services/svc/go-1", by_go, 0),
            put_op("services/svc/raw", "10.0.0.1:80", 0),
        ],
        ..Default::default()
    };
    kv.txn(txn).await.unwrap();
    let (_, found) = registry.list("svc").await.unwrap();
    assert_eq!(ids(found.iter()), ["go-1"]);
    assert_eq!(found[0].endpoint.addr, "1.2.3.4:5");
}

#[tokio::test(start_paused = true)]
async fn a_watch_sees_every_change_once_in_revision_order() {
    let kv = MemoryKv::new();
    let registry = Registry::new(kv.clone());
    let lease = session(&kv).await.lease();
    registry
        .register("svc", "a", &endpoint("h:1", None), lease)
        .await
        .unwrap();
    let mut watch = Viewed::new(registry.watch("svc", 0).await.unwrap());
    assert_eq!(watch.changes().await, ["+a"]);

    registry
        .register("svc", "b", &endpoint("h:2", None), lease)
        .await
        .unwrap();
    registry.drain("svc", "a").await.unwrap();
    registry.deregister("svc", "b").await.unwrap();
    let mut seen = Vec::new();
    let mut revisions = Vec::new();
    for _ in 0..3 {
        let (revision, changes) = watch.step().await;
        revisions.push(revision);
        seen.extend(changes);
    }
    assert_eq!(seen, ["+b", "~a", "-b"]);
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");

    // A lease that ends takes its instances with it.
    kv.expire_lease(lease);
    assert_eq!(watch.changes().await, ["-a"]);
    assert!(watch.ids().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_watch_resumes_from_a_revision() {
    let kv = MemoryKv::new();
    let registry = Registry::new(kv.clone());
    let a = registry
        .register("svc", "a", &endpoint("h:1", None), 0)
        .await
        .unwrap();
    let b = registry
        .register("svc", "b", &endpoint("h:2", None), 0)
        .await
        .unwrap();
    registry.deregister("svc", "a").await.unwrap();
    // From b's revision: the membership before it (a), then b joining, then a leaving.
    let mut watch = Viewed::new(registry.watch("svc", b).await.unwrap());
    assert_eq!(watch.step().await, (b - 1, vec!["+a".to_string()]));
    assert_eq!(watch.changes().await, ["+b"]);
    assert_eq!(watch.changes().await, ["-a"]);
    // From the very start.
    let mut from_one = Viewed::new(registry.watch("svc", 1).await.unwrap());
    assert_eq!(from_one.step().await, (0, vec![]));
    assert_eq!(from_one.step().await, (a, vec!["+a".to_string()]));
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_resumes_and_a_compacted_gap_is_read_again() {
    let kv = FlakyKv::default();
    let registry = Registry::new(kv.clone());
    registry
        .register("svc", "a", &endpoint("h:1", None), 0)
        .await
        .unwrap();
    registry
        .register("svc", "b", &endpoint("h:2", None), 0)
        .await
        .unwrap();
    let mut watch = Viewed::new(registry.watch("svc", 0).await.unwrap());
    assert_eq!(watch.changes().await, ["+a", "+b"]);

    // The stream breaks; the watch reopens where it left off, losing nothing.
    kv.cut_watches();
    registry
        .register("svc", "c", &endpoint("h:3", None), 0)
        .await
        .unwrap();
    assert_eq!(watch.changes().await, ["+c"]);

    // It breaks again while changes land and their history is compacted away: the watch
    // reads the membership again and reports the difference, never b or c leaving.
    kv.cut_watches();
    registry.deregister("svc", "a").await.unwrap();
    let d = registry
        .register("svc", "d", &endpoint("h:4", None), 0)
        .await
        .unwrap();
    kv.compact(d + 1);
    assert_eq!(watch.changes().await, ["-a", "+d"]);
    assert_eq!(watch.ids(), ["b", "c", "d"]);
    // ... and follows on from there.
    registry.deregister("svc", "b").await.unwrap();
    assert_eq!(watch.changes().await, ["-b"]);

    // Resuming from a revision whose history is gone starts from the membership now.
    let mut late = Viewed::new(registry.watch("svc", 2).await.unwrap());
    late.step().await;
    assert_eq!(late.ids(), ["c", "d"]);
}

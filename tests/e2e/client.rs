//! The `concord-client` crate against the real server: locks, endpoint failover, the service
//! registry, typed config hot reload, and leader election handover.
//!
//! Every wait is bounded; none sleeps to let something happen, except where the point is that
//! something does *not* happen within a while (a second lock holder, a second leader).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use concord_client::proto::etcdserverpb::{TxnRequest, WatchCreateRequest};
use concord_client::recipes::kv::put_op;
use concord_client::{
    Client, ClientOptions, ConfigOptions, ConfigWrite, Error, Kv, MembershipChange, ServiceWatch,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::cluster::harness::Cluster;
use crate::harness::Server;

/// How long any single expected outcome may take.
const WAIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

async fn connect(server: &Server) -> Client {
    Client::connect([server.url()]).await.expect("connect to concord")
}

/// A local address nothing listens on (bound, then closed).
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_tasks_and_fences_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let holders = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..4 {
        let (client, holders, most) = (client.clone(), holders.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let guard = client.lock("jobs/exclusive").await.unwrap();
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // A read-modify-write that loses updates unless the lock excludes.
                let count = client.get("jobs/count").await.unwrap().map_or(0, |kv| {
                    String::from_utf8(kv.value.to_vec())
                        .unwrap()
                        .parse::<u32>()
                        .unwrap()
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
                let fenced = TxnRequest {
                    compare: vec![guard.fence()],
                    success: vec![put_op("jobs/count", (count + 1).to_string(), 0)],
                    failure: vec![],
                };
                assert!(
                    client.txn(fenced).await.unwrap().succeeded,
                    "task {task} lost its lock"
                );
                holders.fetch_sub(1, Ordering::SeqCst);
                guard.unlock().await.unwrap();
            }
        }));
    }
    for task in tasks {
        within("every task taking the lock three times", task)
            .await
            .unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two tasks held the lock at once");
    let count = client.get("jobs/count").await.unwrap().unwrap();
    assert_eq!(count.value, &b"12"[..]);

    // A fence outlives its lock only as a failing compare.
    let guard = client.lock("jobs/exclusive").await.unwrap();
    let fence = guard.fence();
    guard.unlock().await.unwrap();
    let late = TxnRequest {
        compare: vec![fence],
        success: vec![put_op("jobs/count", "stale", 0)],
        failure: vec![],
    };
    assert!(!client.txn(late).await.unwrap().succeeded);
    assert!(client.get_prefix("jobs/exclusive/").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lock_guard_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let other = connect(&server).await;

    let guard = client.lock("jobs/drop").await.unwrap();
    assert!(other.try_lock("jobs/drop").await.unwrap().is_none());
    let waiter = tokio::spawn(async move {
        let guard = other.lock("jobs/drop").await.unwrap();
        (Instant::now(), guard)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the lock was taken while held");

    let dropped = Instant::now();
    drop(guard);
    let (acquired, guard) = within("the waiter taking the dropped lock", waiter)
        .await
        .unwrap();
    // Well before the 10 s lease could expire: the drop released it.
    assert!(
        acquired.duration_since(dropped) < Duration::from_secs(3),
        "released after {:?}",
        acquired.duration_since(dropped)
    );
    assert!(!guard.is_lost());
    drop(guard);
    within("the second drop releasing the lock", async {
        while !client.get_prefix("jobs/drop/").await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_endpoint_fails_over_to_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let client = Client::connect_with([dead_endpoint(), server.url()], options.clone())
        .await
        .unwrap();
    assert_eq!(client.current_endpoint(), server.url());
    let revision = client.put("failover/a", "1").await.unwrap();
    assert!(revision > 1);
    assert_eq!(client.get("failover/a").await.unwrap().unwrap().value, &b"1"[..]);

    // Nothing listening anywhere: UNAVAILABLE, after every endpoint was tried.
    let err = Client::connect_with([dead_endpoint(), dead_endpoint()], options)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_when_the_member_in_use_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    cluster.wait_for_leader(WAIT);
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(cluster.endpoints(), options).await.unwrap();
    client.put("failover/k", "before").await.unwrap();
    client.put_config("failover", "config", "v0").await.unwrap();
    let mut config = client.config::<String>("failover", "config").await.unwrap();

    let in_use = |cluster: &Cluster, client: &Client| {
        (0..3)
            .find(|&i| cluster.client_url(i) == client.current_endpoint())
            .unwrap()
    };
    let used = in_use(&cluster, &client);
    cluster.kill9(used);
    cluster.wait_for_leader(WAIT);

    // A read after the connection broke: retried on the next member.
    let read = within("a read after failover", client.get("failover/k"))
        .await
        .unwrap();
    assert_eq!(read.unwrap().value, &b"before"[..]);
    assert_ne!(client.current_endpoint(), cluster.client_url(used));

    // A write to a dead member cannot connect, so it was never sent: retried as well. (The
    // pause lets the client's connection see the close, as it would long before the next
    // request in practice; a write caught in flight by the crash is not retried.)
    cluster.restart(used);
    cluster.wait_for_leader(WAIT);
    let used = in_use(&cluster, &client);
    cluster.kill9(used);
    cluster.wait_for_leader(WAIT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    within("a write after failover", client.put("failover/k", "after"))
        .await
        .unwrap();
    assert_ne!(client.current_endpoint(), cluster.client_url(used));
    assert_eq!(
        client.get("failover/k").await.unwrap().unwrap().value,
        &b"after"[..]
    );

    // The config watch reopened itself on a live member and missed nothing.
    client.put_config("failover", "config", "v1").await.unwrap();
    let seen = within("the config watch after failover", config.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.value.as_str(), seen.version), ("v1", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let observer = connect(&server).await;
    let mut members = observer.watch_service("api").await.unwrap();
    let first = within("the first membership", members.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.instances.is_empty() && first.changes.is_empty());

    // Registered: discoverable, and watched joining.
    let ttl = Duration::from_secs(2);
    let a1 = client.register("api", "a1", "10.0.0.1:80", ttl).await.unwrap();
    assert_eq!(a1.key(), "services/api/a1");
    let found = observer.instances("api").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].id.as_str(), found[0].endpoint.addr.as_str()),
        ("a1", "10.0.0.1:80")
    );
    assert_eq!(found[0].lease, a1.lease());
    let joined = next_change(&mut members).await;
    assert!(
        matches!(&joined, MembershipChange::Added(i) if i.id == "a1"),
        "{joined:?}"
    );

    // Heartbeats keep it past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(observer.instances("api").await.unwrap().len(), 1);
    assert!(a1.is_registered());

    // Deregistered: gone at once.
    a1.deregister().await.unwrap();
    assert!(observer.instances("api").await.unwrap().is_empty());
    let left = next_change(&mut members).await;
    assert_eq!(left, MembershipChange::Removed { id: "a1".into() });

    // A process that dies without deregistering: its runtime (and the heartbeat task) goes
    // away, nothing is sent, and the instance leaves when its lease expires.
    let url = server.url();
    let lease = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let registration = runtime.block_on(async {
            let client = Client::connect([url]).await.unwrap();
            client.register("api", "a2", "10.0.0.2:80", ttl).await.unwrap()
        });
        let lease = registration.lease();
        drop(runtime);
        drop(registration); // outside any runtime: no revoke goes out
        lease
    })
    .join()
    .unwrap();
    let crashed = Instant::now();
    let found = observer.instances("api").await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].lease, lease);
    let joined = next_change(&mut members).await;
    assert!(
        matches!(&joined, MembershipChange::Added(i) if i.id == "a2"),
        "{joined:?}"
    );
    let left = next_change(&mut members).await;
    assert_eq!(left, MembershipChange::Removed { id: "a2".into() });
    let after = crashed.elapsed();
    assert!(after < Duration::from_secs(5), "expired after {after:?}");
    assert!(observer.instances("api").await.unwrap().is_empty());
}

/// The registry is stored in etcd's `naming/endpoints` format: etcdctl reads Concord's
/// instances as etcd's Go client writes them, and an instance written that way by hand (as Go's
/// `endpoints.Manager` writes it) is discovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_in_etcds_naming_format() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let _a1 = client
        .register("api", "a1", "10.0.0.1:80", Duration::from_secs(10))
        .await
        .unwrap();
    let stored = server.ctl(&["get", "services/api/a1", "--print-value-only"]);
    assert_eq!(stored.trim(), r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}"#);

    let by_go = r#"{"Op":0,"Addr":"10.0.0.2:80","Metadata":{"zone":"b"}}"#;
    server.ctl(&["put", "services/api/go-1", by_go]);
    server.ctl(&["put", "services/api/not-json", "10.0.0.3:80"]);
    let found = client.instances("api").await.unwrap();
    let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["a1", "go-1"],
        "a value not in the format is skipped, as etcd's resolver skips it"
    );
    assert_eq!(found[1].endpoint.addr, "10.0.0.2:80");
    assert_eq!(found[1].endpoint.metadata, Some(serde_json::json!({"zone": "b"})));
}

/// The one change of the next membership.
async fn next_change(members: &mut ServiceWatch) -> MembershipChange {
    let membership = within("a membership change", members.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(membership.changes.len(), 1, "{membership:?}");
    membership.changes.into_iter().next().unwrap()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    workers: u32,
    name: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_typed_versions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    let settings = |workers: u32, name: &str| Settings {
        workers,
        name: name.into(),
    };
    let version1 = client
        .put_config_if("app", "settings", &settings(1, "one"), 0)
        .await
        .unwrap();
    assert_eq!(version1, 1);
    let options = ConfigOptions {
        client_id: Some("worker-1".into()),
        ..ConfigOptions::default()
    };
    let mut live = client
        .config_with::<Settings>("app", "settings", options)
        .await
        .unwrap();
    let current = live.current().unwrap();
    assert_eq!((&current.value, current.version), (&settings(1, "one"), 1));

    // Every version reaches the receiver, in order.
    let version2 = client
        .put_config_if("app", "settings", &settings(2, "two"), version1)
        .await
        .unwrap();
    let next = within("version 2", live.changed()).await.unwrap().unwrap();
    assert_eq!((&next.value, next.version), (&settings(2, "two"), version2));

    // A version the server accepts (it is JSON) but this client cannot decode: the last good
    // one stays, and the client reports the rejection, which the server's status shows.
    client
        .put_config_text(
            "app",
            "settings",
            r#"{"workers": "many", "name": "x"}"#,
            Default::default(),
        )
        .await
        .unwrap();
    let rejected = within("the rejection", async {
        loop {
            let status = client.config_status("app", "settings").await.unwrap();
            if status.clients.iter().any(|c| c.version == 3 && !c.applied) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(rejected.latest, 3);
    assert_eq!(rejected.clients.len(), 1, "{rejected:?}");
    assert_eq!(rejected.clients[0].client, "worker-1");
    assert!(rejected.clients[0].error.contains("invalid type"), "{rejected:?}");
    assert_eq!(live.rejection().map(|r| r.version), Some(3));
    assert_eq!(
        live.current().unwrap().version,
        2,
        "a bad version keeps the last good one"
    );

    // The next good version is applied and reported.
    let version4 = client
        .put_config("app", "settings", &settings(4, "four"))
        .await
        .unwrap();
    let next = within("version 4", live.changed()).await.unwrap().unwrap();
    assert_eq!((next.value.workers, next.version), (4, version4));
    within("the applied report", async {
        loop {
            let status = client.config_status("app", "settings").await.unwrap();
            if status.clients.iter().any(|c| c.version == 4 && c.applied) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A stale compare-and-swap and a value that does not parse change nothing.
    let stale = client
        .put_config_if("app", "settings", &settings(9, "stale"), version2)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::VersionMismatch { current: 4, .. }),
        "{stale}"
    );
    let bad = client
        .put_config_text("app", "settings", "workers: [1\n", ConfigWrite::format("yaml"))
        .await
        .unwrap_err();
    assert!(
        bad.to_string().starts_with("config: invalid yaml at line "),
        "{bad}"
    );
    assert_eq!(
        client.config_version("app", "settings", 0).await.unwrap().version,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_hands_over_between_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = connect(&server).await;
    let b = connect(&server).await;
    let watcher = connect(&server).await;
    let ttl = Duration::from_secs(2);
    assert_eq!(watcher.leader("scheduler").await.unwrap(), None);

    let leading = a.campaign("scheduler", "a", ttl).await.unwrap();
    let mut leaders = watcher.observe("scheduler");
    let first = within("the first leader", leaders.next()).await.unwrap().unwrap();
    assert_eq!(first.value, b"a");
    assert_eq!(first.lease, leading.lease());

    let candidate = tokio::spawn(async move { b.campaign("scheduler", "b", ttl).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!candidate.is_finished(), "two leaders at once");

    leading.proclaim("a, again").await.unwrap();
    let proclaimed = within("the proclamation", leaders.next()).await.unwrap().unwrap();
    assert_eq!(proclaimed.value, b"a, again");
    assert_eq!(proclaimed.leadership, first.leadership);

    leading.resign().await.unwrap();
    let next = within("the candidate's election", candidate).await.unwrap();
    let handed = within("the new leader", leaders.next()).await.unwrap().unwrap();
    assert_eq!(handed.value, b"b");
    assert!(handed.leadership > first.leadership);
    assert_eq!(watcher.leader("scheduler").await.unwrap().unwrap().value, b"b");

    // A leader that is dropped steps down too.
    drop(next);
    within("the dropped leader stepping down", async {
        while watcher.leader("scheduler").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_fails_with_etcds_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = connect(&server).await;
    for i in 0..4 {
        client.put("compacted/k", i.to_string()).await.unwrap();
    }
    let mut etcd = crate::client_kv::connect(&server).await;
    etcd.compact(4, None).await.unwrap();
    let request = WatchCreateRequest {
        key: b"compacted/k".to_vec(),
        start_revision: 2,
        ..Default::default()
    };
    let err = match client.watch(request).await {
        Err(err) => err,
        Ok(mut stream) => within("the compaction error", stream.next())
            .await
            .unwrap()
            .unwrap_err(),
    };
    assert_eq!(err.to_string(), concord_client::rpctypes::COMPACTED.text());
    // The typed kind says where history now starts, and that retrying will not help.
    let err = Error::from(err);
    assert_eq!(
        err.kind(),
        concord_client::ErrorKind::Compacted { compact_revision: 4 }
    );
    assert!(!err.is_retryable());

    // From the compaction on, the watch replays history.
    let request = WatchCreateRequest {
        key: b"compacted/k".to_vec(),
        start_revision: 4,
        ..Default::default()
    };
    let mut stream = client.watch(request).await.unwrap();
    let batch = within("the replay", stream.next()).await.unwrap().unwrap();
    let values: Vec<_> = batch
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().value.clone())
        .collect();
    assert_eq!(values[0], &b"2"[..]);
}

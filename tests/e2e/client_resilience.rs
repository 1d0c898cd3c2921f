//! The Rust client left to run unattended: a lock holder cut off from the cluster is told it
//! lost the lock before anyone else can have it; a waiter keeps its place when its member dies;
//! a thousand sessions stay alive; a leader loop hands over without overlap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use concord_client::proto::etcdserverpb::TxnRequest;
use concord_client::recipes::kv::put_op;
use concord_client::recipes::session::Session;
use concord_client::{Client, ClientOptions, Kv};
use futures::StreamExt;

use crate::cluster::harness::Cluster;
use crate::harness::Server;
use crate::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(20);
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

fn quick() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(800),
        ..ClientOptions::default()
    }
}

/// A holder cut off from the cluster: at risk first, then lost, and lost before the server
/// expired its lease and gave the lock to the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_is_told_before_the_lock_can_pass_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let proxy = Proxy::start(&server.endpoint).await;
    let holder = Client::connect_with([proxy.url()], quick()).await.unwrap();
    let waiter = Client::connect([server.url()]).await.unwrap();
    let guard = holder.lock_with_ttl("job", Duration::from_secs(2)).await.unwrap();
    let (at_risk, lost) = (guard.at_risk(), guard.lost());
    let waiting = tokio::spawn(async move {
        let guard = waiter.lock("job").await.unwrap();
        (Instant::now(), guard)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cut = Instant::now();
    proxy.cut().await;
    within("at risk", at_risk).await;
    let at_risk_after = cut.elapsed();
    within("lost", lost).await;
    let lost_at = Instant::now();
    let (acquired_at, next) = within("the waiter's turn", waiting).await.unwrap();
    // The server gave the lock on only after the holder knew it had lost it.
    assert!(
        lost_at <= acquired_at,
        "lost {:?} after the lock passed on",
        lost_at - acquired_at
    );
    assert!(
        at_risk_after < lost_at - cut,
        "at risk ({at_risk_after:?}) before lost"
    );
    eprintln!(
        "measured: cut at 0, at risk after {at_risk_after:?}, lost after {:?}, the waiter held the lock after {:?}",
        lost_at - cut,
        acquired_at - cut
    );
    assert!(guard.is_lost());
    next.unlock().await.unwrap();
}

/// A leader cut off from the cluster: at risk, then lost, before the next candidate leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_is_told_before_the_next_one_leads() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let proxy = Proxy::start(&server.endpoint).await;
    let leader = Client::connect_with([proxy.url()], quick()).await.unwrap();
    let candidate = Client::connect([server.url()]).await.unwrap();
    let leadership = leader
        .campaign("boss", "cut off", Duration::from_secs(2))
        .await
        .unwrap();
    let (at_risk, lost) = (leadership.at_risk(), leadership.lost());
    let next = tokio::spawn(async move {
        let next = candidate
            .campaign("boss", "next", Duration::from_secs(2))
            .await
            .unwrap();
        (Instant::now(), next)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut().await;
    within("at risk", at_risk).await;
    let at_risk_at = Instant::now();
    within("lost", lost).await;
    let lost_at = Instant::now();
    let (leads_at, next) = within("the next leader", next).await.unwrap();
    assert!(at_risk_at <= lost_at && lost_at <= leads_at, "told too late");
    assert!(leadership.is_lost());
    next.resign().await.unwrap();
}

/// A waiter in `lock()` whose member is killed keeps its place: the wait resumes on another
/// member and ends when the holder releases, never overlapping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lock_survives_the_death_of_its_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3); // fast timing already
    cluster.wait_for_leader(WAIT);
    let endpoints: Vec<String> = (0..3).map(|i| cluster.client_url(i).to_string()).collect();
    let holder = Client::connect([endpoints[0].clone()]).await.unwrap();
    let waiter = Client::connect_with([endpoints[1].clone(), endpoints[2].clone()], quick())
        .await
        .unwrap();
    let guard = holder.lock_with_ttl("job", Duration::from_secs(5)).await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock_with_ttl("job", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill9(1);
    cluster.wait_for_leader(WAIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the waiter must wait for the holder");
    // The holder still holds it: its fenced write applies.
    let fenced = |guard: &concord_client::LockGuard, value: &str| TxnRequest {
        compare: vec![guard.fence()],
        success: vec![put_op("job/owner", value, 0)],
        failure: vec![],
    };
    assert!(holder.txn(fenced(&guard, "holder")).await.unwrap().succeeded);
    let old_fence = fenced(&guard, "stale holder");
    guard.unlock().await.unwrap();
    let next = within("the waiter's turn", waiting).await.unwrap().unwrap();
    assert!(waiter.txn(fenced(&next, "waiter")).await.unwrap().succeeded);
    assert!(
        !holder.txn(old_fence).await.unwrap().succeeded,
        "the old holder is fenced off"
    );
    assert_eq!(
        waiter.get("job/owner").await.unwrap().unwrap().value,
        &b"waiter"[..]
    );
    next.unlock().await.unwrap();
}

/// One client keeps a thousand sessions of TTL 3 s alive: their keep-alives do not queue
/// behind each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_stay_alive() {
    const SESSIONS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::connect([server.url()]).await.unwrap();
    let mut sessions = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        sessions.push(Session::new(client.clone(), 3).await.unwrap());
    }
    for (i, session) in sessions.iter().enumerate().step_by(10) {
        let put = TxnRequest {
            success: vec![put_op(format!("alive/{i:04}"), "", session.lease())],
            ..Default::default()
        };
        client.txn(put).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let lost = sessions.iter().filter(|s| s.is_lost()).count();
    assert_eq!(lost, 0, "sessions lost");
    let alive = client.get_prefix("alive/").await.unwrap();
    assert_eq!(
        alive.len(),
        SESSIONS / 10,
        "keys on kept-alive leases are all there"
    );
}

/// Three workers in a leader loop; the leader's lease is revoked again and again: one worker's
/// work at a time, and each hand-over within the TTL plus a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_loop_hands_over_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let running = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for worker in 0..3 {
        let client = Client::connect([server.url()]).await.unwrap();
        let (running, overlaps, turns) = (running.clone(), overlaps.clone(), turns.clone());
        loops.push(client.lead(
            "scheduler",
            format!("w{worker}"),
            Duration::from_secs(2),
            move |_key| {
                let (running, overlaps, turns) = (running.clone(), overlaps.clone(), turns.clone());
                async move {
                    /// Counts this turn as running while it runs, even when it is cancelled.
                    struct Running(Arc<AtomicUsize>);
                    impl Drop for Running {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    if running.fetch_add(1, Ordering::SeqCst) > 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    let _running = Running(running);
                    turns.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
            },
        ));
        let _ = worker;
    }
    let observer = Client::connect([server.url()]).await.unwrap();
    let mut leaders = observer.observe("scheduler");
    let mut leader = within("a first leader", leaders.next()).await.unwrap().unwrap();
    for handover in 0..4 {
        let lease = format!("{:x}", leader.lease);
        let revoked = Instant::now();
        server.ctl(&["lease", "revoke", &lease]);
        let next = within("the next leader", leaders.next()).await.unwrap().unwrap();
        let took = revoked.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "hand-over {handover} took {took:?}"
        );
        assert_ne!(next.value, leader.value);
        leader = next;
    }
    within("the last turn started", async {
        while turns.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two workers' work ran at once"
    );
    for leader_loop in loops {
        leader_loop.stop().await;
    }
    assert_eq!(running.load(Ordering::SeqCst), 0);
    assert_eq!(
        observer.leader("scheduler").await.unwrap(),
        None,
        "every loop resigned or withdrew"
    );
}

/// A lone server stopped for 30 s and started again on the same data directory: the same
/// watch, observation, config and subscription streams carry on and see what changed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_streams_carry_on_across_a_30_second_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 1);
    cluster.wait_for_leader(WAIT);
    let endpoint = cluster.client_url(0).to_string();
    let writer = Client::connect([endpoint.clone()]).await.unwrap();
    let reader = Client::connect_with([endpoint.clone()], quick()).await.unwrap();
    writer
        .put_config("app", "limits", &serde_json::json!({"max": 1}))
        .await
        .unwrap();
    let first = writer.publish("events", "before").await.unwrap();

    let mut watch = reader.watch_prefix("jobs/", 0).await.unwrap();
    let mut leaders = reader.observe("boss");
    let mut config = reader.config::<serde_json::Value>("app", "limits").await.unwrap();
    let mut events = reader.subscribe_from("events", first).await.unwrap();
    let before = within("the message before", events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.payload, b"before");

    cluster.terminate(0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.restart(0);
    cluster.wait_for_leader(WAIT);

    writer.put("jobs/1", "after").await.unwrap();
    let leadership = writer
        .campaign("boss", "after", Duration::from_secs(5))
        .await
        .unwrap();
    writer
        .put_config("app", "limits", &serde_json::json!({"max": 2}))
        .await
        .unwrap();
    writer.publish("events", "after").await.unwrap();

    let batch = within("the watch after the outage", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.events[0].kv.as_ref().unwrap().key, &b"jobs/1"[..]);
    let leader = within("the observation after the outage", leaders.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leader.value, b"after");
    let limits = within("the config after the outage", config.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((limits.version, limits.value["max"].as_u64()), (2, Some(2)));
    let after = within("the message after the outage", events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.payload, b"after");
    leadership.resign().await.unwrap();
}

/// One session's lease carries many locks; `Client::close` waits until what dropped handles
/// held is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_carries_many_locks_and_close_releases_dropped_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::connect([server.url()]).await.unwrap();
    let session = client.session(Duration::from_secs(10)).await.unwrap();
    let accounts = session.lock("accounts").await.unwrap();
    let ledger = session.lock("ledger").await.unwrap();
    assert_eq!(
        (accounts.lease(), ledger.lease()),
        (session.lease(), session.lease())
    );
    let keys = |prefix: &'static str| {
        let client = client.clone();
        async move { client.get_prefix(prefix).await.unwrap().len() }
    };

    // Unlocking one lock keeps the lease for the other.
    accounts.unlock().await.unwrap();
    assert_eq!((keys("accounts/").await, keys("ledger/").await), (0, 1));
    // A dropped guard's key goes in the background; close() waits for it.
    drop(ledger);
    client.close().await;
    assert_eq!(keys("ledger/").await, 0, "released by the time close() returned");
    // A dropped guard with its own session: its lease is revoked, and close() waits for that.
    let own = client.lock("own").await.unwrap();
    let own_lease = own.lease();
    drop(own);
    client.close().await;
    assert_eq!(keys("own/").await, 0);
    let leases = server.ctl(&["lease", "list"]);
    assert!(!leases.contains(&format!("{own_lease:x}")), "{leases}");

    // Closing the session revokes the shared lease.
    let again = session.lock("accounts").await.unwrap();
    let lost = again.lost();
    session.close().await.unwrap();
    within("the shared lock lost", lost).await;
    assert_eq!(keys("accounts/").await, 0);
}

/// A shared session campaigns too: the leadership rides on the session's lease beside its
/// locks, resigning (or dropping the handle) leaves the lease and the locks, and closing the
/// session ends all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_carries_leaderships_beside_its_locks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::connect([server.url()]).await.unwrap();
    let session = client.session(Duration::from_secs(10)).await.unwrap();
    let shard = session.lock("shards/7").await.unwrap();
    let leadership = session.campaign("scheduler", "worker-1").await.unwrap();
    assert_eq!(leadership.lease(), session.lease());
    let leader = client.leader("scheduler").await.unwrap().unwrap();
    assert_eq!(
        (leader.value.as_slice(), leader.lease),
        (&b"worker-1"[..], session.lease())
    );

    // A rival with its own session waits, and leads once the shared one resigns.
    let rival = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .campaign("scheduler", "worker-2", Duration::from_secs(10))
                .await
        }
    });
    within("the rival queued", async {
        while client.get_prefix("scheduler/").await.unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        !rival.is_finished(),
        "the rival waits while the shared session leads"
    );
    leadership.resign().await.unwrap();
    let rival = within("the rival elected", rival).await.unwrap().unwrap();
    assert_eq!(
        client.leader("scheduler").await.unwrap().unwrap().value,
        b"worker-2"
    );
    assert!(!shard.is_lost(), "resigning kept the shared lease");
    assert_eq!(client.get_prefix("shards/7/").await.unwrap().len(), 1);
    rival.resign().await.unwrap();

    // A dropped leadership's key goes in the background (close() waits); the lease stays.
    let dropped = session.campaign("scheduler", "worker-1").await.unwrap();
    drop(dropped);
    client.close().await;
    assert!(client.leader("scheduler").await.unwrap().is_none());
    assert!(!shard.is_lost());

    // Closing the session ends the leadership and the lock together.
    let again = session.campaign("scheduler", "worker-1").await.unwrap();
    let lost = again.lost();
    session.close().await.unwrap();
    within("the shared leadership lost", lost).await;
    assert!(client.leader("scheduler").await.unwrap().is_none());
    assert_eq!(client.get_prefix("shards/7/").await.unwrap().len(), 0);
    drop(shard);
}

//! Leases, end to end: `etcdctl lease ...` prints what etcd 3.4's etcdctl prints (expected
//! outputs captured from etcd 3.4.23 running the same commands); expiry deletes every key of a
//! lease in one revision, on time; keepalives hold a lease; revoke; the `etcd-client` crate's
//! lease API; and remaining TTLs across a clean stop and across `kill -9`.
//!
//! The etcdctl checks are in [`etcdctl`].
//!
//! Timing assertions give the server generous upper bounds but never bounds that a wrong
//! implementation would also meet (e.g. a lease getting its full TTL back after a restart).

use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};

use crate::client_kv::connect;
use crate::harness::Server;

mod etcdctl;

/// How long any single expected response may take.
const WAIT: Duration = Duration::from_secs(15);
/// A lease with the minimum TTL (2 s with the default Raft timing) is gone at most this long
/// after it was granted or last kept alive.
const EXPIRY_LIMIT: Duration = Duration::from_secs(3);
/// ... and not before this (its deadline is 2 s after the grant is applied).
const EXPIRY_FLOOR: Duration = Duration::from_millis(1900);

/// The ID in `etcdctl lease grant`'s output, which must be exactly
/// `lease <16 hex digits> granted with TTL(<ttl>s)`.
fn granted(out: &str, ttl: i64) -> String {
    let id = out
        .strip_prefix("lease ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("not a grant: {out:?}"));
    assert_eq!(out, format!("lease {id} granted with TTL({ttl}s)\n"));
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    id.to_string()
}

/// The `remaining(Ns)` of `etcdctl lease timetolive`.
fn remaining(out: &str) -> i64 {
    out.split("remaining(")
        .nth(1)
        .and_then(|rest| rest.split("s)").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no remaining TTL in {out:?}"))
}

/// How many keys start with `prefix`.
async fn count(c: &mut Client, prefix: &str) -> i64 {
    c.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap()
        .count()
}

/// Polls until no key starts with `prefix` and returns how long after `since` that was seen;
/// fails once `limit` has passed.
async fn gone_after(c: &mut Client, prefix: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        let left = count(c, prefix).await;
        let elapsed = since.elapsed();
        if left == 0 {
            return elapsed;
        }
        assert!(
            elapsed < limit,
            "{left} keys under {prefix:?} still there {elapsed:?} later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next response on a watch stream, failing the test after [`WAIT`].
async fn next(stream: &mut WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch response in time")
        .unwrap()
        .expect("watch stream open")
}

/// A watch on every key under `prefix`, once the server has confirmed it.
async fn watch_prefix(c: &mut Client, prefix: &str) -> WatchStream {
    let mut stream = c
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    stream
}

/// Reads `n` PUT events off `stream` (they may come in several responses).
async fn skip_puts(stream: &mut WatchStream, n: usize) {
    let mut seen = 0;
    while seen < n {
        let r = next(stream).await;
        for e in r.events() {
            assert_eq!(e.event_type(), EventType::Put, "{r:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, n);
}

/// The next response must delete exactly `keys` (in any order), all at `revision`.
async fn expect_deletes(stream: &mut WatchStream, keys: &[&str], revision: i64) {
    let r = next(stream).await;
    let mut deleted: Vec<(String, i64)> = r
        .events()
        .iter()
        .map(|e| {
            assert_eq!(e.event_type(), EventType::Delete, "{r:?}");
            let kv = e.kv().unwrap();
            (kv.key_str().unwrap().to_string(), kv.mod_revision())
        })
        .collect();
    deleted.sort();
    let want: Vec<(String, i64)> = keys.iter().map(|k| (k.to_string(), revision)).collect();
    assert_eq!(
        deleted, want,
        "every key of the lease, one revision, one response"
    );
    assert_eq!(r.header().unwrap().revision(), revision);
}

/// A 2 s lease with three keys expires on time, and its keys go in one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_every_key_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let mut watch = watch_prefix(&mut c, "exp/").await;
    c.put("plain", "stays", None).await.unwrap();

    let since = Instant::now();
    let lease = c.lease_grant(2, None).await.unwrap();
    assert_eq!(lease.ttl(), 2);
    let keys = ["exp/a", "exp/b", "exp/c"];
    let mut last_put = 0;
    for key in keys {
        let put = c
            .put(key, "v", Some(PutOptions::new().with_lease(lease.id())))
            .await
            .unwrap();
        last_put = put.header().unwrap().revision();
    }
    assert_eq!(last_put, 5);

    let gone = gone_after(&mut c, "exp/", since, EXPIRY_LIMIT).await;
    assert!(gone >= EXPIRY_FLOOR, "expired {gone:?} after the grant");
    skip_puts(&mut watch, 3).await;
    expect_deletes(&mut watch, &keys, last_put + 1).await;

    let plain = c.get("plain", None).await.unwrap();
    assert_eq!(plain.kvs().len(), 1, "keys without the lease stay");
    assert_eq!(plain.header().unwrap().revision(), last_put + 1);
    let ttl = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    assert!(c.leases().await.unwrap().leases().is_empty());
}

/// A TTL below the minimum is raised to it, and the lease lives that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttls_are_raised_to_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let since = Instant::now();
    let lease = c.lease_grant(1, None).await.unwrap();
    assert_eq!(lease.ttl(), 2);
    c.put("short", "v", Some(PutOptions::new().with_lease(lease.id())))
        .await
        .unwrap();
    let ttl = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 2);
    let gone = gone_after(&mut c, "short", since, EXPIRY_LIMIT).await;
    assert!(gone >= EXPIRY_FLOOR, "a 1 s request lived only {gone:?}");
}

/// Keepalives every 500 ms hold a 2 s lease for 5 s; without them it expires on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let granted_at = Instant::now();
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("held", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    assert_eq!(keeper.id(), id);
    let mut last_sent = Instant::now();
    while granted_at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last_sent = Instant::now();
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("a keepalive response in time")
            .unwrap()
            .expect("keepalive stream open");
        assert_eq!((r.id(), r.ttl()), (id, 2));
    }
    assert_eq!(count(&mut c, "held").await, 1, "alive after 5 s of a 2 s lease");
    let ttl = c.lease_time_to_live(id, None).await.unwrap();
    assert!((1..=2).contains(&ttl.ttl()), "{ttl:?}");

    drop((keeper, responses));
    let gone = gone_after(&mut c, "held", last_sent, EXPIRY_LIMIT).await;
    assert!(gone >= EXPIRY_FLOOR, "expired {gone:?} after the last keepalive");
}

/// Revoke deletes the keys in one revision; a lease without keys goes without a revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_deletes_keys_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let mut watch = watch_prefix(&mut c, "rv/").await;
    let lease = c.lease_grant(60, None).await.unwrap();
    assert_eq!(lease.header().unwrap().revision(), 1, "a grant is no revision");
    let keys = ["rv/1", "rv/2", "rv/3"];
    for key in keys {
        c.put(key, "v", Some(PutOptions::new().with_lease(lease.id())))
            .await
            .unwrap();
    }
    let revoked = c.lease_revoke(lease.id()).await.unwrap();
    assert_eq!(revoked.header().unwrap().revision(), 5);
    assert_eq!(count(&mut c, "rv/").await, 0);
    skip_puts(&mut watch, 3).await;
    expect_deletes(&mut watch, &keys, 5).await;

    let empty = c.lease_grant(60, None).await.unwrap();
    let revoked = c.lease_revoke(empty.id()).await.unwrap();
    assert_eq!(
        revoked.header().unwrap().revision(),
        5,
        "nothing deleted, no revision"
    );
    assert_eq!(c.lease_time_to_live(empty.id(), None).await.unwrap().ttl(), -1);
    let err = c.lease_revoke(empty.id()).await.unwrap_err();
    let etcd_client::Error::GRpcStatus(status) = err else {
        panic!("grpc status expected: {err}")
    };
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "etcdserver: requested lease not found");
}

/// The lease API as a Rust user of `etcd-client` sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_lease_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;

    // A client-chosen ID, once.
    let id = 0x1234_abcd;
    let mine = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(id)))
        .await
        .unwrap();
    assert_eq!((mine.id(), mine.ttl()), (id, 60));
    let err = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(id)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("etcdserver: lease already exists"),
        "{err}"
    );
    let etcd_client::Error::GRpcStatus(status) = err else {
        panic!("grpc status expected")
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let err = c.lease_grant(9_000_000_001, None).await.unwrap_err();
    let etcd_client::Error::GRpcStatus(status) = err else {
        panic!("grpc status expected")
    };
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::OutOfRange, "etcdserver: too large lease TTL")
    );

    let other = c.lease_grant(30, None).await.unwrap().id();
    for key in ["m/2", "m/1"] {
        c.put(key, "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
    }
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 60));
    assert!((58..=59).contains(&ttl.ttl()), "{ttl:?}");
    assert_eq!(ttl.keys(), [b"m/1".to_vec(), b"m/2".to_vec()]);
    let without = c.lease_time_to_live(id, None).await.unwrap();
    assert!(without.keys().is_empty(), "keys only when asked for");

    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(ids.len(), 2);
    ids.sort_unstable();
    let mut want = vec![id, other];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Keepalive stream: each request answered with the TTL; 0 once the lease is gone.
    let (mut keeper, mut stream) = c.lease_keep_alive(other).await.unwrap();
    for _ in 0..2 {
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((r.id(), r.ttl()), (other, 30));
    }
    c.lease_revoke(other).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((r.id(), r.ttl()), (other, 0));
    let err = c.lease_keep_alive(other).await.unwrap_err();
    assert!(err.to_string().contains("lease not found"), "{err}");

    // Writes naming a missing lease fail and change nothing, in a txn too.
    let before = c.get("m/", None).await.unwrap().header().unwrap().revision();
    let err = c
        .put("x", "v", Some(PutOptions::new().with_lease(other)))
        .await
        .unwrap_err();
    let etcd_client::Error::GRpcStatus(status) = err else {
        panic!("grpc status expected")
    };
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::NotFound, "etcdserver: requested lease not found")
    );
    let txn = Txn::new().and_then([
        TxnOp::put("x", "v", None),
        TxnOp::put("m/1", "moved", Some(PutOptions::new().with_lease(other))),
    ]);
    let err = c.txn(txn).await.unwrap_err();
    assert!(
        err.to_string().contains("etcdserver: requested lease not found"),
        "{err}"
    );
    let after = c.get("x", None).await.unwrap();
    assert!(after.kvs().is_empty());
    assert_eq!(after.header().unwrap().revision(), before);
    let m1 = c.get("m/1", None).await.unwrap();
    assert_eq!((m1.kvs()[0].value(), m1.kvs()[0].lease()), (&b"v"[..], id));

    // ignore_lease keeps the key on its lease; a put without one detaches it.
    c.put("m/1", "w", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    c.put("m/2", "w", None).await.unwrap();
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.keys(), [b"m/1".to_vec()]);
}

/// A clean stop records every lease's remaining time: after the restart each lease continues
/// its countdown with its keys.
#[test]
fn leases_continue_after_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let since = Instant::now();
    let long = granted(&server.ctl(&["lease", "grant", "60"]), 60);
    let short = granted(&server.ctl(&["lease", "grant", "30"]), 30);
    server.ctl(&["put", "l1", "v", &format!("--lease={long}")]);
    server.ctl(&["put", "s1", "v", &format!("--lease={short}")]);
    server.ctl(&["put", "s2", "v", &format!("--lease={short}")]);
    server.ctl(&["put", "plain", "v"]);
    // Without the final checkpoint both leases would come back with their full TTL (their
    // slack, 30 s and 15 s, is far from used up).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(server.terminate().success());
    server.restart();
    let elapsed = i64::try_from(since.elapsed().as_secs()).unwrap();

    assert_eq!(
        server.ctl(&["lease", "list"]),
        format!("found 2 leases\n{long}\n{short}\n")
    );
    for (id, ttl, keys) in [(&long, 60, "[l1]"), (&short, 30, "[s1 s2]")] {
        let out = server.ctl(&["lease", "timetolive", "--keys", id]);
        let left = remaining(&out);
        assert_eq!(
            out,
            format!("lease {id} granted with TTL({ttl}s), remaining({left}s), attached keys({keys})\n")
        );
        assert!(
            (ttl - (elapsed + 2)..=ttl - 2).contains(&left),
            "{out} ({elapsed} s since the grant)"
        );
    }
    assert_eq!(
        server.ctl(&["get", "", "--prefix", "--keys-only"]),
        "l1\n\nplain\n\ns1\n\ns2\n\n"
    );
    // The restarted leader's lease clock runs: keepalives are answered and count down from the
    // full TTL again (a member whose clock does not run answers "not leader", and reports the
    // recorded time, the full TTL, without counting down).
    assert_eq!(
        server.ctl(&["lease", "keep-alive", "--once", &short]),
        format!("lease {short} keepalived with TTL(30)\n")
    );
    let out = server.ctl(&["lease", "timetolive", &short]);
    assert!((28..=29).contains(&remaining(&out)), "{out}");
}

/// After `kill -9` a lease continues from its last checkpoint: a 4 s lease (slack 2 s) is
/// checkpointed 2 s in; killed at 2.6 s it comes back with about 2 s, not 4, and expires then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_continue_from_their_checkpoint_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let id = c.lease_grant(4, None).await.unwrap().id();
    c.put("k9", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    server.kill9();
    server.restart();
    let restarted = Instant::now();

    let mut c = connect(&server).await;
    assert_eq!(
        count(&mut c, "k9").await,
        1,
        "the key survives; the lease is not expired early"
    );
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 4);
    assert!(
        (0..=2).contains(&ttl.ttl()),
        "recorded about 2 s left, a full TTL would show 3: {ttl:?}"
    );
    assert_eq!(ttl.keys(), [b"k9".to_vec()]);
    let gone = gone_after(&mut c, "k9", restarted, Duration::from_millis(3500)).await;
    assert!(
        gone >= Duration::from_millis(500),
        "expired {gone:?} after the restart"
    );
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
}

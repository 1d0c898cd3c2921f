//! The Lock service through the `etcd-client` crate: the key `name/<lease hex>`, waiting in
//! line, Unlock, mutual exclusion under 32 contenders, a crashed holder's lease handing the
//! lock on (and its fencing token dying with it), and a cancelled Lock leaving nothing behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, LeaseGrantOptions, LockOptions, Txn, TxnOp};

use crate::harness::Server;

use super::support::{
    EXPIRY_LIMIT, FAST, STILL_WAITING, WAIT, connect, kept_alive, keys_under, status, wait_keys,
};

fn with_lease(lease: i64) -> Option<LockOptions> {
    Some(LockOptions::new().with_lease(lease))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_unlock_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let lease = 0xabc;
    c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(lease)))
        .await
        .unwrap();

    // The key is the name, a slash and the lease in lowercase hex (no padding), as in etcd.
    let locked = c.lock("door", with_lease(lease)).await.unwrap();
    assert_eq!(locked.key(), b"door/abc");
    let rev = locked.header().unwrap().revision();
    let got = c.get("door/abc", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.lease(), kv.value()),
        (rev, rev, lease, &b""[..]),
        "an empty key on the caller's lease, created by the Lock"
    );

    // Locking again with the same lease is the same acquisition: at once, nothing written.
    let again = tokio::time::timeout(WAIT, c.lock("door", with_lease(lease)))
        .await
        .expect("a second Lock with the holder's lease returns at once")
        .unwrap();
    assert_eq!(again.key(), locked.key());
    assert_eq!(again.header().unwrap().revision(), rev);

    // Another lease waits in line, behind the holder.
    let other = c.lease_grant(60, None).await.unwrap().id();
    let other_key = format!("door/{other:x}");
    let mut c2 = connect(&server).await;
    let waiter = tokio::spawn(async move { c2.lock("door", with_lease(other)).await });
    wait_keys(&mut c, "door/", &["door/abc".into(), other_key.clone()]).await;
    tokio::time::sleep(STILL_WAITING).await;
    assert!(!waiter.is_finished(), "the lock is held: the second Lock waits");

    let unlocked = c.unlock(locked.key()).await.unwrap();
    let unlock_rev = unlocked.header().unwrap().revision();
    assert_eq!(unlock_rev, rev + 2, "the waiter's put, then the delete");
    let second = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiter gets the lock once it is unlocked")
        .unwrap()
        .unwrap();
    assert_eq!(second.key(), other_key.as_bytes());
    assert!(second.header().unwrap().revision() >= unlock_rev);
    assert_eq!(keys_under(&mut c, "door/").await, [other_key.as_str()]);

    c.unlock(second.key()).await.unwrap();
    assert!(keys_under(&mut c, "door/").await.is_empty());
    // Unlocking a key that is not there deletes nothing and is no error (as in etcd).
    let before = c.get("door/", None).await.unwrap().header().unwrap().revision();
    let nothing = c.unlock("door/abc").await.unwrap();
    assert_eq!(nothing.header().unwrap().revision(), before);
}

/// Lock with a lease that does not exist, or no longer does, fails with etcd's error (etcd
/// 3.4.23 sends it with code Unknown: its Lock service runs the client library's mutex and
/// returns that library's error, which carries no gRPC code) and leaves no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_with_a_missing_lease_fails_as_in_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let never = status(c.lock("door", with_lease(0x7777)).await.unwrap_err());
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.lease_revoke(lease).await.unwrap();
    let revoked = status(c.lock("door", with_lease(lease)).await.unwrap_err());
    assert!(keys_under(&mut c, "door/").await.is_empty());
    for err in [never, revoked] {
        assert_eq!(
            (err.message(), err.code()),
            ("etcdserver: requested lease not found", tonic::Code::Unknown)
        );
    }
}

/// 32 contenders, each with its own connection and lease, take the lock 50 times each to
/// increment a counter with a get and a put: no increment is lost and no two ever hold the
/// lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contenders_exclude_each_other() {
    const CONTENDERS: usize = 32;
    const ROUNDS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let holders = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONTENDERS {
        let mut c = connect(&server).await;
        let lease = c.lease_grant(300, None).await.unwrap().id();
        let (holders, overlaps) = (holders.clone(), overlaps.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let locked = c.lock("counter-lock", with_lease(lease)).await.unwrap();
                if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let got = c.get("counter", None).await.unwrap();
                let n: u64 = got
                    .kvs()
                    .first()
                    .map_or(0, |kv| kv.value_str().unwrap().parse().unwrap());
                tokio::time::sleep(Duration::from_millis(1)).await;
                c.put("counter", (n + 1).to_string(), None).await.unwrap();
                holders.fetch_sub(1, Ordering::SeqCst);
                c.unlock(locked.key()).await.unwrap();
            }
        }));
    }
    let all = futures::future::join_all(tasks);
    let done = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .unwrap_or_else(|_| panic!("not done after {:?}", started.elapsed()));
    for task in done {
        task.unwrap();
    }
    let took = started.elapsed();
    eprintln!("{CONTENDERS} contenders x {ROUNDS} rounds took {took:?}");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    let mut c = connect(&server).await;
    let counter = c.get("counter", None).await.unwrap();
    let kv = &counter.kvs()[0];
    let total = (CONTENDERS * ROUNDS) as i64;
    assert_eq!(kv.value_str().unwrap(), total.to_string(), "lost increments");
    assert_eq!(kv.version(), total);
    assert!(keys_under(&mut c, "counter-lock/").await.is_empty());
}

/// Holder A's lease (1 s) is never renewed: waiter B gets the lock when it expires, and a
/// write fenced by A's lock key and revision no longer applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_holder_hands_over_and_its_fence_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let mut a = connect(&server).await;
    let granted = Instant::now();
    let lease_a = a.lease_grant(1, None).await.unwrap();
    assert_eq!(lease_a.ttl(), 1, "the minimum TTL with these Raft timings");
    let lease_a = lease_a.id();
    let locked_a = a.lock("job", with_lease(lease_a)).await.unwrap();
    let key_a = String::from_utf8(locked_a.key().to_vec()).unwrap();
    let rev_a = a.get(key_a.as_str(), None).await.unwrap().kvs()[0].create_revision();
    assert_eq!(rev_a, locked_a.header().unwrap().revision());
    let fence_a = Compare::create_revision(key_a.as_str(), CompareOp::Equal, rev_a);
    let fenced = Txn::new()
        .when([fence_a.clone()])
        .and_then([TxnOp::put("output", "from A", None)]);
    assert!(
        a.txn(fenced.clone()).await.unwrap().succeeded(),
        "A's fence holds while A does"
    );

    let mut b = connect(&server).await;
    let (lease_b, keeper) = kept_alive(&mut b, 5, Duration::from_millis(500)).await;
    let key_b = format!("job/{lease_b:x}");
    let waiter = tokio::spawn(async move {
        let locked = b.lock("job", with_lease(lease_b)).await.unwrap();
        (locked, granted.elapsed())
    });
    let (locked_b, took) = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("B gets the lock once A's lease expires")
        .unwrap();
    assert_eq!(locked_b.key(), key_b.as_bytes());
    assert!(
        took >= Duration::from_millis(900) && took <= EXPIRY_LIMIT,
        "B got the lock {took:?} after A's 1 s lease was granted"
    );
    assert_eq!(
        a.get(key_a.as_str(), None).await.unwrap().count(),
        0,
        "A's key went with its lease"
    );
    assert_eq!(a.lease_time_to_live(lease_a, None).await.unwrap().ttl(), -1);

    // A, unaware, writes under its fence: nothing applies.
    let late = Txn::new()
        .when([fence_a])
        .and_then([TxnOp::put("output", "late A", None)]);
    assert!(!a.txn(late).await.unwrap().succeeded(), "A's fence must fail");
    let output = a.get("output", None).await.unwrap();
    assert_eq!(output.kvs()[0].value_str().unwrap(), "from A");
    // B's fence holds.
    let rev_b = a.get(key_b.as_str(), None).await.unwrap().kvs()[0].create_revision();
    let fenced_b = Txn::new()
        .when([Compare::create_revision(key_b.as_str(), CompareOp::Equal, rev_b)])
        .and_then([TxnOp::put("output", "from B", None)]);
    assert!(a.txn(fenced_b).await.unwrap().succeeded());

    // A's late Unlock removes nothing of B's; A cannot lock again with its dead lease.
    a.unlock(key_a.as_str()).await.unwrap();
    assert_eq!(keys_under(&mut a, "job/").await, [key_b]);
    let err = status(a.lock("job", with_lease(lease_a)).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: requested lease not found");
    keeper.abort();
}

/// A Lock the client gives up on (drops its future) while it waits leaves no key behind:
/// when the holder unlocks, the next locker gets the lock at once, long before the
/// cancelled waiter's lease would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_lock_leaves_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let holder = c.lease_grant(60, None).await.unwrap().id();
    let locked = c.lock("gate", with_lease(holder)).await.unwrap();
    let key_h = format!("gate/{holder:x}");

    let mut w = connect(&server).await;
    let lease_w = w.lease_grant(60, None).await.unwrap().id();
    let key_w = format!("gate/{lease_w:x}");
    let asked = Instant::now();
    let cancelled = tokio::spawn(async move { w.lock("gate", with_lease(lease_w)).await });
    wait_keys(&mut c, "gate/", &[key_h.clone(), key_w.clone()]).await;
    tokio::time::sleep(Duration::from_millis(200).saturating_sub(asked.elapsed())).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());

    let mut t = connect(&server).await;
    let lease_t = t.lease_grant(60, None).await.unwrap().id();
    let key_t = format!("gate/{lease_t:x}");
    let next = tokio::spawn(async move { t.lock("gate", with_lease(lease_t)).await });
    // The cancelled waiter's key goes; the new one queues behind the holder.
    wait_keys(&mut c, "gate/", &[key_h.clone(), key_t.clone()]).await;

    let unlocked = Instant::now();
    c.unlock(locked.key()).await.unwrap();
    let got = tokio::time::timeout(WAIT, next)
        .await
        .expect("the next locker gets the lock")
        .unwrap()
        .unwrap();
    let took = unlocked.elapsed();
    assert_eq!(got.key(), key_t.as_bytes());
    assert!(
        took < Duration::from_secs(1),
        "the next locker waited {took:?} after the unlock"
    );
    assert_eq!(keys_under(&mut c, "gate/").await, [key_t]);
    let ttl = c.lease_time_to_live(lease_w, None).await.unwrap().ttl();
    assert!(
        ttl > 50,
        "the cancelled waiter's lease lives on ({ttl} s): its key was deleted, not expired"
    );
}

/// A held lock survives `kill -9` of the server: after the restart the holder's key is still
/// there on its lease, a new Lock waits behind it, and the holder's Unlock hands it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_lock_survives_server_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let locked = c.lock("vault", with_lease(lease)).await.unwrap();
    let key = format!("vault/{lease:x}");
    assert_eq!(locked.key(), key.as_bytes());

    server.kill9();
    server.restart();
    let mut c = connect(&server).await;
    assert_eq!(keys_under(&mut c, "vault/").await, [key.as_str()]);
    let ttl = c.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(ttl > 30, "the holder's lease lives on ({ttl} s)");

    let other = c.lease_grant(60, None).await.unwrap().id();
    let other_key = format!("vault/{other:x}");
    let mut c2 = connect(&server).await;
    let waiter = tokio::spawn(async move { c2.lock("vault", with_lease(other)).await });
    wait_keys(&mut c, "vault/", &[key.clone(), other_key.clone()]).await;
    tokio::time::sleep(STILL_WAITING).await;
    assert!(!waiter.is_finished(), "still held after the restart");
    c.unlock(locked.key()).await.unwrap();
    let got = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiter gets the lock once it is unlocked")
        .unwrap()
        .unwrap();
    assert_eq!(got.key(), other_key.as_bytes());
}

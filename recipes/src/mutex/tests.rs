use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_proto::etcdserverpb::TxnRequest;

use super::*;
use crate::kv::put_op;
use crate::memory::MemoryKv;
use crate::test_util::{bounded, keys_by_creation, session, until};

/// The keys under `name/`, in queue (create revision) order.
async fn queued(kv: &MemoryKv, name: &str) -> Vec<Vec<u8>> {
    keys_by_creation(kv, &prefix_of(name)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_exclude_each_other() {
    let kv = MemoryKv::new();
    let counter = Arc::new(AtomicU64::new(0));
    let holders = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (kv, counter, holders) = (kv.clone(), counter.clone(), holders.clone());
        tasks.push(tokio::spawn(async move {
            let session = session(&kv).await;
            let mut mutex = Mutex::new(&session, "counter");
            for _ in 0..10 {
                mutex.lock().await.unwrap();
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                let seen = counter.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                counter.store(seen + 1, Ordering::SeqCst);
                holders.fetch_sub(1, Ordering::SeqCst);
                mutex.unlock().await.unwrap();
            }
        }));
    }
    for task in tasks {
        bounded(task).await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 120);
}

#[tokio::test(start_paused = true)]
async fn waiters_queue_in_create_order_each_watching_only_its_predecessor() {
    let kv = MemoryKv::new();
    let holder_session = session(&kv).await;
    let mut holder = Mutex::new(&holder_session, "fifo");
    holder.lock().await.unwrap();
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for i in 0..5 {
        let session = session(&kv).await;
        let order_tx = order_tx.clone();
        waiters.push(tokio::spawn(async move {
            let mut mutex = Mutex::new(&session, "fifo");
            mutex.lock().await.unwrap();
            order_tx.send(i).unwrap();
            mutex.unlock().await.unwrap();
        }));
        until(async || queued(&kv, "fifo").await.len() == i + 2).await;
    }
    let keys = queued(&kv, "fifo").await;
    until(async || keys.iter().map(|key| kv.watchers(key)).sum::<usize>() == 5).await;
    let watching: Vec<usize> = keys.iter().map(|key| kv.watchers(key)).collect();
    // Every key but the last queued has one watcher: its successor's.
    assert_eq!(kv.watchers(holder.key()), 1, "{watching:?}");
    assert!(watching.iter().all(|&n| n <= 1), "{watching:?}");

    holder.unlock().await.unwrap();
    for waiter in waiters {
        bounded(waiter).await.unwrap();
    }
    let mut acquired = Vec::new();
    while let Ok(i) = order.try_recv() {
        acquired.push(i);
    }
    assert_eq!(acquired, [0, 1, 2, 3, 4]);
    assert!(queued(&kv, "fifo").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_expired_holder_hands_the_lock_on_and_its_fence_fails() {
    let kv = MemoryKv::new();
    let (first_session, second_session) = (session(&kv).await, session(&kv).await);
    let mut first = Mutex::new(&first_session, "fence");
    first.lock().await.unwrap();
    let stale_fence = first.fence().unwrap();
    let mut second = Mutex::new(&second_session, "fence");
    let waiting = tokio::spawn(async move {
        second.lock().await.unwrap();
        second
    });
    until(async || queued(&kv, "fence").await.len() == 2).await;
    kv.expire_lease(first_session.lease());
    let second = bounded(waiting).await.unwrap();

    let guarded = |fence: Compare| TxnRequest {
        compare: vec![fence],
        success: vec![put_op("protected", "", 0)],
        failure: vec![],
    };
    assert!(!kv.txn(guarded(stale_fence)).await.unwrap().succeeded);
    assert!(kv.txn(guarded(second.fence().unwrap())).await.unwrap().succeeded);
    assert!(!first.is_owner().await.unwrap());
    assert!(second.is_owner().await.unwrap());
    assert!(second.header().unwrap().revision >= second.revision());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_lease_ends_gets_session_expired() {
    let kv = MemoryKv::new();
    let holder_session = session(&kv).await;
    let mut holder = Mutex::new(&holder_session, "jepsen");
    holder.lock().await.unwrap();

    // Kept alive here: the keep-alive notices the lease is gone and the wait ends at once.
    let waiter_session = session(&kv).await;
    let mut waiter = Mutex::new(&waiter_session, "jepsen");
    let waiting = tokio::spawn(async move { waiter.lock().await });
    until(async || queued(&kv, "jepsen").await.len() == 2).await;
    kv.expire_lease(waiter_session.lease());
    assert!(matches!(
        bounded(waiting).await.unwrap(),
        Err(Error::SessionExpired)
    ));

    // Kept alive elsewhere (the server's Lock service): the wait ends when the holder leaves,
    // and the waiter must not think it holds the lock then.
    let lease = kv.lease_grant(10).await.unwrap().id;
    let mut waiter = Mutex::new(&Session::from_lease(kv.clone(), lease), "jepsen");
    let waiting = tokio::spawn(async move { waiter.lock().await });
    until(async || queued(&kv, "jepsen").await.len() == 2).await;
    kv.expire_lease(lease);
    holder.unlock().await.unwrap();
    assert!(matches!(
        bounded(waiting).await.unwrap(),
        Err(Error::SessionExpired)
    ));
    assert!(queued(&kv, "jepsen").await.is_empty());

    // A session already gone cannot even queue.
    let mut late = Mutex::new(&Session::from_lease(kv.clone(), lease), "jepsen");
    assert!(matches!(late.lock().await, Err(Error::SessionExpired)));
}

#[tokio::test(start_paused = true)]
async fn try_lock_on_a_held_lock_is_locked_and_leaves_no_key() {
    let kv = MemoryKv::new();
    let (first_session, second_session) = (session(&kv).await, session(&kv).await);
    let mut first = Mutex::new(&first_session, "try");
    assert!(matches!(first.fence(), Err(Error::NotHeld(_))));
    first.try_lock().await.unwrap();
    let mut second = Mutex::new(&second_session, "try");
    assert!(matches!(second.try_lock().await, Err(Error::Locked)));
    assert_eq!(queued(&kv, "try").await, [first.key().to_vec()]);
    assert_eq!(second.revision(), 0);
    first.unlock().await.unwrap();
    second.try_lock().await.unwrap();
    assert!(second.is_owner().await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_removes_its_key() {
    let kv = MemoryKv::new();
    let (first_session, second_session) = (session(&kv).await, session(&kv).await);
    let mut first = Mutex::new(&first_session, "cancel");
    first.lock().await.unwrap();
    let mut second = Mutex::new(&second_session, "cancel");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), second.lock())
            .await
            .is_err()
    );
    until(async || queued(&kv, "cancel").await.len() == 1).await;
    assert_eq!(second.revision(), 0);
    assert!(matches!(second.fence(), Err(Error::NotHeld(_))));
    // The lock is still first's, and free for second once first lets go.
    first.unlock().await.unwrap();
    bounded(second.lock()).await.unwrap();
}

#[test]
fn keys_are_the_lease_in_lowercase_hex() {
    assert_eq!(lease_key(&prefix_of("a"), 0x7e57_abcd), b"a/7e57abcd");
}

/// A waiter whose watch breaks (the endpoint it talked to died) keeps its place: it watches
/// again and takes the lock when the holder releases it, after waiters behind it have not.
#[tokio::test(start_paused = true)]
async fn a_waiter_keeps_its_place_when_its_watch_breaks() {
    let kv = crate::test_util::FlakyKv::default();
    let holder_session = crate::session::Session::new(kv.clone(), 10).await.unwrap();
    let mut holder = Mutex::new(&holder_session, "job");
    holder.lock().await.unwrap();
    let waiter_session = crate::session::Session::new(kv.clone(), 10).await.unwrap();
    let waiting = tokio::spawn(async move {
        let mut waiter = Mutex::new(&waiter_session, "job");
        waiter.lock().await.map(|()| waiter.key().to_vec())
    });
    until(async || keys_by_creation(&kv.inner, b"job/").await.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        kv.cut_watches();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!waiting.is_finished(), "still waiting for the holder");
    holder.unlock().await.unwrap();
    let key = bounded(waiting).await.unwrap().unwrap();
    assert_eq!(keys_by_creation(&kv.inner, b"job/").await, [key]);
}

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::memory::MemoryKv;
use crate::test_util::{bounded, keys_by_creation, session, until};

/// The keys under `name/`, in queue (create revision) order.
async fn queued(kv: &MemoryKv, name: &str) -> Vec<Vec<u8>> {
    keys_by_creation(kv, &prefix_of(name)).await
}

/// Acquires in a task, which returns the handle once it holds a slot.
fn spawn_acquire(session: &Session<MemoryKv>, limit: usize) -> tokio::task::JoinHandle<Semaphore<MemoryKv>> {
    let session = session.clone();
    tokio::spawn(async move {
        let mut semaphore = Semaphore::new(&session, "sem", limit).unwrap();
        semaphore.acquire().await.unwrap();
        semaphore
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_limit_holders() {
    let kv = MemoryKv::new();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (kv, inside, most) = (kv.clone(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let mut semaphore = Semaphore::new(&session(&kv).await, "sem", 3).unwrap();
            for _ in 0..5 {
                semaphore.acquire().await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= 3, "{now} holders of 3 slots");
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                semaphore.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        bounded(task).await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 3);
    assert!(queued(&kv, "sem").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crashed_holders_slot_is_freed_by_its_lease() {
    let kv = MemoryKv::new();
    let crashed = session(&kv).await;
    let mut first = Semaphore::new(&crashed, "sem", 2).unwrap();
    first.acquire().await.unwrap();
    let mut second = Semaphore::new(&session(&kv).await, "sem", 2).unwrap();
    second.acquire().await.unwrap();
    let waiter = spawn_acquire(&session(&kv).await, 2);
    until(async || queued(&kv, "sem").await.len() == 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());

    kv.expire_lease(crashed.lease());
    let waiter = bounded(waiter).await.unwrap();
    let holders = queued(&kv, "sem").await;
    assert_eq!(holders, [second.key().unwrap(), waiter.key().unwrap()]);
}

#[tokio::test(start_paused = true)]
async fn waiters_watch_one_key_each_and_any_release_lets_the_front_in() {
    let kv = MemoryKv::new();
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut holder = Semaphore::new(&session(&kv).await, "sem", 2).unwrap();
        holder.acquire().await.unwrap();
        holders.push(holder);
    }
    let mut waiters = Vec::new();
    for queued_now in 3..=5 {
        waiters.push(spawn_acquire(&session(&kv).await, 2));
        until(async || queued(&kv, "sem").await.len() == queued_now).await;
    }
    let keys = queued(&kv, "sem").await;
    // The front waiter watches both holders; each other waiter the waiter just ahead of it.
    until(async || keys.iter().map(|key| kv.watchers(key)).sum::<usize>() == 4).await;
    let watching: Vec<usize> = keys.iter().map(|key| kv.watchers(key)).collect();
    assert_eq!(watching, [1, 1, 1, 1, 0]);

    // The newer holder leaves: the front waiter must notice although the oldest stays.
    holders[1].release().await.unwrap();
    let mut third = bounded(waiters.remove(0)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(waiters.iter().all(|waiter| !waiter.is_finished()));
    // The next waiter has moved to the front, watching the two holders.
    let keys = queued(&kv, "sem").await;
    until(async || kv.watchers(&keys[0]) == 1 && kv.watchers(&keys[1]) == 1).await;

    holders[0].release().await.unwrap();
    let mut fourth = bounded(waiters.remove(0)).await.unwrap();
    third.release().await.unwrap();
    let mut fifth = bounded(waiters.remove(0)).await.unwrap();
    fourth.release().await.unwrap();
    fifth.release().await.unwrap();
    assert!(queued(&kv, "sem").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn two_releases_at_once_let_two_waiters_in() {
    let kv = MemoryKv::new();
    let crashed = session(&kv).await;
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut holder = Semaphore::new(&crashed, "sem", 3).unwrap();
        holder.acquire().await.unwrap();
        holders.push(holder);
    }
    let mut waiters = Vec::new();
    for queued_now in 4..=6 {
        waiters.push(spawn_acquire(&session(&kv).await, 3));
        until(async || queued(&kv, "sem").await.len() == queued_now).await;
    }
    // One lease ends with all three holders' keys in one revision.
    kv.expire_lease(crashed.lease());
    for waiter in waiters {
        bounded(waiter).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn try_acquire_on_a_full_semaphore_is_locked_and_leaves_no_key() {
    let kv = MemoryKv::new();
    let session = session(&kv).await;
    let mut first = Semaphore::new(&session, "sem", 1).unwrap();
    first.try_acquire().await.unwrap();
    let mut second = Semaphore::new(&session, "sem", 1).unwrap();
    assert!(matches!(second.try_acquire().await, Err(Error::Locked)));
    assert_eq!(queued(&kv, "sem").await, [first.key().unwrap()]);
    assert!(matches!(second.release().await, Err(Error::NotHeld(_))));
    assert!(matches!(first.acquire().await, Err(Error::InvalidArgument(_))));
    first.release().await.unwrap();
    second.try_acquire().await.unwrap();
    assert!(
        kv.txn(TxnRequest {
            compare: vec![second.fence().unwrap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .succeeded
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_lease_ends_gets_session_expired_and_leaves_no_key() {
    let kv = MemoryKv::new();
    let mut holder = Semaphore::new(&session(&kv).await, "sem", 1).unwrap();
    holder.acquire().await.unwrap();
    let waiter_session = session(&kv).await;
    let mut waiter = Semaphore::new(&waiter_session, "sem", 1).unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    until(async || queued(&kv, "sem").await.len() == 2).await;
    kv.expire_lease(waiter_session.lease());
    assert!(matches!(
        bounded(waiting).await.unwrap(),
        Err(Error::SessionExpired)
    ));
    assert_eq!(queued(&kv, "sem").await, [holder.key().unwrap()]);
}

#[tokio::test]
async fn a_zero_limit_is_refused() {
    let kv = MemoryKv::new();
    let session = Session::from_lease(kv, 1);
    assert!(matches!(
        Semaphore::new(&session, "sem", 0),
        Err(Error::InvalidArgument(_))
    ));
}

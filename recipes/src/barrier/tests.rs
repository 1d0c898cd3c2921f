use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::memory::MemoryKv;
use crate::test_util::{bounded, keys_by_creation, session};

/// The keys under `prefix`.
async fn keys(kv: &MemoryKv, prefix: &str) -> Vec<Vec<u8>> {
    keys_by_creation(kv, prefix.as_bytes()).await
}

#[tokio::test(start_paused = true)]
async fn wait_blocks_while_the_barrier_is_held() {
    let kv = MemoryKv::new();
    let barrier = Barrier::new(kv.clone(), "gate");
    bounded(barrier.wait()).await.unwrap(); // not held: through at once

    assert!(barrier.hold().await.unwrap());
    assert!(!barrier.hold().await.unwrap(), "already held");
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let barrier = Barrier::new(kv.clone(), "gate");
            tokio::spawn(async move { barrier.wait().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(waiters.iter().all(|waiter| !waiter.is_finished()));
    assert_eq!(kv.watchers(b"gate"), 3);

    barrier.release().await.unwrap();
    for waiter in waiters {
        bounded(waiter).await.unwrap().unwrap();
    }
    assert!(keys(&kv, "gate").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn five_participants_enter_together_and_leave_together() {
    let kv = MemoryKv::new();
    let (entering, leaving) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut participants = Vec::new();
    for _ in 0..5 {
        let (kv, entering, leaving) = (kv.clone(), entering.clone(), leaving.clone());
        participants.push(tokio::spawn(async move {
            let session = session(&kv).await;
            let mut barrier = DoubleBarrier::new(&session, "double", 5).unwrap();
            entering.fetch_add(1, Ordering::SeqCst);
            barrier.enter().await.unwrap();
            assert_eq!(
                entering.load(Ordering::SeqCst),
                5,
                "entered before everyone arrived"
            );
            assert!(barrier.key().is_some());
            leaving.fetch_add(1, Ordering::SeqCst);
            barrier.leave().await.unwrap();
            assert_eq!(leaving.load(Ordering::SeqCst), 5, "left before everyone did");
            assert!(barrier.key().is_none());
        }));
        // Arrivals a moment apart, so that early ones really wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for participant in participants {
        bounded(participant).await.unwrap();
    }
    assert!(
        keys(&kv, "double/").await.is_empty(),
        "waiter keys and the ready key are gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_participant_too_many_is_refused_and_leaves_no_key() {
    let kv = MemoryKv::new();
    let mut entered = Vec::new();
    for _ in 0..2 {
        let session = session(&kv).await;
        entered.push(tokio::spawn(async move {
            let mut barrier = DoubleBarrier::new(&session, "pair", 2).unwrap();
            barrier.enter().await.unwrap();
            barrier
        }));
    }
    let mut entered: Vec<_> = futures::future::join_all(entered)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut third = DoubleBarrier::new(&session(&kv).await, "pair", 2).unwrap();
    let refused = third.enter().await.unwrap_err();
    assert_eq!(refused.to_string(), "too many clients");
    assert_eq!(keys(&kv, "pair/waiters/").await.len(), 2);
    assert!(matches!(third.leave().await, Err(Error::NotHeld(_))));

    let (mut first, mut second) = (entered.remove(0), entered.remove(0));
    let leaving = tokio::spawn(async move { first.leave().await });
    bounded(second.leave()).await.unwrap();
    bounded(leaving).await.unwrap().unwrap();
    assert!(keys(&kv, "pair/").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_crashed_participant_does_not_block_the_others_leaving() {
    let kv = MemoryKv::new();
    let crashed = session(&kv).await;
    let mut sessions = vec![crashed.clone(), session(&kv).await, session(&kv).await];
    let mut tasks = Vec::new();
    for session in sessions.drain(..) {
        tasks.push(tokio::spawn(async move {
            let mut barrier = DoubleBarrier::new(&session, "crash", 3).unwrap();
            barrier.enter().await.unwrap();
            barrier
        }));
    }
    let mut barriers: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    kv.expire_lease(crashed.lease());
    barriers.remove(0); // the crashed one never leaves
    let leaving: Vec<_> = barriers
        .into_iter()
        .map(|mut barrier| tokio::spawn(async move { barrier.leave().await }))
        .collect();
    for leaver in leaving {
        bounded(leaver).await.unwrap().unwrap();
    }
    assert!(keys(&kv, "crash/").await.is_empty());
}

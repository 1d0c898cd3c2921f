use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::*;
use crate::memory::MemoryKv;

const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future).await.expect("timed out")
}

/// How many keys are under `prefix`.
async fn count(kv: &MemoryKv, prefix: &str) -> usize {
    let range = RangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix.as_bytes()),
        ..Default::default()
    };
    kv.range(range).await.unwrap().kvs.len()
}

#[tokio::test(start_paused = true)]
async fn items_come_out_in_the_order_they_went_in() {
    let kv = MemoryKv::new();
    let queue = Queue::new(kv.clone(), "jobs");
    for i in 0..10 {
        let key = queue.enqueue(format!("job {i}")).await.unwrap();
        assert!(key.starts_with(b"jobs/"));
    }
    for i in 0..10 {
        assert_eq!(
            bounded(queue.dequeue()).await.unwrap(),
            format!("job {i}").into_bytes()
        );
    }
    assert_eq!(count(&kv, "jobs/").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_receive_each_item_exactly_once() {
    const PRODUCERS: usize = 3;
    const ITEMS: usize = 40;
    let kv = MemoryKv::new();
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let queue = Queue::new(kv.clone(), "work");
        producers.push(tokio::spawn(async move {
            for item in 0..ITEMS {
                queue.enqueue(format!("{producer}/{item}")).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    // Each consumer claims a turn before dequeuing, so exactly as many dequeues run as items
    // are produced, and every one of them can finish.
    let turns = Arc::new(AtomicI64::new((PRODUCERS * ITEMS) as i64));
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let (queue, turns) = (Queue::new(kv.clone(), "work"), turns.clone());
        consumers.push(tokio::spawn(async move {
            let mut received = Vec::new();
            while turns.fetch_sub(1, Ordering::SeqCst) > 0 {
                received.push(String::from_utf8(queue.dequeue().await.unwrap()).unwrap());
            }
            received
        }));
    }
    for producer in producers {
        bounded(producer).await.unwrap();
    }
    let mut all = Vec::new();
    for consumer in consumers {
        let received = bounded(consumer).await.unwrap();
        // One producer's items reach any one consumer in the order they were produced.
        for producer in 0..PRODUCERS {
            let own: Vec<usize> = received
                .iter()
                .filter_map(|item| item.strip_prefix(&format!("{producer}/")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert!(own.is_sorted(), "{own:?}");
        }
        all.extend(received);
    }
    assert_eq!(all.len(), PRODUCERS * ITEMS);
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), PRODUCERS * ITEMS, "an item was delivered twice");
    assert_eq!(count(&kv, "work/").await, 0);
}

#[tokio::test(start_paused = true)]
async fn dequeue_on_an_empty_queue_waits_for_the_next_enqueue() {
    let kv = MemoryKv::new();
    let queue = Queue::new(kv.clone(), "empty");
    let consumer = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.dequeue().await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!consumer.is_finished());
    queue.enqueue("wake up").await.unwrap();
    assert_eq!(bounded(consumer).await.unwrap().unwrap(), b"wake up");
    assert_eq!(count(&kv, "empty/").await, 0);
}

#[tokio::test(start_paused = true)]
async fn two_blocked_consumers_share_two_items_one_each() {
    let kv = MemoryKv::new();
    let queue = Queue::new(kv.clone(), "pair");
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.dequeue().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    queue.enqueue("a").await.unwrap();
    queue.enqueue("b").await.unwrap();
    let mut got = Vec::new();
    for consumer in consumers {
        got.push(bounded(consumer).await.unwrap().unwrap());
    }
    got.sort();
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn the_priority_queue_serves_low_numbers_first_then_arrival_order() {
    let kv = MemoryKv::new();
    let queue = PriorityQueue::new(kv.clone(), "prio");
    for (value, priority) in [("c", 5), ("a", 1), ("b", 1), ("d", 0), ("e", u16::MAX), ("b2", 1)] {
        queue.enqueue(value, priority).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(String::from_utf8(bounded(queue.dequeue()).await.unwrap()).unwrap());
    }
    assert_eq!(order, ["d", "a", "b", "b2", "c", "e"]);
    assert_eq!(count(&kv, "prio/").await, 0);

    // Blocking, and numbering resumes after the queue emptied.
    let consumer = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.dequeue().await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!consumer.is_finished());
    let key = queue.enqueue("late", 7).await.unwrap();
    assert!(
        key.starts_with(b"prio/00007/"),
        "{}",
        String::from_utf8_lossy(&key)
    );
    assert_eq!(bounded(consumer).await.unwrap().unwrap(), b"late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_priority_producers_never_share_a_sequence_number() {
    let kv = MemoryKv::new();
    let producers: Vec<_> = (0..4)
        .map(|producer| {
            let queue = PriorityQueue::new(kv.clone(), "race");
            tokio::spawn(async move {
                for item in 0..10 {
                    queue.enqueue(format!("{producer}/{item}"), 3).await.unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        bounded(producer).await.unwrap();
    }
    assert_eq!(count(&kv, "race/00003/").await, 40);
    let queue = PriorityQueue::new(kv.clone(), "race");
    let mut last_seen = [-1i64; 4];
    for _ in 0..40 {
        let item = String::from_utf8(bounded(queue.dequeue()).await.unwrap()).unwrap();
        let (producer, n) = item.split_once('/').unwrap();
        let (producer, n): (usize, i64) = (producer.parse().unwrap(), n.parse().unwrap());
        assert!(n > last_seen[producer], "{item} after {}", last_seen[producer]);
        last_seen[producer] = n;
    }
}

use std::time::Duration;

use super::*;
use crate::memory::MemoryKv;
use crate::test_util::FlakyKv;

const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future).await.expect("timed out")
}

/// The next `n` messages of `subscription`, each bounded.
async fn take(subscription: &mut Subscription, n: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    for _ in 0..n {
        messages.push(bounded(subscription.next()).await.expect("stream ended").unwrap());
    }
    messages
}

fn payloads(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_history_then_live_messages_in_revision_order() {
    let kv = MemoryKv::new();
    let topic = Topic::new(kv.clone(), "news");
    let first = topic.publish("m0").await.unwrap();
    for i in 1..3 {
        topic.publish(format!("m{i}")).await.unwrap();
    }
    Topic::new(kv.clone(), "other")
        .publish("elsewhere")
        .await
        .unwrap();
    let mut from_start = topic.subscribe(first).await.unwrap();
    let mut live_only = topic.subscribe(0).await.unwrap();
    for i in 3..6 {
        topic.publish(format!("m{i}")).await.unwrap();
    }
    let seen = take(&mut from_start, 6).await;
    assert_eq!(payloads(&seen), ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(seen[0].revision, first);
    assert!(seen.windows(2).all(|w| w[0].revision < w[1].revision));
    assert!(seen.iter().all(|m| m.key.starts_with(b"news/")));
    assert_eq!(payloads(&take(&mut live_only, 3).await), ["m3", "m4", "m5"]);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), from_start.next())
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn resuming_from_the_last_seen_revision_plus_one_has_no_gap_and_no_duplicate() {
    let kv = MemoryKv::new();
    let topic = Topic::new(kv.clone(), "log");
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    let mut received = Vec::new();
    let mut subscription = topic.subscribe(1).await.unwrap();
    received.extend(take(&mut subscription, 3).await);
    drop(subscription); // the subscriber crashes after processing three

    for i in 5..8 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    let last_seen = received.last().unwrap().revision;
    let mut subscription = topic.subscribe(last_seen + 1).await.unwrap();
    let resumed = take(&mut subscription, 5).await;
    received.extend(resumed);
    for i in 8..10 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    received.extend(take(&mut subscription, 2).await);

    let revisions: Vec<i64> = received.iter().map(|m| m.revision).collect();
    assert_eq!(revisions, published);
    assert_eq!(
        payloads(&received),
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn retention_keeps_the_newest_messages_and_refuses_starts_below_it() {
    let kv = MemoryKv::new();
    let topic = Topic::new(kv.clone(), "ticks");
    let first = topic.publish("m0").await.unwrap();
    topic
        .set_retention(Retention {
            max_messages: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut published = vec![first];
    for i in 1..6 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    assert_eq!(payloads(&topic.retained().await.unwrap()), ["m3", "m4", "m5"]);
    let status = topic.status().await.unwrap();
    assert_eq!((status.floor, status.kept), (published[2] + 1, 3));

    // A start below the floor would replay removed messages: refused, naming the floor.
    let Err(Error::OutOfRange(message)) = topic.subscribe(first).await else {
        panic!("expected a start below retention to be refused");
    };
    assert!(
        message.contains(&format!("oldest revision still kept is {}", status.floor)),
        "{message}"
    );
    // From the floor on: exactly the kept messages, then new ones.
    let mut from_floor = topic.subscribe(status.floor).await.unwrap();
    topic.publish("m6").await.unwrap();
    assert_eq!(
        payloads(&take(&mut from_floor, 4).await),
        ["m3", "m4", "m5", "m6"]
    );
    // The topic's state is beside its messages, not among them: nothing else arrives.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), from_floor.next())
            .await
            .is_err()
    );
    assert_eq!(topic.retained().await.unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn retention_by_age_removes_messages_older_than_it() {
    let kv = MemoryKv::new();
    let topic = Topic::new(kv.clone(), "events");
    let old = topic.publish("old").await.unwrap();
    topic
        .set_retention(Retention {
            max_age: Some(Duration::from_secs(60)),
            ..Default::default()
        })
        .await
        .unwrap();
    // Young enough: kept.
    assert_eq!(topic.status().await.unwrap().kept, 1);
    // An hour later by the clock the keys were stamped with: removed.
    let later = crate::queue::unix_nanos() + Duration::from_secs(3600).as_nanos();
    let floor = topic.trim_at(later).await.unwrap();
    assert_eq!(floor, old + 1);
    assert!(topic.retained().await.unwrap().is_empty());
    assert!(matches!(topic.subscribe(old).await, Err(Error::OutOfRange(_))));
    // Zero limits are refused and change nothing.
    let zero = Retention {
        max_messages: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        topic.set_retention(zero).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        topic.status().await.unwrap().retention.max_age,
        Some(Duration::from_secs(60))
    );
}

#[tokio::test(start_paused = true)]
async fn resuming_from_a_compacted_revision_is_an_error_not_a_gap() {
    let kv = FlakyKv::default();
    let topic = Topic::new(kv.clone(), "audit");
    let first = topic.publish("m0").await.unwrap();
    let second = topic.publish("m1").await.unwrap();
    kv.compact(second);

    let mut subscription = topic.subscribe(first).await.unwrap();
    let Some(Err(Error::Store(status))) = bounded(subscription.next()).await else {
        panic!("expected the compaction error");
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(
        status.message().contains("required revision has been compacted"),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .contains(&format!("topic audit, from revision {first}")),
        "{status:?}"
    );
    assert!(
        bounded(subscription.next()).await.is_none(),
        "the stream ends after its error"
    );

    let mut from_retained = topic.subscribe(second).await.unwrap();
    assert_eq!(payloads(&take(&mut from_retained, 1).await), ["m1"]);
    assert!(matches!(
        topic.subscribe(-1).await,
        Err(Error::InvalidArgument(_))
    ));
}

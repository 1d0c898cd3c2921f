//! The PubSub service: a thousand messages to three subscribers across a member restart,
//! retention, and a start below it.

use std::time::Duration;

use concord_client::{Client, Retention};
use futures::StreamExt;

use super::support::{FAST, client, concordctl, ctl_ok, within};
use crate::cluster::harness::Cluster;
use crate::harness::Server;

/// Every subscriber sees every message once, in order, though the member they subscribed
/// through restarts half-way (their subscriptions resume by themselves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_reach_three_subscribers_once_in_order_across_a_restart() {
    const MESSAGES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 1);
    cluster.wait_for_leader(Duration::from_secs(15));
    let endpoint = cluster.client_url(0).to_string();
    let publisher = Client::connect([endpoint.clone()]).await.unwrap();
    let first = publisher.publish("orders", "m0").await.unwrap();

    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let subscriber = Client::connect([endpoint.clone()]).await.unwrap();
        let mut messages = subscriber.subscribe_from("orders", first).await.unwrap();
        subscribers.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(MESSAGES);
            while seen.len() < MESSAGES {
                let message = messages.next().await.unwrap().unwrap();
                seen.push((message.revision, String::from_utf8(message.payload).unwrap()));
            }
            (subscriber, seen)
        }));
    }
    for i in 1..MESSAGES / 2 {
        publisher.publish("orders", format!("m{i}")).await.unwrap();
    }
    cluster.restart(0);
    cluster.wait_for_leader(Duration::from_secs(15));
    for i in MESSAGES / 2..MESSAGES {
        within(
            "a publish after the restart",
            publisher.publish("orders", format!("m{i}")),
        )
        .await
        .unwrap();
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for subscriber in subscribers {
        let (_, seen) = within("a subscriber's thousand messages", subscriber)
            .await
            .unwrap();
        let payloads: Vec<&String> = seen.iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, expected.iter().collect::<Vec<_>>());
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "revisions increase");
        assert_eq!(seen[0].0, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_messages_and_a_start_below_it_says_where_it_begins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let client = client(&server).await;
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(client.publish("ticks", format!("t{i}")).await.unwrap());
    }
    let keep_five = Retention {
        max_messages: Some(5),
        ..Default::default()
    };
    client.set_retention("ticks", keep_five).await.unwrap();
    for i in 10..12 {
        published.push(client.publish("ticks", format!("t{i}")).await.unwrap());
    }
    let status = client.topic_status("ticks").await.unwrap();
    assert_eq!(status.kept, 5);
    assert_eq!(status.oldest_revision, published[6] + 1);
    assert_eq!(status.retention.max_messages, Some(5));
    let keys = server.ctl(&["get", "pubsub/ticks/", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 5, "{keys}");

    // Below the retention: a clear error naming the oldest revision kept, from the client and
    // from concordctl.
    let below = client.subscribe_from("ticks", published[0]).await.unwrap_err();
    assert_eq!(below.code(), Some(tonic::Code::OutOfRange));
    let expected = format!(
        "pubsub: revision {} of topic ticks is below its retention: the oldest revision still kept is {}",
        published[0], status.oldest_revision
    );
    assert_eq!(below.to_string(), expected);
    let out = concordctl(
        &server.url(),
        &["sub", "ticks", "--from", &published[0].to_string()],
        None,
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("Error: {expected}\n")
    );

    // From the oldest kept revision: exactly the kept messages.
    let mut kept = client
        .subscribe_from("ticks", status.oldest_revision)
        .await
        .unwrap();
    let mut payloads = Vec::new();
    for _ in 0..5 {
        payloads.push(
            String::from_utf8(
                within("a kept message", kept.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .payload,
            )
            .unwrap(),
        );
    }
    assert_eq!(payloads, ["t7", "t8", "t9", "t10", "t11"]);

    // By age: a topic whose messages are older than a second loses them at the next publish.
    let age = Retention {
        max_age: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    client.set_retention("ticks", age).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = client.publish("ticks", "fresh").await.unwrap();
    let status = client.topic_status("ticks").await.unwrap();
    assert_eq!((status.kept, status.oldest_revision), (1, published[11] + 1));
    assert!(status.oldest_revision <= fresh);

    // concordctl pub / sub.
    let sub = super::support::Background::concordctl(&server.url(), &["sub", "ticks"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revision = ctl_ok(&server, &["pub", "ticks", "hello"]);
    let line = sub.stdout_containing("hello").await;
    assert_eq!(line, format!("{} hello\n", revision.trim()));
    sub.kill();

    // Bad input.
    let empty = client.publish("", "x").await.unwrap_err();
    assert_eq!(empty.code(), Some(tonic::Code::InvalidArgument));
    let slash = client.publish("a/b", "x").await.unwrap_err();
    assert!(
        slash
            .to_string()
            .contains("a topic name must be non-empty and without '/'"),
        "{slash}"
    );
    let zero = Retention {
        max_messages: Some(0),
        ..Default::default()
    };
    let refused = client.set_retention("ticks", zero).await.unwrap_err();
    assert!(
        refused.to_string().contains("keeps at least one message"),
        "{refused}"
    );
    assert_eq!(
        client.topic_status("ticks").await.unwrap().retention,
        age,
        "unchanged"
    );
}

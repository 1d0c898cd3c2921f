//! The three services through every member of a 3-member cluster, and across a leader change:
//! a write through one member is seen through the others, and watchers and subscribers on
//! surviving members carry on when the leader dies.

use std::time::Duration;

use concord_client::{Client, MembershipChange};
use futures::StreamExt;

use super::support::within;
use crate::cluster::harness::Cluster;

const LEADER_WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_config_and_pubsub_work_through_any_member_and_across_a_leader_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(LEADER_WAIT);
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let on = |i: usize| Client::connect([cluster.client_url(i).to_string()]);
    let (via_leader, via_a, via_b) = (
        on(leader).await.unwrap(),
        on(followers[0]).await.unwrap(),
        on(followers[1]).await.unwrap(),
    );

    // Registry: registered through a follower, listed and watched through the others.
    let mut members = via_b.watch_service("api").await.unwrap();
    within("the first membership", members.next())
        .await
        .unwrap()
        .unwrap();
    let _a1 = via_a
        .register("api", "a1", "10.0.0.1:80", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(via_leader.instances("api").await.unwrap().len(), 1);
    let added = within("a1 added", members.next()).await.unwrap().unwrap();
    assert!(matches!(&added.changes[..], [MembershipChange::Added(i)] if i.id == "a1"));

    // Config: written through the leader, read and followed through followers.
    via_leader
        .put_config("app", "limits", &serde_json::json!({"max": 1}))
        .await
        .unwrap();
    let mut live = via_b.config::<serde_json::Value>("app", "limits").await.unwrap();
    assert_eq!(live.current().unwrap().value["max"], 1);
    assert_eq!(via_a.config_version("app", "limits", 0).await.unwrap().version, 1);

    // Pub/sub: published through a follower, received through the other.
    let first = via_a.publish("events", "e0").await.unwrap();
    let mut events = via_b.subscribe_from("events", first).await.unwrap();
    assert_eq!(within("e0", events.next()).await.unwrap().unwrap().payload, b"e0");

    // The leader dies; everything carries on through the followers.
    cluster.kill9(leader);
    cluster.wait_for_leader(LEADER_WAIT);
    let _a2 = within(
        "a registration after the leader died",
        via_a.register("api", "a2", "10.0.0.2:80", Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let added = within("a2 added", members.next()).await.unwrap().unwrap();
    assert!(
        matches!(&added.changes[..], [MembershipChange::Added(i)] if i.id == "a2"),
        "{added:?}"
    );
    assert_eq!(added.instances.len(), 2);

    within(
        "a config put after the leader died",
        via_a.put_config("app", "limits", &serde_json::json!({"max": 2})),
    )
    .await
    .unwrap();
    let changed = within("version 2 applied", live.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((changed.version, changed.value["max"].as_u64()), (2, Some(2)));

    within("a publish after the leader died", via_a.publish("events", "e1"))
        .await
        .unwrap();
    assert_eq!(within("e1", events.next()).await.unwrap().unwrap().payload, b"e1");
    assert_eq!(via_b.topic_status("events").await.unwrap().kept, 2);
}

//! Leases in a cluster: a follower relays keepalives, TimeToLive and Leases to the leader, and
//! a lease keeps its remaining time (it is not granted a full TTL again) when the leader dies.

use std::time::{Duration, Instant};

use etcd_client::{LeaseTimeToLiveOptions, PutOptions};

use super::harness::Cluster;

const LEADER_WAIT: Duration = Duration::from_secs(10);
const TTL_SECS: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_through_a_follower_survive_the_leaders_death_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(LEADER_WAIT);
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(follower).await;

    // TTL 10 s: slack 5 s, so the leader records the remaining time 5 s after the renewal.
    let granted = Instant::now();
    let id = c.lease_grant(TTL_SECS, None).await.unwrap().id();
    c.put("held", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let (mut keeper, mut answers) = c.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = answers.message().await.unwrap().unwrap();
    assert_eq!(
        renewed.ttl(),
        TTL_SECS,
        "a follower relays keepalives to the leader"
    );
    let renewed_at = Instant::now();
    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(
        (ttl.granted_ttl(), ttl.keys()),
        (TTL_SECS, [b"held".to_vec()].as_slice())
    );
    let listed: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(listed, [id]);
    drop((keeper, answers));

    // Past the first checkpoint, the leader dies.
    tokio::time::sleep_until((renewed_at + Duration::from_millis(5600)).into()).await;
    cluster.kill9(leader);
    let survivor = cluster.live()[0];
    let mut s = cluster
        .client_with_timeout(survivor, Duration::from_secs(2))
        .await;

    // etcd would give the lease a full 10 s again from the new leader's election (about 7 s
    // late); Concord continues from the recorded 5 s, so it is late by about the time without
    // a leader.
    let deadline = renewed_at + Duration::from_secs(TTL_SECS as u64);
    let gone = loop {
        let present = match s.get("held", None).await {
            Ok(resp) => !resp.kvs().is_empty(),
            Err(_) => true, // no leader yet
        };
        if !present {
            break Instant::now();
        }
        assert!(
            renewed_at.elapsed() < Duration::from_secs(25),
            "the lease outlived its deadline by far\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let late = gone.saturating_duration_since(deadline);
    println!(
        "lease expired {:.2}s after its deadline across a leader change ({:.2}s after the grant)",
        late.as_secs_f64(),
        (gone - granted).as_secs_f64()
    );
    assert!(gone + Duration::from_millis(100) >= deadline, "expired early");
    assert!(
        late <= Duration::from_millis(4500),
        "expired {late:?} late: the new leader must continue from the recorded remaining time"
    );
}

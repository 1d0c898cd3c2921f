//! Hash and HashKV end to end: equal on every member, different for different data; and MoveLeader.

use std::time::{Duration, Instant};

use crate::cluster::harness::Cluster;
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_is_equal_on_every_member_and_differs_when_the_data_does() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    cluster.wait_for_leader(Duration::from_secs(10));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut client = cluster.client(w % 3).await;
        writers.push(tokio::spawn(async move {
            for k in 0..25 {
                client
                    .put(format!("h/{w}/{k}"), format!("v{k}"), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut leader_client = cluster.client(0).await;
    let revision = leader_client
        .get("h/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // Every member, once it has applied that revision, hashes it alike.
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let hashed = loop {
            match client.hash_kv(revision).await {
                Ok(answer) => break answer,
                Err(err) => {
                    assert!(Instant::now() < deadline, "member {i}: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        hashes.push((hashed.hash(), hashed.compact_version()));
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    // etcdctl sees the same on every endpoint.
    let out = cluster.ctl_on(0, &["endpoint", "hashkv", "--cluster", "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let seen: Vec<u64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["HashKV"]["hash"].as_u64().unwrap())
        .collect();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|h| *h == seen[0]), "{out}");

    // A store with other data at the same revision hashes differently.
    let other_dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Server::start(other_dir.path(), &[]),
        Server::start(&other_dir.path().join("b"), &[]),
    );
    a.ctl(&["put", "k", "one"]);
    b.ctl(&["put", "k", "two"]);
    let hash = |server: &Server| {
        let out = server.ctl(&["endpoint", "hashkv", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        json[0]["HashKV"]["hash"].as_u64().unwrap()
    };
    assert_ne!(hash(&a), hash(&b));
    b.ctl(&["put", "k", "one"]);
    a.ctl(&["put", "k", "one"]);
    assert_ne!(hash(&a), hash(&b), "the histories still differ");
}

//! A three-member cluster: one leader, writes through every member, a killed leader, a lost
//! quorum, and the member list.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use serde_json::Value;

use super::checks::read_prefix;
use super::harness::{Cluster, XorShift};

/// How long a fresh (or healed) cluster may take to agree on a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_one_leader_and_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    println!("leader is {}", cluster.name(leader));

    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    // One key through each member, leader and followers alike; each put is acknowledged before
    // the next is sent, so their revisions must increase.
    let mut written: Vec<(String, String, i64)> = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let key = format!("replicated/through-m{i}");
        let value = format!("written via m{i}");
        let resp = client
            .put(key.clone(), value.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("put through m{i}: {e}\n{}", cluster.logs()));
        let rev = resp.header().expect("header").revision();
        if let Some((_, _, previous)) = written.last() {
            assert!(
                rev > *previous,
                "put through m{i} got revision {rev} after {previous}"
            );
        }
        written.push((key, value, rev));
    }

    for (reader, client) in clients.iter_mut().enumerate() {
        // Linearizable (the default): every acknowledged write is visible at once, anywhere.
        for (key, value, rev) in &written {
            let resp = client
                .get(key.as_str(), None)
                .await
                .unwrap_or_else(|e| panic!("linearizable get {key} on m{reader}: {e}"));
            let kv = resp
                .kvs()
                .first()
                .unwrap_or_else(|| panic!("linearizable get on m{reader} misses {key}"));
            assert_eq!(kv.value_str().unwrap(), value, "{key} on m{reader}");
            assert_eq!(kv.mod_revision(), *rev, "{key} on m{reader}");
        }
        // Serializable: served from the member's own state, which may lag; it must catch up.
        for (key, value, rev) in &written {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let resp = client
                    .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                    .await
                    .unwrap_or_else(|e| panic!("serializable get {key} on m{reader}: {e}"));
                if let Some(kv) = resp.kvs().first() {
                    assert_eq!(kv.value_str().unwrap(), value, "{key} on m{reader}");
                    assert_eq!(kv.mod_revision(), *rev, "{key} on m{reader}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "serializable get on m{reader} still misses {key} after 5s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One acknowledged put of the failover test.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
    /// When the put was sent (a put sent before the kill may be acknowledged after it).
    sent: Instant,
    /// When its response arrived.
    acked: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_keeps_acknowledged_writes() {
    /// A put not answered by then counts as failed (and is retried on another member).
    const PUT_TIMEOUT: Duration = Duration::from_millis(1500);
    /// After a failure through a member, writers leave it alone this long.
    const AVOID: Duration = Duration::from_millis(500);
    const WRITERS: usize = 4;

    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);

    let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Per member: until when writers avoid it after a failed put through it.
    let avoid_until: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; 3]));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(cluster.client_with_timeout(i, PUT_TIMEOUT).await);
        }
        let (acked, failures, stop, avoid_until) =
            (acked.clone(), failures.clone(), stop.clone(), avoid_until.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) * 0x2545_f491_4f6c_dd1d));
            let mut last_failed: Option<usize> = None;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A random member, skipping the one that just failed and any still avoided.
                let now = Instant::now();
                let candidates: Vec<usize> = {
                    let avoid = avoid_until.lock().unwrap();
                    let fresh: Vec<usize> = (0..3)
                        .filter(|&m| Some(m) != last_failed && avoid[m].is_none_or(|t| t <= now))
                        .collect();
                    if fresh.is_empty() {
                        (0..3).filter(|&m| Some(m) != last_failed).collect()
                    } else {
                        fresh
                    }
                };
                let member = candidates[rng.below(candidates.len())];
                let key = format!("failover/w{w}/{seq:06}");
                let value = format!("w{w}-{seq}-via-m{member}");
                seq += 1;
                let sent = Instant::now();
                let put =
                    tokio::time::timeout(PUT_TIMEOUT, clients[member].put(key.clone(), value.clone(), None))
                        .await;
                match put {
                    Ok(Ok(resp)) => {
                        let revision = resp.header().expect("header").revision();
                        acked.lock().unwrap().push(Ack {
                            key,
                            value,
                            revision,
                            sent,
                            acked: Instant::now(),
                        });
                        last_failed = None;
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        avoid_until.lock().unwrap()[member] = Some(Instant::now() + AVOID);
                        last_failed = Some(member);
                        // Fast failures (no leader yet) would otherwise spin the writer.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }

    // About a second of steady writes before the crash.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1)
        || (acked.lock().unwrap().len() < 10 && started.elapsed() < Duration::from_secs(5))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = acked.lock().unwrap().len();
    assert!(
        before_kill >= 10,
        "only {before_kill} puts acknowledged in {:?} before the kill ({} failed)\n{}",
        started.elapsed(),
        failures.load(Ordering::Relaxed),
        cluster.logs()
    );

    cluster.kill9(leader);
    let killed_at = Instant::now();
    // Writers carry on for about 3 more seconds (longer if nothing got through yet, bounded).
    loop {
        let through = acked.lock().unwrap().iter().any(|a| a.sent >= killed_at);
        let waited = killed_at.elapsed();
        if (through && waited >= Duration::from_secs(3)) || waited >= Duration::from_secs(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acks = acked.lock().unwrap().clone();
    let after_kill: Vec<&Ack> = acks.iter().filter(|a| a.sent >= killed_at).collect();
    let failover = after_kill.iter().map(|a| a.acked - killed_at).min();
    println!(
        "killed leader {} after {before_kill} acknowledged puts; failover (kill to first \
         acknowledged put sent after it): {failover:?}; {} puts acknowledged after, \
         {} failed in all",
        cluster.name(leader),
        after_kill.len(),
        failures.load(Ordering::Relaxed)
    );
    let failover = failover.unwrap_or_else(|| {
        panic!(
            "no put sent after the kill was acknowledged within 6s\n{}",
            cluster.logs()
        )
    });
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");

    // Distinct puts have distinct revisions.
    let revisions: HashSet<i64> = acks.iter().map(|a| a.revision).collect();
    assert_eq!(
        revisions.len(),
        acks.len(),
        "two acknowledged puts share a revision"
    );

    // Every acknowledged put is on both survivors, with its value and revision.
    for survivor in (0..3).filter(|&i| i != leader) {
        let mut client = cluster.client(survivor).await;
        let stored = read_prefix(&mut client, "failover/", GetOptions::new()).await;
        for ack in &acks {
            let (value, revision) = stored.get(&ack.key).unwrap_or_else(|| {
                panic!(
                    "acknowledged {} (revision {}) is missing on {}",
                    ack.key,
                    ack.revision,
                    cluster.name(survivor)
                )
            });
            assert_eq!(value, &ack.value, "{} on {}", ack.key, cluster.name(survivor));
            assert_eq!(
                *revision,
                ack.revision,
                "{} on {}",
                ack.key,
                cluster.name(survivor)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_cleanly_then_heals() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    let mut client = cluster.client(leader).await;
    let written = client
        .put("quorum/before", "v1", None)
        .await
        .unwrap_or_else(|e| panic!("put before the quorum loss: {e}\n{}", cluster.logs()))
        .header()
        .expect("header")
        .revision();

    // Lose the quorum: the leader and one follower die, one follower survives.
    let survivor = (leader + 1) % 3;
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.kill9(i);
    }
    let mut lonely = cluster
        .client_with_timeout(survivor, Duration::from_secs(3))
        .await;
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        lonely.put("quorum/during", "must not commit", None),
    )
    .await;
    let error = match attempt {
        Ok(Ok(resp)) => panic!(
            "a put on a lone member of three succeeded at revision {}",
            resp.header().map_or(0, |h| h.revision())
        ),
        Ok(Err(e)) => e.to_string(),
        // The client's own 3 s deadline should have fired first; either way it did not commit.
        Err(_) => "deadline exceeded (no answer within 5s)".to_string(),
    };
    println!("put without quorum failed with: {error}");
    let lower = error.to_lowercase();
    assert!(
        ["request timed out", "no leader", "deadline", "timeout expired"]
            .iter()
            .any(|text| lower.contains(text)),
        "unexpected error for a put without quorum: {error}"
    );
    assert!(
        cluster.is_running(survivor),
        "{} died after losing the quorum\n{}",
        cluster.name(survivor),
        cluster.logs()
    );

    // Heal: both come back on their data directories and the cluster serves again.
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.restart(i);
    }
    cluster.wait_for_leader(ELECTION_WAIT);
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let resp = client
            .get("quorum/before", None)
            .await
            .unwrap_or_else(|e| panic!("get on {} after healing: {e}", cluster.name(i)));
        let kv = resp
            .kvs()
            .first()
            .unwrap_or_else(|| panic!("quorum/before lost on {}", cluster.name(i)));
        assert_eq!(kv.value_str().unwrap(), "v1");
        assert_eq!(kv.mod_revision(), written);
        let key = format!("quorum/after/{}", cluster.name(i));
        client
            .put(key.as_str(), "healed", None)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "put through {} after healing: {e}\n{}",
                    cluster.name(i),
                    cluster.logs()
                )
            });
    }
    // And through a client that knows every member, as a user's would.
    assert_eq!(cluster.endpoints().len(), 3);
    let mut everyone = Client::connect(cluster.endpoints(), None).await.unwrap();
    everyone
        .put("quorum/after/any", "healed", None)
        .await
        .unwrap_or_else(|e| panic!("put through every endpoint after healing: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_shows_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    cluster.wait_for_leader(ELECTION_WAIT);
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            cluster
                .status(i)
                .unwrap_or_else(|| panic!("no status from {}", cluster.name(i)))
                .member_id
        })
        .collect();
    assert!(ids.iter().all(|&id| id != 0), "member IDs {ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "member IDs {ids:?}");

    // Each member serves clients only once its own client URLs are published, but it may apply
    // another member's publication a moment after that.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut cluster_ids = HashSet::new();
    for asked in 0..3 {
        loop {
            let listed = cluster.ctl_on(asked, &["member", "list", "-w", "json"]);
            let json: Value = serde_json::from_str(listed.trim())
                .unwrap_or_else(|e| panic!("member list is not JSON ({e}): {listed}"));
            let problem = member_list_problem(&cluster, &ids, &json);
            let Some(problem) = problem else {
                cluster_ids.insert(json["header"]["cluster_id"].as_u64().unwrap_or(0));
                break;
            };
            assert!(
                Instant::now() < deadline,
                "member list on {}: {problem}\n{listed}",
                cluster.name(asked)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        cluster_ids.len(),
        1,
        "members report different cluster IDs {cluster_ids:?}"
    );
    assert!(
        !cluster_ids.contains(&0),
        "no cluster ID in the member list header"
    );
}

/// What is wrong with one `etcdctl member list -w json` output, if anything.
fn member_list_problem(cluster: &Cluster, ids: &[u64], json: &Value) -> Option<String> {
    let Some(members) = json["members"].as_array() else {
        return Some("no members array".into());
    };
    if members.len() != 3 {
        return Some(format!("{} members listed, not 3", members.len()));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    for (i, &id) in ids.iter().enumerate() {
        let name = cluster.name(i);
        let Some(member) = members.iter().find(|m| m["name"] == name) else {
            return Some(format!("{name} is not listed"));
        };
        if member["ID"].as_u64() != Some(id) {
            return Some(format!(
                "{name} is listed with ID {}, its status says {id}",
                member["ID"]
            ));
        }
        if strings(&member["peerURLs"]) != [cluster.peer_url(i)] {
            return Some(format!("{name} has peer URLs {}", member["peerURLs"]));
        }
        if strings(&member["clientURLs"]) != [cluster.client_url(i)] {
            return Some(format!("{name} has client URLs {}", member["clientURLs"]));
        }
    }
    None
}

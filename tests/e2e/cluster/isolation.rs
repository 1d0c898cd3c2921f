//! A leader cut off from everyone (its process stopped with SIGSTOP, as a long GC pause, a
//! frozen VM or a partition would) while the others elect a new leader and move on. When it
//! comes back it still believes it leads; it must not answer from its stale state.

use std::time::{Duration, Instant};

use super::harness::Cluster;

const ELECTION_WAIT: Duration = Duration::from_secs(10);

/// Polls the members other than `paused` until they agree on a leader among themselves.
fn wait_for_leader_without(cluster: &Cluster, paused: usize) -> usize {
    let deadline = Instant::now() + ELECTION_WAIT;
    let others: Vec<usize> = (0..cluster.len()).filter(|&i| i != paused).collect();
    loop {
        let statuses: Vec<_> = others.iter().map(|&i| cluster.status(i)).collect();
        if let Some(Some(first)) = statuses.first() {
            let leader = first.leader;
            let agreed = statuses
                .iter()
                .all(|s| s.is_some_and(|s| s.leader == leader && leader != 0));
            let among = others
                .iter()
                .zip(&statuses)
                .find(|(_, s)| s.is_some_and(|s| s.member_id == leader));
            if let (true, Some((&i, _))) = (agreed, among) {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the members other than {} elected no leader among themselves: {statuses:?}\n{}",
            cluster.name(paused),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stale_leader_never_answers_stale() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let old = cluster.wait_for_leader(ELECTION_WAIT);
    let mut via_old = cluster.client_with_timeout(old, Duration::from_secs(10)).await;
    via_old
        .put("stale/k", "before", None)
        .await
        .unwrap_or_else(|e| panic!("put through the leader: {e}\n{}", cluster.logs()));

    cluster.signal(old, "STOP");
    let new = wait_for_leader_without(&cluster, old);
    let mut via_new = cluster.client(new).await;
    let after = via_new
        .put("stale/k", "after", None)
        .await
        .unwrap_or_else(|e| panic!("put through the new leader: {e}\n{}", cluster.logs()));
    let after_revision = after.header().expect("header").revision();

    // Sent to the stopped old leader after the new value was acknowledged: it waits in the
    // socket and is answered once the process runs again, by a member that still believes it
    // leads. A linearizable read must see "after" (or fail); "before" would be stale.
    let get = tokio::spawn(async move {
        let got = via_old.get("stale/k", None).await;
        (via_old, got)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.signal(old, "CONT");
    let (mut via_old, got) = tokio::time::timeout(Duration::from_secs(15), get)
        .await
        .expect("the resumed member answers within 15s")
        .expect("get task");
    match got {
        Ok(resp) => {
            let kv = resp.kvs().first().expect("stale/k exists");
            assert_eq!(
                kv.value_str().unwrap(),
                "after",
                "the resumed old leader answered a linearizable read with a stale value \
                 (mod revision {}, the new value's is {after_revision})\n{}",
                kv.mod_revision(),
                cluster.logs()
            );
            assert!(resp.header().expect("header").revision() >= after_revision);
        }
        Err(e) => println!("the resumed old leader refused the read (allowed): {e}"),
    }

    // Back in the cluster as a follower: writes through it reach the new leader.
    let deadline = Instant::now() + ELECTION_WAIT;
    let put = loop {
        match via_old.put("stale/k", "through-old", None).await {
            Ok(put) => break put,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no put through the resumed member within {ELECTION_WAIT:?}: {e}\n{}",
                cluster.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(put.header().expect("header").revision() > after_revision);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    println!(
        "old leader {}, new leader {}, leader now {}",
        cluster.name(old),
        cluster.name(new),
        cluster.name(leader)
    );
    let got = via_old.get("stale/k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value_str().unwrap(), "through-old");
}

//! The Election service through the `etcd-client` crate: Campaign, Proclaim, Leader, Observe
//! and Resign with etcd's errors, and five campaigners handing leadership on by resigning, by
//! a revoked lease and by an expired one, watched by an observer and by Leader calls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaderKey, ProclaimOptions, ResignOptions};
use tokio::sync::mpsc;

use crate::harness::Server;

use super::support::{
    EXPIRY_LIMIT, FAST, STILL_WAITING, WAIT, connect, kept_alive, keys_under, status, wait_keys,
};

/// An Observe stream read by a task: each leader as `(key, value)`.
struct Observer {
    changes: mpsc::UnboundedReceiver<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Observes `name` on a connection of its own. etcd sends the stream's first response
    /// (and with it the response headers) only once there is a leader, so the stream is
    /// opened in the task too.
    async fn start(server: &Server, name: &str) -> Observer {
        let mut c = connect(server).await;
        let name = name.to_string();
        let (tx, changes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = c.observe(name).await.unwrap();
            while let Some(response) = stream.message().await.unwrap() {
                let kv = response.kv().unwrap();
                let change = (kv.key_str().unwrap().into(), kv.value_str().unwrap().into());
                if tx.send(change).is_err() {
                    return;
                }
            }
        });
        Observer { changes, task }
    }

    /// The next leader it reports, failing after [`WAIT`].
    async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(WAIT, self.changes.recv())
            .await
            .expect("the observer reports the change")
            .expect("observe stream open")
    }

    /// Asserts it reports nothing for a while.
    async fn quiet(&mut self) {
        if let Ok(change) = tokio::time::timeout(STILL_WAITING, self.changes.recv()).await {
            panic!("the observer reported {change:?}, expected nothing");
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The election's leader as `(key, value)` by the Leader RPC, `None` when nobody leads.
async fn leader(c: &mut Client, name: &str) -> Option<(String, String)> {
    match c.leader(name).await {
        Ok(r) => {
            let kv = r.kv().unwrap();
            Some((kv.key_str().unwrap().into(), kv.value_str().unwrap().into()))
        }
        Err(err) => {
            let err = status(err);
            assert_eq!(err.message(), "election: no leader");
            None
        }
    }
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_proclaim_leader_resign_observe() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;

    // Nobody leads an election nobody ran in: etcd's error.
    let err = status(c.leader("pick").await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::Unknown, "election: no leader")
    );
    let mut observer = Observer::start(&server, "pick").await;
    observer.quiet().await;

    let lease_a = c.lease_grant(60, None).await.unwrap().id();
    let key_a = format!("pick/{lease_a:x}");
    let won = c.campaign("pick", "a", lease_a).await.unwrap();
    let lk_a = won.leader().unwrap().clone();
    let rev_a = won.header().unwrap().revision();
    assert_eq!(
        (lk_a.name(), lk_a.key_str().unwrap(), lk_a.rev(), lk_a.lease()),
        (&b"pick"[..], key_a.as_str(), rev_a, lease_a)
    );
    let got = c.leader("pick").await.unwrap();
    let kv = got.kv().unwrap();
    assert_eq!(
        (
            kv.key_str().unwrap(),
            kv.value_str().unwrap(),
            kv.create_revision(),
            kv.lease()
        ),
        (key_a.as_str(), "a", rev_a, lease_a)
    );
    assert_eq!(observer.next().await, pair(&key_a, "a"));

    // Proclaim changes the value in place.
    let proclaimed = c
        .proclaim("b", Some(ProclaimOptions::new().with_leader(lk_a.clone())))
        .await
        .unwrap();
    assert_eq!(proclaimed.header().unwrap().revision(), rev_a + 1);
    assert_eq!(leader(&mut c, "pick").await, Some(pair(&key_a, "b")));
    assert_eq!(observer.next().await, pair(&key_a, "b"));
    // Without a leader key: etcd's error.
    let err = status(c.proclaim("x", None).await.unwrap_err());
    assert_eq!(err.message(), "\"leader\" field must be provided");

    // A second candidate waits behind the leader.
    let lease_b = c.lease_grant(60, None).await.unwrap().id();
    let key_b = format!("pick/{lease_b:x}");
    let mut cb = connect(&server).await;
    let campaign_b = tokio::spawn(async move { cb.campaign("pick", "c", lease_b).await });
    wait_keys(&mut c, "pick/", &[key_a.clone(), key_b.clone()]).await;
    tokio::time::sleep(STILL_WAITING).await;
    assert!(!campaign_b.is_finished(), "the first candidate still leads");
    assert_eq!(leader(&mut c, "pick").await, Some(pair(&key_a, "b")));
    observer.quiet().await;

    // Resign hands leadership to the next in line.
    c.resign(Some(ResignOptions::new().with_leader(lk_a.clone())))
        .await
        .unwrap();
    let won = tokio::time::timeout(WAIT, campaign_b)
        .await
        .expect("the second candidate leads once the first resigns")
        .unwrap()
        .unwrap();
    let lk_b = won.leader().unwrap().clone();
    assert_eq!(lk_b.key_str().unwrap(), key_b);
    assert_eq!(leader(&mut c, "pick").await, Some(pair(&key_b, "c")));
    assert_eq!(observer.next().await, pair(&key_b, "c"));

    // The old leader's key is stale: Proclaim fails with etcd's error and changes nothing;
    // Resign with it deletes nothing.
    let err = status(
        c.proclaim("stale", Some(ProclaimOptions::new().with_leader(lk_a.clone())))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::Unknown, "election: not leader")
    );
    c.resign(Some(ResignOptions::new().with_leader(lk_a.clone())))
        .await
        .unwrap();
    assert_eq!(leader(&mut c, "pick").await, Some(pair(&key_b, "c")));
    // A proclamation under a leader key with the right key but another revision is stale too.
    let forged = LeaderKey::new()
        .with_name("pick")
        .with_key(key_b.as_str())
        .with_rev(lk_b.rev() - 1)
        .with_lease(lease_b);
    let err = status(
        c.proclaim("forged", Some(ProclaimOptions::new().with_leader(forged)))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.message(), "election: not leader");
    observer.quiet().await;

    // The last leader resigns: nobody leads, the observer waits for the next one.
    c.resign(Some(ResignOptions::new().with_leader(lk_b)))
        .await
        .unwrap();
    assert_eq!(leader(&mut c, "pick").await, None);
    assert!(keys_under(&mut c, "pick/").await.is_empty());
    observer.quiet().await;
    c.campaign("pick", "again", lease_a).await.unwrap();
    assert_eq!(observer.next().await, pair(&key_a, "again"));
}

/// Campaign with a lease that does not exist fails with etcd's error (code Unknown in etcd
/// 3.4.23, whose Election service returns its client library's error) and leaves no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_with_a_missing_lease_fails_as_in_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let err = status(c.campaign("pick", "z", 0x7777).await.unwrap_err());
    assert!(keys_under(&mut c, "pick/").await.is_empty());
    assert_eq!(err.message(), "etcdserver: requested lease not found");
    assert_eq!(err.code(), tonic::Code::Unknown);
}

/// How each campaigner's leadership ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Resign,
    Revoke,
    Expire,
    ProclaimThenResign,
}

/// Five campaigners, in campaign order; one leads at a time and each hands over to the next
/// (by resigning, a revoked lease, an expired lease). Every Leader call and the observer agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_campaigners_hand_over_in_order() {
    const NAME: &str = "five";
    let endings = [
        Ending::Resign,
        Ending::Revoke,
        Ending::Expire,
        Ending::ProclaimThenResign,
        Ending::Resign,
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let mut c = connect(&server).await;
    let mut observer = Observer::start(&server, NAME).await;
    // Another observer, read only at the end: it must have seen the same changes, once each.
    let mut recorder = Observer::start(&server, NAME).await;

    // Leader calls as fast as they come, recording each change of answer.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let poller = {
        let mut c = connect(&server).await;
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let now = leader(&mut c, NAME).await.map(|(key, _)| key);
                {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&now) {
                        seen.push(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Campaign in order: each candidate's key is in place before the next one campaigns.
    let (elected_tx, mut elected) = mpsc::unbounded_channel();
    let mut keys = Vec::new();
    let mut leases = Vec::new();
    let mut keepers = Vec::new();
    let last_renewal = Arc::new(Mutex::new(Instant::now()));
    for (i, ending) in endings.iter().enumerate() {
        let mut cc = connect(&server).await;
        // The one whose lease will expire gets the shortest TTL and records its renewals.
        let (lease, keeper) = if *ending == Ending::Expire {
            let lease = cc.lease_grant(1, None).await.unwrap();
            assert_eq!(lease.ttl(), 1);
            let (mut keeper, mut responses) = cc.lease_keep_alive(lease.id()).await.unwrap();
            let last_renewal = last_renewal.clone();
            let task = tokio::spawn(async move {
                loop {
                    keeper.keep_alive().await.unwrap();
                    let r = responses.message().await.unwrap().unwrap();
                    assert_eq!(r.ttl(), 1);
                    *last_renewal.lock().unwrap() = Instant::now();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            (lease.id(), task)
        } else {
            kept_alive(&mut cc, 3, Duration::from_millis(300)).await
        };
        keys.push(format!("{NAME}/{lease:x}"));
        leases.push(lease);
        keepers.push(keeper);
        let elected_tx = elected_tx.clone();
        tokio::spawn(async move {
            let won = cc.campaign(NAME, format!("v{i}"), lease).await;
            let _ = elected_tx.send((i, won.map(|r| r.leader().unwrap().clone()), Instant::now()));
        });
        wait_keys(&mut c, &format!("{NAME}/"), &keys).await;
    }

    let mut expected_observed = Vec::new();
    let mut expired_at = None;
    for (i, ending) in endings.iter().enumerate() {
        let (who, won, at) = tokio::time::timeout(WAIT, elected.recv())
            .await
            .unwrap_or_else(|_| panic!("candidate {i} never led"))
            .unwrap();
        assert_eq!(who, i, "leaders in campaign order");
        if let Some(renewed) = expired_at.take() {
            let took = at.duration_since(renewed);
            assert!(
                took <= EXPIRY_LIMIT,
                "candidate {i} led {took:?} after the last renewal of its predecessor's 1 s lease"
            );
        }
        let lk = won.unwrap();
        assert_eq!(lk.key_str().unwrap(), keys[i]);
        let value = format!("v{i}");
        assert_eq!(leader(&mut c, NAME).await, Some(pair(&keys[i], &value)));
        assert_eq!(observer.next().await, pair(&keys[i], &value));
        expected_observed.push(pair(&keys[i], &value));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(elected.try_recv().is_err(), "only candidate {i} leads");

        match ending {
            Ending::Resign => {
                c.resign(Some(ResignOptions::new().with_leader(lk)))
                    .await
                    .unwrap();
            }
            Ending::Revoke => {
                c.lease_revoke(leases[i]).await.unwrap();
            }
            Ending::Expire => {
                keepers[i].abort();
                let _ = (&mut keepers[i]).await;
                // Whoever comes next must lead within the TTL of the last renewal (+ slack).
                expired_at = Some(*last_renewal.lock().unwrap());
            }
            Ending::ProclaimThenResign => {
                let proclaimed = format!("v{i}b");
                c.proclaim(
                    proclaimed.as_str(),
                    Some(ProclaimOptions::new().with_leader(lk.clone())),
                )
                .await
                .unwrap();
                assert_eq!(observer.next().await, pair(&keys[i], &proclaimed));
                expected_observed.push(pair(&keys[i], &proclaimed));
                assert_eq!(leader(&mut c, NAME).await, Some(pair(&keys[i], &proclaimed)));
                c.resign(Some(ResignOptions::new().with_leader(lk)))
                    .await
                    .unwrap();
            }
        }
    }
    assert_eq!(leader(&mut c, NAME).await, None);
    observer.quiet().await;
    let mut observed = Vec::new();
    while let Ok(change) = recorder.changes.try_recv() {
        observed.push(change);
    }
    assert_eq!(observed, expected_observed, "every change once, in order");
    poller.abort();
    let seen = seen.lock().unwrap().clone();
    let mut expected: Vec<Option<String>> = vec![None];
    expected.extend(keys.iter().cloned().map(Some));
    expected.push(None);
    assert_eq!(seen, expected, "Leader answers over time");
    for keeper in keepers {
        keeper.abort();
    }
    drop(elected_tx);
}

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::memory::MemoryKv;

const BOUND: Duration = Duration::from_secs(30);

type Changes = Pin<Box<dyn Stream<Item = Result<(ResponseHeader, KeyValue)>> + Send>>;

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future).await.expect("timed out")
}

async fn session(kv: &MemoryKv) -> Session<MemoryKv> {
    Session::new(kv.clone(), 10).await.unwrap()
}

async fn candidates(kv: &MemoryKv, name: &str) -> usize {
    let prefix = prefix_of(name);
    let range = RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(&prefix),
        ..Default::default()
    };
    kv.range(range).await.unwrap().kvs.len()
}

async fn until_candidates(kv: &MemoryKv, name: &str, n: usize) {
    bounded(async {
        while candidates(kv, name).await != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn leader_value(kv: &MemoryKv, name: &str) -> Result<Vec<u8>> {
    Ok(Election::leader(kv, name).await?.1.value.into())
}

/// The next `n` values `changes` reports, then checks it reports nothing more.
async fn observed(changes: &mut Changes, n: usize) -> Vec<String> {
    let mut values = Vec::new();
    for _ in 0..n {
        let (header, kv) = bounded(changes.next()).await.unwrap().unwrap();
        assert!(header.revision >= kv.mod_revision);
        values.push(String::from_utf8(kv.value.into()).unwrap());
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .is_err(),
        "{values:?} and more"
    );
    values
}

#[tokio::test(start_paused = true)]
async fn one_leader_at_a_time_handing_over_in_campaign_order() {
    let kv = MemoryKv::new();
    let mut changes: Changes = Box::pin(Election::observe(kv.clone(), "e"));
    assert!(observed(&mut changes, 0).await.is_empty()); // starts it: streams are lazy
    let (led_tx, mut led) = mpsc::unbounded_channel();
    let mut resigns = Vec::new();
    for i in 0..5 {
        let session = session(&kv).await;
        let led_tx = led_tx.clone();
        let (resign_tx, resign) = oneshot::channel::<()>();
        resigns.push(resign_tx);
        tokio::spawn(async move {
            let mut election = Election::new(&session, "e");
            let (leader, _) = election.campaign(format!("c{i}")).await.unwrap();
            assert_eq!(election.leader_key(), Some(&leader));
            led_tx.send(i).unwrap();
            resign.await.unwrap();
            election.resign().await.unwrap();
            assert!(matches!(election.proclaim("late").await, Err(Error::NotLeader)));
        });
        until_candidates(&kv, "e", i + 1).await;
    }
    for (i, resign) in resigns.into_iter().enumerate() {
        assert_eq!(bounded(led.recv()).await, Some(i));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(led.try_recv().is_err(), "two leaders at once");
        assert_eq!(leader_value(&kv, "e").await.unwrap(), format!("c{i}").as_bytes());
        resign.send(()).unwrap();
    }
    until_candidates(&kv, "e", 0).await;
    assert!(matches!(leader_value(&kv, "e").await, Err(Error::NoLeader)));
    assert_eq!(observed(&mut changes, 5).await, ["c0", "c1", "c2", "c3", "c4"]);
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_proclaims_and_observers_see_each_value_once() {
    let kv = MemoryKv::new();
    assert!(matches!(leader_value(&kv, "p").await, Err(Error::NoLeader)));
    let (first_session, second_session) = (session(&kv).await, session(&kv).await);
    let mut first = Election::new(&first_session, "p");
    first.campaign("a").await.unwrap();
    let mut changes: Changes = Box::pin(Election::observe(kv.clone(), "p"));
    assert_eq!(observed(&mut changes, 1).await, ["a"]);
    let waiting = tokio::spawn(async move { Election::new(&second_session, "p").campaign("b").await });
    until_candidates(&kv, "p", 2).await;

    first.proclaim("a2").await.unwrap();
    first.proclaim("a2").await.unwrap(); // no change
    assert_eq!(leader_value(&kv, "p").await.unwrap(), b"a2");
    let never_ran = Election::new(&session(&kv).await, "p");
    assert!(matches!(never_ran.proclaim("x").await, Err(Error::NotLeader)));
    let mut stale = first.leader_key().unwrap().clone();
    stale.rev -= 1;
    let stale = Election::resume(&first_session, stale);
    assert!(matches!(stale.proclaim("x").await, Err(Error::NotLeader)));

    // The leader's lease ends: the next candidate leads, and the old leader cannot proclaim.
    kv.expire_lease(first_session.lease());
    let (second, _) = bounded(waiting).await.unwrap().unwrap();
    assert!(matches!(first.proclaim("a3").await, Err(Error::NotLeader)));
    assert_eq!(Election::leader(&kv, "p").await.unwrap().1.key, second.key);
    assert_eq!(observed(&mut changes, 2).await, ["a2", "b"]);
}

#[tokio::test(start_paused = true)]
async fn an_observer_waits_for_the_first_candidate() {
    let kv = MemoryKv::new();
    let mut changes: Changes = Box::pin(Election::observe(kv.clone(), "o"));
    assert!(
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .is_err()
    );
    let session = session(&kv).await;
    let mut election = Election::new(&session, "o");
    election.campaign("v").await.unwrap();
    election.resign().await.unwrap();
    election.campaign("v").await.unwrap(); // a new leadership (new key), with the same value
    assert_eq!(observed(&mut changes, 2).await, ["v", "v"]);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_leadership_can_proclaim_and_resign() {
    let kv = MemoryKv::new();
    let session = session(&kv).await;
    let (leader, _) = Election::new(&session, "r").campaign("a").await.unwrap();

    // The same session campaigning again keeps its key and proclaims the new value.
    let (again, _) = Election::new(&session, "r").campaign("b").await.unwrap();
    assert_eq!(again, leader);
    assert_eq!(leader_value(&kv, "r").await.unwrap(), b"b");

    let elsewhere = Session::from_lease(kv.clone(), leader.lease);
    let mut resumed = Election::resume(&elsewhere, leader);
    resumed.proclaim("c").await.unwrap();
    assert_eq!(leader_value(&kv, "r").await.unwrap(), b"c");
    resumed.resign().await.unwrap();
    assert!(matches!(leader_value(&kv, "r").await, Err(Error::NoLeader)));
    assert!(resumed.leader_key().is_none());
    resumed.resign().await.unwrap(); // not leading: no error
}

#[tokio::test(start_paused = true)]
async fn a_candidate_whose_lease_ends_gets_session_expired() {
    let kv = MemoryKv::new();
    let leader_session = session(&kv).await;
    let mut leader = Election::new(&leader_session, "x");
    leader.campaign("l").await.unwrap();
    let lease = kv.lease_grant(10).await.unwrap().id;
    let waiting = tokio::spawn(async move {
        Election::new(&Session::from_lease(kv.clone(), lease), "x")
            .campaign("w")
            .await
    });
    until_candidates(leader_session.kv(), "x", 2).await;
    leader_session.kv().expire_lease(lease);
    leader.resign().await.unwrap();
    assert!(matches!(
        bounded(waiting).await.unwrap(),
        Err(Error::SessionExpired)
    ));
}

//! Campaign without a lease. A Campaign with lease 0 used to write the candidate key
//! `name/0` with no lease: two such candidates shared one key, and both were told they lead (a
//! split brain). Now, as in etcd, a campaign without a lease gets a 60 s lease of its own, so
//! each candidate has its own key and the second waits until the first resigns.

use std::time::{Duration, Instant};

use etcd_client::{CampaignResponse, Client, LeaderKey, ResignOptions};

use super::{WAIT, assert_restarts_intact, pairs_under};
use crate::client_kv::connect;
use crate::harness::Server;

/// The TTL etcd gives the session of a campaign without a lease, in seconds.
const SESSION_TTL: i64 = 60;
/// How long the second candidate is watched for not being told it leads.
const STILL_WAITING: Duration = Duration::from_secs(1);

const NAME: &str = "split";

async fn campaign(mut c: Client, value: &'static str) -> CampaignResponse {
    c.campaign(NAME, value, 0).await.unwrap()
}

/// The leader key a campaign won, checked to hold a lease of its own with etcd's session TTL.
async fn owned_leader_key(c: &mut Client, won: &CampaignResponse) -> LeaderKey {
    let leader = won.leader().expect("a leader key").clone();
    assert_ne!(leader.lease(), 0, "the campaign holds no lease: {leader:?}");
    let stored = c.get(leader.key(), None).await.unwrap();
    let kv = stored.kvs().first().expect("the leader's key is stored");
    assert_eq!(kv.lease(), leader.lease(), "the stored key's lease");
    let ttl = c.lease_time_to_live(leader.lease(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), SESSION_TTL);
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_without_a_lease_do_not_both_lead() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;

    let mut a = tokio::spawn(campaign(connect(&server).await, "a"));
    let mut b = tokio::spawn(campaign(connect(&server).await, "b"));
    let (won, mut waiting) = tokio::time::timeout(WAIT, async {
        tokio::select! {
            won = &mut a => (won.unwrap(), b),
            won = &mut b => (won.unwrap(), a),
        }
    })
    .await
    .expect("one campaign wins at once");
    let first = owned_leader_key(&mut c, &won).await;

    // Both candidates' keys are in place; the second is not told it leads.
    let deadline = Instant::now() + WAIT;
    while pairs_under(&mut c, &format!("{NAME}/")).await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second candidate's key never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(STILL_WAITING).await;
    assert!(
        !waiting.is_finished(),
        "both campaigns without a lease were told they lead"
    );
    let leader = c.leader(NAME).await.unwrap();
    assert_eq!(leader.kv().unwrap().key(), first.key());

    // The first resigns: the second leads, under a key and lease of its own.
    c.resign(Some(ResignOptions::new().with_leader(first.clone())))
        .await
        .unwrap();
    let won = tokio::time::timeout(WAIT, &mut waiting)
        .await
        .expect("the second candidate leads once the first resigns")
        .unwrap();
    let second = owned_leader_key(&mut c, &won).await;
    assert_ne!(second.key(), first.key());
    assert_ne!(second.lease(), first.lease());
    let leader = c.leader(NAME).await.unwrap();
    assert_eq!(leader.kv().unwrap().key(), second.key());

    let expected = pairs_under(&mut c, &format!("{NAME}/")).await;
    assert_eq!(expected.len(), 1, "{expected:?}");
    assert_restarts_intact(&mut server, &format!("{NAME}/"), &expected).await;
}

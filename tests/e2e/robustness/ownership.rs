//! The lock and election load, through etcd's Lock and Election services: lock tasks take one
//! contended lock, make fenced writes while they hold it and one more after they let it go (which
//! must be refused); election tasks campaign, proclaim while they lead, resign, and proclaim once
//! more (refused too). Every success is a claim judged by [`crate::checkers::ownership`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, LeaderKey, LockOptions, ProclaimOptions, ResignOptions, Txn, TxnOp,
};

use super::workload::{BACKOFF, PREFIX, Recorder, bounded, task_rng};
use crate::checkers::ownership::Claim;
use crate::cluster::harness::XorShift;

/// The TTL of the leases that hold locks and leadership: a holder cut off loses them soon.
const TTL: i64 = 2;

/// The contended lock's name.
pub fn lock_name() -> String {
    format!("{PREFIX}lock")
}

/// The election's name.
pub fn election_name() -> String {
    format!("{PREFIX}election")
}

/// The key the lock holders write, fenced by their lock key.
pub fn fenced_key() -> String {
    format!("{PREFIX}fenced")
}

/// Lock task `id`: takes the lock, makes up to three fenced writes, unlocks (or lets its lease
/// go), then tries one more fenced write with the key it no longer holds.
pub async fn lock_task(
    id: usize,
    mut clients: Vec<Client>,
    mut member: usize,
    seed: u64,
    rec: Arc<Recorder>,
) {
    let mut rng = task_rng(seed, 201, id);
    let mut seq = 0;
    while !rec.stop.load(Ordering::Relaxed) {
        let Some(lease) = grant(&mut clients, &mut member, &mut rng).await else {
            continue;
        };
        let client = &mut clients[member];
        let options = LockOptions::new().with_lease(lease);
        let Some(locked) = bounded(client.lock(lock_name(), Some(options))).await else {
            // The lock key may exist: revoking the lease takes it away (or it expires).
            let _ = bounded(client.lease_revoke(lease)).await;
            member = rng.below(clients.len());
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let key = String::from_utf8_lossy(locked.key()).into_owned();
        claim(
            &rec,
            &key,
            locked.header().map_or(0, |h| h.revision()),
            format!("c{id} locked"),
        );
        for _ in 0..1 + rng.below(3) {
            seq += 1;
            fenced_write(client, &rec, id, &key, seq, "fenced write").await;
            tokio::time::sleep(Duration::from_millis(rng.below(100) as u64)).await;
        }
        if rng.below(3) == 0 {
            let _ = bounded(client.unlock(key.as_str())).await;
        }
        let _ = bounded(client.lease_revoke(lease)).await;
        seq += 1;
        fenced_write(client, &rec, id, &key, seq, "fenced write after letting go").await;
    }
}

/// A put of the fenced key guarded by `key` still existing; a success is a claim that `key`
/// held the lock at the write's revision.
async fn fenced_write(client: &mut Client, rec: &Recorder, id: usize, key: &str, seq: i64, what: &str) {
    let value = format!("F{id}-{seq}");
    let txn = Txn::new()
        .when([Compare::version(key, CompareOp::Greater, 0)])
        .and_then([TxnOp::put(fenced_key(), value.as_str(), None)]);
    if let Some(answer) = bounded(client.txn(txn)).await {
        rec.ok.fetch_add(1, Ordering::Relaxed);
        if answer.succeeded() {
            rec.ack(&[fenced_key().as_str()], &value);
            let revision = answer.header().map_or(0, |h| h.revision());
            claim(rec, key, revision, format!("c{id} {what}"));
        }
    }
}

/// Election task `id`: campaigns, proclaims up to three values while it leads, resigns (or lets
/// its lease go), then proclaims once more as the leader it no longer is.
pub async fn election_task(
    id: usize,
    mut clients: Vec<Client>,
    mut member: usize,
    seed: u64,
    rec: Arc<Recorder>,
) {
    let mut rng = task_rng(seed, 301, id);
    let mut seq = 0;
    while !rec.stop.load(Ordering::Relaxed) {
        let Some(lease) = grant(&mut clients, &mut member, &mut rng).await else {
            continue;
        };
        let client = &mut clients[member];
        seq += 1;
        let Some(won) = bounded(client.campaign(election_name(), format!("E{id}-{seq}"), lease)).await else {
            let _ = bounded(client.lease_revoke(lease)).await;
            member = rng.below(clients.len());
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let Some(leader) = won.leader().cloned() else {
            continue;
        };
        let revision = won.header().map_or(0, |h| h.revision());
        claim_as_leader(&rec, &leader, revision, format!("e{id} won"));
        for _ in 0..1 + rng.below(3) {
            seq += 1;
            proclaim(client, &rec, id, &leader, seq, "proclaimed").await;
            tokio::time::sleep(Duration::from_millis(rng.below(100) as u64)).await;
        }
        if rng.below(3) == 0 {
            let options = ResignOptions::new().with_leader(leader.clone());
            let _ = bounded(client.resign(Some(options))).await;
        }
        let _ = bounded(client.lease_revoke(lease)).await;
        seq += 1;
        proclaim(client, &rec, id, &leader, seq, "proclaimed after letting go").await;
    }
}

/// A proclaim as `leader`; a success is a claim that it led at the proclaim's revision.
async fn proclaim(client: &mut Client, rec: &Recorder, id: usize, leader: &LeaderKey, seq: i64, what: &str) {
    let value = format!("E{id}-{seq}");
    let options = ProclaimOptions::new().with_leader(leader.clone());
    if let Some(answer) = bounded(client.proclaim(value.as_str(), Some(options))).await {
        rec.ok.fetch_add(1, Ordering::Relaxed);
        let key = String::from_utf8_lossy(leader.key()).into_owned();
        rec.ack(&[key.as_str()], &value);
        let revision = answer.header().map_or(0, |h| h.revision());
        claim_as_leader(rec, leader, revision, format!("e{id} {what}"));
    }
}

/// A lease of [`TTL`] through `clients[*member]`; `None` after a failure, with the next try
/// to go through another member after a pause.
async fn grant(clients: &mut [Client], member: &mut usize, rng: &mut XorShift) -> Option<i64> {
    match bounded(clients[*member].lease_grant(TTL, None)).await {
        Some(granted) => Some(granted.id()),
        None => {
            *member = rng.below(clients.len());
            tokio::time::sleep(BACKOFF).await;
            None
        }
    }
}

/// Records that `key` owned the lock at `revision`.
fn claim(rec: &Recorder, key: &str, revision: i64, what: String) {
    rec.claims.lock().unwrap().push(Claim {
        prefix: format!("{}/", lock_name()),
        key: key.to_string(),
        create_revision: None,
        revision,
        what,
    });
}

/// Records that `leader` led the election at `revision`.
fn claim_as_leader(rec: &Recorder, leader: &LeaderKey, revision: i64, what: String) {
    rec.claims.lock().unwrap().push(Claim {
        prefix: format!("{}/", election_name()),
        key: String::from_utf8_lossy(leader.key()).into_owned(),
        create_revision: Some(leader.rev()),
        revision,
        what,
    });
}

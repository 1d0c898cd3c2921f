//! The recipe workloads: `--clients` contenders on ONE lock or ONE election.
//!
//! - lock: each contender repeats Lock (with its own lease), one compare-and-swap guarded by
//!   the lock key (the write a holder fences with its ownership), and Unlock;
//! - election: each contender repeats Campaign (with its own lease), one Proclaim, and Resign.
//!
//! A cycle's latency includes waiting for the other holders, so throughput is how fast the
//! server hands a released lock or leadership to the next waiter.

use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::{Compare, LeaseGrantRequest, PutRequest, RequestOp, TxnRequest};
use concord_proto::v3electionpb::election_client::ElectionClient;
use concord_proto::v3electionpb::{CampaignRequest, ProclaimRequest, ResignRequest};
use concord_proto::v3lockpb::lock_client::LockClient;
use concord_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

/// The lock, and the election, every contender wants.
const NAME: &[u8] = b"bench-lock";
/// The key a lock holder writes while it holds the lock.
const GUARDED_KEY: &[u8] = b"bench-lock-guarded";
/// TTL of each contender's lease: long enough never to expire during a run.
const TTL_SECS: i64 = 60;

async fn grant(channel: &Channel) -> anyhow::Result<i64> {
    Ok(LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest { ttl: TTL_SECS, id: 0 })
        .await
        .context("grant")?
        .into_inner()
        .id)
}

/// A put of `GUARDED_KEY` that succeeds only while `lock_key` exists (the holder's fence).
fn guarded_put(lock_key: &[u8]) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Create as i32,
            key: lock_key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: GUARDED_KEY.to_vec(),
                value: lock_key.to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
}

/// Runs `cycles` Lock / CAS / Unlock cycles on `channel`; returns each cycle's latency.
pub async fn lock_loop(channel: Channel, cycles: usize) -> anyhow::Result<Vec<Duration>> {
    let lease = grant(&channel).await?;
    let mut kv = KvClient::new(channel.clone());
    let mut lock = LockClient::new(channel);
    let mut latencies = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let started = Instant::now();
        let key = lock
            .lock(LockRequest {
                name: NAME.to_vec(),
                lease,
            })
            .await
            .context("lock")?
            .into_inner()
            .key;
        let fenced = kv.txn(guarded_put(&key)).await.context("guarded put")?;
        anyhow::ensure!(fenced.into_inner().succeeded, "the holder's guarded put failed");
        lock.unlock(UnlockRequest { key }).await.context("unlock")?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// Runs `rounds` Campaign / Proclaim / Resign rounds on `channel`; returns each round's latency.
pub async fn election_loop(channel: Channel, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let lease = grant(&channel).await?;
    let mut election = ElectionClient::new(channel);
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let started = Instant::now();
        let leader = election
            .campaign(CampaignRequest {
                name: NAME.to_vec(),
                lease,
                value: b"candidate".to_vec(),
            })
            .await
            .context("campaign")?
            .into_inner()
            .leader;
        election
            .proclaim(ProclaimRequest {
                leader: leader.clone(),
                value: format!("round {round}").into_bytes(),
            })
            .await
            .context("proclaim")?;
        election
            .resign(ResignRequest { leader })
            .await
            .context("resign")?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

//! The lock workload: `--clients` contenders on ONE lock through the Lock service, each
//! repeating Lock (with its own lease) and Unlock. A cycle's latency includes waiting for the
//! other holders, so throughput is how fast the server hands a released lock to the next
//! waiter.

use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::etcdserverpb::LeaseGrantRequest;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::v3lockpb::lock_client::LockClient;
use concord_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

/// The lock every contender wants.
const LOCK_NAME: &[u8] = b"bench-lock";
/// TTL of each contender's lease: long enough never to expire during a run.
const TTL_SECS: i64 = 60;

/// Runs `cycles` lock/unlock cycles on `channel`; returns each cycle's latency.
pub async fn cycle_loop(channel: Channel, cycles: usize) -> anyhow::Result<Vec<Duration>> {
    let lease = LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest { ttl: TTL_SECS, id: 0 })
        .await
        .context("grant")?
        .into_inner()
        .id;
    let mut lock = LockClient::new(channel);
    let mut latencies = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let started = Instant::now();
        let key = lock
            .lock(LockRequest {
                name: LOCK_NAME.to_vec(),
                lease,
            })
            .await
            .context("lock")?
            .into_inner()
            .key;
        lock.unlock(UnlockRequest { key }).await.context("unlock")?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

//! The lease workload: each client repeats a lease's life cycle, as a service registry's
//! members do: grant, put a key with the lease, one keepalive, revoke.

use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// TTL of every granted lease: long enough never to expire during a cycle.
const TTL_SECS: i64 = 60;

/// Runs `cycles` lease cycles on `channel`; returns each cycle's latency.
pub async fn cycle_loop(
    channel: Channel,
    keys: std::ops::Range<usize>,
    key_size: usize,
    value_size: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut kv = KvClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel);
    let (keepalive_tx, keepalive_rx) = mpsc::channel(1);
    let mut keepalive_rx = Some(keepalive_rx);
    let mut keepalives = None;
    let value = vec![b'v'; value_size];
    let mut latencies = Vec::with_capacity(keys.len());
    for i in keys {
        let started = Instant::now();
        let id = lease
            .lease_grant(LeaseGrantRequest { ttl: TTL_SECS, id: 0 })
            .await
            .context("grant")?
            .into_inner()
            .id;
        kv.put(PutRequest {
            key: crate::key(i, key_size),
            value: value.clone(),
            lease: id,
            ..Default::default()
        })
        .await
        .context("put with lease")?;
        keepalive_tx
            .send(LeaseKeepAliveRequest { id })
            .await
            .context("send keepalive")?;
        // grpc-go (etcd) sends a stream's headers with its first answer, so the stream is
        // opened only once its first request is queued.
        if let Some(rx) = keepalive_rx.take() {
            let stream = lease
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .context("open keepalive stream")?;
            keepalives = Some(stream.into_inner());
        }
        let renewed = keepalives
            .as_mut()
            .context("keepalive stream not open")?
            .message()
            .await
            .context("keepalive")?
            .context("keepalive stream ended")?;
        anyhow::ensure!(renewed.ttl > 0, "lease {id:x} not renewed");
        lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .context("revoke")?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

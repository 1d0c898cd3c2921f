//! Operations benchmarks: defragmentation under write load, and backups of a large database.
//!
//! - `defrag`: writes `--fill-mb` of history (64 KiB values over 16 keys), compacts it away,
//!   then runs `--clients` writers of small values and, a second in, one Defragment. Reports
//!   how long the defragmentation took, the worst and p99 put latency while it ran, the put
//!   rate before and during it, and the database size before and after.
//! - `backup`: writes `--fill-mb` of live keys (100 KiB values), then streams
//!   Maintenance.Snapshot into `--out`. Reports the time and rate of the backup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::{
    CompactionRequest, DefragmentRequest, PutRequest, RangeRequest, SnapshotRequest, StatusRequest,
};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use crate::percentile;

const MIB: usize = 1024 * 1024;

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(endpoint.to_string())?
        .connect()
        .await
        .with_context(|| format!("connect to {endpoint}"))
}

/// Puts `bytes` in total as values of `value_size` over `keys` keys, with 16 writers.
async fn fill(
    channel: &Channel,
    bytes: usize,
    value_size: usize,
    keys: usize,
    prefix: &str,
) -> anyhow::Result<()> {
    let puts = bytes.div_ceil(value_size);
    let writers = 16;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut kv = KvClient::new(channel.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'f'; value_size];
            for i in (w..puts).step_by(writers) {
                kv.put(PutRequest {
                    key: format!("{prefix}{:08}", i % keys).into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .context("fill put")?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn db_size(channel: &Channel) -> anyhow::Result<i64> {
    Ok(MaintenanceClient::new(channel.clone())
        .status(StatusRequest {})
        .await?
        .into_inner()
        .db_size)
}

/// The defragmentation benchmark; prints one line.
pub async fn defrag(endpoint: &str, clients: usize, fill_mb: usize, label: &str) -> anyhow::Result<()> {
    let channel = connect(endpoint).await?;
    fill(&channel, fill_mb * MIB, 64 * 1024, 16, "/bench-defrag/big/").await?;
    let mut kv = KvClient::new(channel.clone());
    let head = kv
        .range(RangeRequest {
            key: b"/bench-defrag/big/".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    kv.compact(CompactionRequest {
        revision: head,
        physical: true,
    })
    .await?;
    let before = db_size(&channel).await?;

    // Writers of small values record (sent at, latency) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..clients {
        let mut kv = KvClient::new(connect(endpoint).await?);
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                kv.put(PutRequest {
                    key: format!("/bench-defrag/small/{w}/{i}").into_bytes(),
                    value: vec![b's'; 256],
                    ..Default::default()
                })
                .await
                .context("put during defrag")?;
                samples.push((sent.duration_since(started), sent.elapsed()));
                i += 1;
            }
            anyhow::Ok(samples)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let defrag_from = started.elapsed();
    MaintenanceClient::new(channel.clone())
        .defragment(DefragmentRequest {})
        .await
        .context("defragment")?;
    let defrag_to = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut during = Vec::new();
    let mut before_count = 0usize;
    for writer in writers {
        for (sent_at, latency) in writer.await?? {
            // A put overlaps the defragmentation if it was in flight at any moment of it.
            if sent_at + latency >= defrag_from && sent_at <= defrag_to {
                during.push(latency);
            } else if sent_at < defrag_from {
                before_count += 1;
            }
        }
    }
    during.sort();
    let took = defrag_to - defrag_from;
    let after = db_size(&channel).await?;
    let rate = |n: usize, over: Duration| n as f64 / over.as_secs_f64().max(1e-9);
    println!(
        "{label:<8} defrag {:>7.1} ms  size {:>6.1} -> {:>5.1} MiB  puts during {:>5} ({:>7.0}/s, before {:>7.0}/s)  worst {:>7.1} ms  p99 {:>6.1} ms",
        took.as_secs_f64() * 1000.0,
        before as f64 / MIB as f64,
        after as f64 / MIB as f64,
        during.len(),
        rate(during.len(), took),
        rate(before_count, defrag_from),
        during.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        percentile(&during, 0.99).as_secs_f64() * 1000.0,
    );
    Ok(())
}

/// The backup benchmark; prints one line.
pub async fn backup(
    endpoint: &str,
    fill_mb: usize,
    out: &std::path::Path,
    label: &str,
) -> anyhow::Result<()> {
    let channel = connect(endpoint).await?;
    let value_size = 100 * 1024;
    let keys = (fill_mb * MIB).div_ceil(value_size);
    fill(&channel, fill_mb * MIB, value_size, keys, "/bench-backup/").await?;
    let size = db_size(&channel).await?;
    let started = Instant::now();
    let mut stream = MaintenanceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let mut file = tokio::fs::File::create(out).await?;
    let mut written = 0usize;
    while let Some(chunk) = stream.message().await? {
        file.write_all(&chunk.blob).await?;
        written += chunk.blob.len();
    }
    file.sync_all().await?;
    let took = started.elapsed();
    println!(
        "{label:<8} backup of a {:.0} MiB database: {:>6.2} s  ({:.0} MiB/s, {} bytes written)",
        size as f64 / MIB as f64,
        took.as_secs_f64(),
        written as f64 / MIB as f64 / took.as_secs_f64().max(1e-9),
        written,
    );
    Ok(())
}

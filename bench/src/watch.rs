//! The watch benchmark: N watchers on one prefix, one writer; events delivered per second and
//! the delivery latency (put sent → event received) percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use concord_recipes::kv::prefix_end;
use tokio::sync::{Barrier, mpsc};
use tonic::transport::Channel;

use crate::percentile;

/// Watch streams multiplexed on one connection.
const STREAMS_PER_CONNECTION: usize = 50;
const PREFIX: &str = "/bench-watch/";

/// What one watcher measured.
struct Received {
    latencies: Vec<Duration>,
    last: Instant,
}

/// Runs the benchmark and prints one result line.
pub async fn run(
    endpoint: &str,
    watchers: usize,
    puts: usize,
    value_size: usize,
    label: &str,
) -> anyhow::Result<()> {
    let connections = watchers.div_ceil(STREAMS_PER_CONNECTION);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(
            Channel::from_shared(endpoint.to_string())?
                .connect()
                .await
                .context("connect")?,
        );
    }
    // Send times by put index, shared with the watchers (written before each put is sent).
    let sent: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..puts).map(|_| std::sync::OnceLock::new()).collect());
    let ready = Arc::new(Barrier::new(watchers + 1));
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let mut client = WatchClient::new(channels[w % connections].clone());
        let sent = sent.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: PREFIX.as_bytes().to_vec(),
                    range_end: prefix_end(PREFIX.as_bytes()),
                    ..Default::default()
                })),
            })
            .await?;
            let mut stream = client
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let created = stream.message().await?.context("no created response")?;
            anyhow::ensure!(created.created, "first response is not `created`");
            ready.wait().await;
            let mut received = Received {
                latencies: Vec::with_capacity(puts),
                last: Instant::now(),
            };
            while received.latencies.len() < puts {
                let response = stream.message().await?.context("watch stream ended")?;
                let now = Instant::now();
                for event in response.events {
                    let key = event.kv.context("event without kv")?.key;
                    let index: usize = std::str::from_utf8(&key[PREFIX.len()..])?.parse()?;
                    let started = sent[index]
                        .get()
                        .copied()
                        .context("event before its put was sent")?;
                    received.latencies.push(now - started);
                }
                received.last = now;
            }
            drop(tx);
            anyhow::Ok(received)
        }));
    }
    ready.wait().await;
    let mut kv = KvClient::new(channels[0].clone());
    let value = vec![b'v'; value_size];
    let started = Instant::now();
    for (i, slot) in sent.iter().enumerate() {
        let _ = slot.set(Instant::now());
        kv.put(PutRequest {
            key: format!("{PREFIX}{i:08}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .context("put")?;
    }
    let mut latencies = Vec::with_capacity(watchers * puts);
    let mut last = started;
    for task in tasks {
        let received = task.await??;
        latencies.extend(received.latencies);
        last = last.max(received.last);
    }
    let elapsed = last - started;
    latencies.sort_unstable();
    println!(
        "{label} workload=Watch watchers={watchers} puts={puts} events={events} seconds={secs:.2} events_per_sec={rate:.0} p50_ms={p50:.2} p99_ms={p99:.2}",
        events = latencies.len(),
        secs = elapsed.as_secs_f64(),
        rate = latencies.len() as f64 / elapsed.as_secs_f64(),
        p50 = percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}

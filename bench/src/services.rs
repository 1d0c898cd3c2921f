//! Benchmarks of Concord's own services, which etcd does not have:
//!
//! - `registry`: `--instances` instances of one service registered (on one lease), then
//!   `--watchers` subscribers each on its own Registry.Watch stream, then `--total`
//!   registrations one after another; the latency from a Register being sent to each
//!   subscriber receiving its ADDED change.
//! - `config`: `--watchers` clients each on a Config.Watch stream of one key, then `--total`
//!   versions written one after another; the latency from a Put being sent to each watcher
//!   receiving that version.
//!
//! With `--pids`, the server processes' CPU time over the timed part is reported too, per
//! operation and per delivered event.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::concord::config::v1 as config;
use concord_proto::concord::config::v1::config_client::ConfigClient;
use concord_proto::concord::registry::v1 as registry;
use concord_proto::concord::registry::v1::registry_client::RegistryClient;
use concord_proto::etcdserverpb::LeaseGrantRequest;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use tokio::sync::Barrier;
use tonic::transport::Channel;

use crate::percentile;

/// Streams multiplexed on one connection.
const STREAMS_PER_CONNECTION: usize = 50;
/// Registrations in flight while filling the registry.
const FILL_CONCURRENCY: usize = 32;

/// Send times by operation index, written just before each operation is sent.
type Sent = Arc<Vec<OnceLock<Instant>>>;

async fn channels(endpoint: &str, streams: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(STREAMS_PER_CONNECTION).max(1) {
        let channel = Channel::from_shared(endpoint.to_string())?
            .connect()
            .await
            .context("connect")?;
        channels.push(channel);
    }
    Ok(channels)
}

/// CPU time (user + system) the processes `pids` used so far.
fn cpu_time(pids: &[u32]) -> Option<Duration> {
    // sysconf(_SC_CLK_TCK), 100 on every Linux we run on.
    const TICKS_PER_SECOND: u64 = 100;
    let mut ticks = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which may hold spaces) end with ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// Prints the result line.
fn report(
    label: &str,
    workload: &str,
    setup: &str,
    ops: usize,
    mut latencies: Vec<Duration>,
    elapsed: Duration,
    cpu: Option<Duration>,
) {
    latencies.sort_unstable();
    let events = latencies.len();
    let cpu = cpu.map_or(String::new(), |cpu| {
        format!(
            " server_cpu_ms={:.0} cpu_ms_per_op={:.2} cpu_us_per_event={:.1}",
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3 / ops as f64,
            cpu.as_secs_f64() * 1e6 / events.max(1) as f64
        )
    });
    println!(
        "{label} workload={workload} {setup} ops={ops} events={events} seconds={secs:.2} events_per_sec={rate:.0} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2}{cpu}",
        secs = elapsed.as_secs_f64(),
        rate = events as f64 / elapsed.as_secs_f64(),
        p50 = percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        max = latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// The registry benchmark (see the module docs).
pub async fn registry(
    endpoint: &str,
    instances: usize,
    watchers: usize,
    registrations: usize,
    pids: &[u32],
    label: &str,
) -> anyhow::Result<()> {
    const SERVICE: &str = "bench";
    let channels = channels(endpoint, watchers).await?;
    let lease = LeaseClient::new(channels[0].clone())
        .lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 })
        .await?
        .into_inner()
        .id;
    let register = move |channel: Channel, id: String| async move {
        let request = registry::RegisterRequest {
            service: SERVICE.into(),
            addr: format!("{id}.bench:8080"),
            metadata: r#"{"zone":"a","weight":1}"#.into(),
            id,
            lease,
            ..Default::default()
        };
        RegistryClient::new(channel).register(request).await
    };
    // Fill the registry.
    let mut fillers = Vec::new();
    for f in 0..FILL_CONCURRENCY {
        let channel = channels[f % channels.len()].clone();
        fillers.push(tokio::spawn(async move {
            for i in (f..instances).step_by(FILL_CONCURRENCY) {
                register(channel.clone(), format!("fill-{i:06}")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for filler in fillers {
        filler.await??;
    }
    // Subscribers, each waiting for its first answer (the whole membership).
    let sent: Sent = Arc::new((0..registrations).map(|_| OnceLock::new()).collect());
    let ready = Arc::new(Barrier::new(watchers + 1));
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let channel = channels[w % channels.len()].clone();
        let (sent, ready) = (sent.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let request = registry::WatchRequest {
                service: SERVICE.into(),
                ..Default::default()
            };
            let mut stream = RegistryClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .watch(request)
                .await?
                .into_inner();
            let first = stream.message().await?.context("no first answer")?;
            anyhow::ensure!(first.reset && first.instances.len() == instances, "first answer");
            ready.wait().await;
            let mut latencies = Vec::with_capacity(registrations);
            while latencies.len() < registrations {
                let response = stream.message().await?.context("watch ended")?;
                let now = Instant::now();
                for change in response.changes {
                    let id = change.instance.context("change without instance")?.id;
                    let Some(index) = id.strip_prefix("new-") else {
                        continue;
                    };
                    let started = sent[index.parse::<usize>()?].get().copied().context("unsent")?;
                    latencies.push(now - started);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    ready.wait().await;
    let cpu_before = cpu_time(pids);
    let started = Instant::now();
    for (i, slot) in sent.iter().enumerate() {
        let _ = slot.set(Instant::now());
        register(channels[0].clone(), format!("new-{i:06}")).await?;
    }
    let mut latencies = Vec::with_capacity(watchers * registrations);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before.zip(cpu_time(pids)).map(|(a, b)| b.saturating_sub(a));
    let setup = format!("instances={instances} watchers={watchers}");
    report(label, "registry", &setup, registrations, latencies, elapsed, cpu);
    Ok(())
}

/// The config benchmark (see the module docs).
pub async fn config(
    endpoint: &str,
    watchers: usize,
    versions: usize,
    pids: &[u32],
    label: &str,
) -> anyhow::Result<()> {
    let channels = channels(endpoint, watchers).await?;
    let put = |channel: Channel, n: usize| async move {
        let request = config::PutRequest {
            namespace: "bench".into(),
            key: "settings".into(),
            value: format!("{{\"workers\": {n}, \"name\": \"bench\"}}"),
            format: "json".into(),
            ..Default::default()
        };
        ConfigClient::new(channel).put(request).await
    };
    let first = put(channels[0].clone(), 0).await?.into_inner();
    let base = first.version.context("no version")?.version;
    let sent: Sent = Arc::new((0..versions).map(|_| OnceLock::new()).collect());
    let ready = Arc::new(Barrier::new(watchers + 1));
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let channel = channels[w % channels.len()].clone();
        let (sent, ready) = (sent.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let request = config::WatchRequest {
                namespace: "bench".into(),
                key: "settings".into(),
                ..Default::default()
            };
            let mut stream = ConfigClient::new(channel).watch(request).await?.into_inner();
            ready.wait().await;
            let mut latencies = Vec::with_capacity(versions);
            while latencies.len() < versions {
                let response = stream.message().await?.context("watch ended")?;
                let now = Instant::now();
                for version in response.versions {
                    let index = (version.version - base - 1) as usize;
                    let started = sent[index].get().copied().context("unsent")?;
                    latencies.push(now - started);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    ready.wait().await;
    // The watches are open on the server once their streams answered headers; give the last
    // ones a moment to register before the first put.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_before = cpu_time(pids);
    let started = Instant::now();
    for (i, slot) in sent.iter().enumerate() {
        let _ = slot.set(Instant::now());
        put(channels[0].clone(), i + 1).await?;
    }
    let mut latencies = Vec::with_capacity(watchers * versions);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before.zip(cpu_time(pids)).map(|(a, b)| b.saturating_sub(a));
    report(
        label,
        "config",
        &format!("watchers={watchers}"),
        versions,
        latencies,
        elapsed,
        cpu,
    );
    Ok(())
}

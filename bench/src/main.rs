//! `concord-bench`: drives an etcd-compatible endpoint with N concurrent clients and reports
//! throughput and latency percentiles. The same binary measures Concord and etcd, so a run of
//! `scripts/bench.sh` compares them side by side.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// What each client does in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Durable puts of distinct keys.
    Put,
    /// Durable puts of distinct keys through the HTTP/JSON gateway, a connection per client.
    HttpPut,
    /// Linearizable single-key gets.
    Get,
    /// Serializable single-key gets: the RPC with the least work in the server (no read index).
    SerialGet,
    /// `--watchers` watchers on one prefix, one writer doing `--total` puts.
    Watch,
    /// Lease cycles: grant, put with the lease, one keepalive, revoke.
    Lease,
    /// Compare-and-swap txns, each client on its own key (see `cas.rs`).
    Txn,
    /// `--clients` contenders on one lock (Lock service): lock, one guarded CAS, unlock.
    Lock,
    /// `--clients` contenders on one election: campaign, one proclaim, resign.
    Election,
    /// Kill the leader (`--pids`) under `--clients` writers; time to the first write after.
    Failover,
    /// Concord's Registry: `--instances` registered, `--watchers` subscribers, `--total`
    /// registrations; register -> every subscriber sees it.
    Registry,
    /// Concord's Config: `--watchers` watchers of one key, `--total` versions; put -> every
    /// watcher has it.
    Config,
    /// `--fill-mb` of history compacted away, then one Defragment under `--clients` writers.
    Defrag,
    /// `--fill-mb` of live keys, then a backup (Maintenance.Snapshot) into `--out`.
    Backup,
}

#[derive(Debug, Parser)]
#[command(about = "Load an etcd-compatible endpoint and report throughput and latency")]
struct Args {
    /// Endpoint, e.g. http://127.0.0.1:2379, or several separated by commas.
    #[arg(long)]
    endpoint: String,
    /// The operation every client repeats.
    #[arg(long, value_enum, default_value = "put")]
    workload: Workload,
    /// Concurrent clients (each its own request stream; 16 share one connection).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total operations across all clients.
    #[arg(long, default_value_t = 10_000)]
    total: usize,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Watchers for the watch, registry and config workloads.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Instances registered before the registry workload's timed registrations.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Authenticate as `name:password` once and send the token with every put and get.
    #[arg(long)]
    user: Option<String>,
    /// While the clients work, this many more tasks authenticate with a wrong password over
    /// and over (a password-guessing storm); the line reports how many attempts they made.
    #[arg(long, default_value_t = 0)]
    storm: usize,
    /// CA certificate (PEM) of `https://` endpoints.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// For the failover workload: the process ID serving each endpoint, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Megabytes written before the defrag and backup workloads.
    #[arg(long, default_value_t = 300)]
    fill_mb: usize,
    /// Where the backup workload writes the backup.
    #[arg(long, default_value = "backup.db")]
    out: std::path::PathBuf,
    /// A label printed with the result line.
    #[arg(long, default_value = "")]
    label: String,
}

mod cas;
mod failover;
mod http;
mod lease;
mod lock;
mod ops;
mod services;
mod watch;

/// Clients multiplexed on one HTTP/2 connection, as etcd's own benchmark tool does by default.
const CLIENTS_PER_CONNECTION: usize = 16;

pub(crate) fn key(index: usize, size: usize) -> Vec<u8> {
    let mut key = format!("{index:0width$}", width = size).into_bytes();
    key.truncate(size.max(1));
    key
}

/// A KV client whose requests carry the token (if any).
type Kv = KvClient<InterceptedService<Channel, Token>>;

/// Puts the bench user's token into each request.
#[derive(Clone)]
struct Token(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// Authenticates `user` (`name:password`) on `channel`: the token to send.
async fn authenticate(channel: Channel, user: &str) -> anyhow::Result<Token> {
    use concord_proto::etcdserverpb::AuthenticateRequest;
    use concord_proto::etcdserverpb::auth_client::AuthClient;
    let (name, password) = user.split_once(':').context("--user is name:password")?;
    let request = AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let token = AuthClient::new(channel)
        .authenticate(request)
        .await?
        .into_inner()
        .token;
    Ok(Token(Some(token.parse()?)))
}

async fn client_loop(
    mut kv: Kv,
    workload: Workload,
    ops: std::ops::Range<usize>,
    args: (usize, usize),
) -> anyhow::Result<Vec<Duration>> {
    let (key_size, value_size) = args;
    let value = vec![b'v'; value_size];
    let mut latencies = Vec::with_capacity(ops.len());
    for i in ops {
        let started = Instant::now();
        match workload {
            Workload::Put => {
                kv.put(PutRequest {
                    key: key(i, key_size),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .context("put")?;
            }
            Workload::Watch
            | Workload::HttpPut
            | Workload::Lease
            | Workload::Txn
            | Workload::Lock
            | Workload::Election
            | Workload::Failover
            | Workload::Registry
            | Workload::Config
            | Workload::Defrag
            | Workload::Backup => {
                unreachable!("this workload has its own driver")
            }
            Workload::Get | Workload::SerialGet => {
                kv.range(RangeRequest {
                    key: key(i % 1000, key_size),
                    serializable: workload == Workload::SerialGet,
                    ..Default::default()
                })
                .await
                .context("get")?;
            }
        }
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Workload::Watch = args.workload {
        let first = args.endpoint.split(',').next().unwrap_or_default();
        return watch::run(first, args.watchers, args.total, args.value_size, &args.label).await;
    }
    if let Workload::Registry = args.workload {
        let first = args.endpoint.split(',').next().unwrap_or_default();
        return services::registry(
            first,
            args.instances,
            args.watchers,
            args.total,
            &args.pids,
            &args.label,
        )
        .await;
    }
    if let Workload::Config = args.workload {
        let first = args.endpoint.split(',').next().unwrap_or_default();
        return services::config(first, args.watchers, args.total, &args.pids, &args.label).await;
    }
    if let Workload::Defrag = args.workload {
        let first = args.endpoint.split(',').next().unwrap_or_default();
        return ops::defrag(first, args.clients, args.fill_mb, &args.label).await;
    }
    if let Workload::Backup = args.workload {
        let first = args.endpoint.split(',').next().unwrap_or_default();
        return ops::backup(first, args.fill_mb, &args.out, &args.label).await;
    }
    if let Workload::Failover = args.workload {
        let endpoints: Vec<&str> = args.endpoint.split(',').collect();
        return failover::run(&endpoints, &args.pids, args.clients, &args.label).await;
    }
    anyhow::ensure!(
        args.clients > 0 && args.total >= args.clients,
        "need 0 < clients <= total"
    );
    // Several comma-separated endpoints (the members of a cluster): connections go round-robin.
    let endpoints: Vec<&str> = args.endpoint.split(',').collect();
    let connections = args.clients.div_ceil(CLIENTS_PER_CONNECTION).max(endpoints.len());
    let mut channels = Vec::with_capacity(connections);
    for c in 0..connections {
        let endpoint = endpoints[c % endpoints.len()];
        let mut builder = Channel::from_shared(endpoint.to_string())?;
        if let Some(ca) = &args.cacert {
            let ca = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            builder = builder.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?;
        }
        let channel = builder
            .connect()
            .await
            .with_context(|| format!("connect to {endpoint}"))?;
        channels.push(channel);
    }
    // One token per connection: a simple token is good only on the member that issued it.
    let mut tokens = Vec::with_capacity(connections);
    for channel in &channels {
        tokens.push(match &args.user {
            Some(user) => authenticate(channel.clone(), user).await?,
            None => Token(None),
        });
    }
    let kv_of = |c: usize| KvClient::with_interceptor(channels[c].clone(), tokens[c].clone());
    if let Workload::Get | Workload::SerialGet = args.workload {
        let mut kv = kv_of(0);
        for i in 0..1000 {
            kv.put(PutRequest {
                key: key(i, args.key_size),
                value: vec![b'v'; args.value_size],
                ..Default::default()
            })
            .await?;
        }
    }
    let per_client = args.total / args.clients;
    let storming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for s in 0..args.storm {
        let (channel, storming, attempts) = (
            channels[s % connections].clone(),
            storming.clone(),
            attempts.clone(),
        );
        tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            while storming.load(Ordering::Relaxed) {
                let _ = authenticate(channel.clone(), "bench:wrong").await;
                attempts.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let channel = channels[c % connections].clone();
        let ops = c * per_client..(c + 1) * per_client;
        if let Workload::Lock = args.workload {
            tasks.push(tokio::spawn(lock::lock_loop(channel, per_client)));
            continue;
        }
        if let Workload::Election = args.workload {
            tasks.push(tokio::spawn(lock::election_loop(channel, per_client)));
            continue;
        }
        if let Workload::Txn = args.workload {
            let key = key(c, args.key_size);
            tasks.push(tokio::spawn(cas::cas_loop(
                kv_of(c % connections),
                key,
                per_client,
                args.value_size,
            )));
            continue;
        }
        if let Workload::HttpPut = args.workload {
            tasks.push(tokio::spawn(http::put_loop(
                endpoints[c % endpoints.len()].to_string(),
                ops,
                (args.key_size, args.value_size),
            )));
            continue;
        }
        if let Workload::Lease = args.workload {
            tasks.push(tokio::spawn(lease::cycle_loop(
                channel,
                ops,
                args.key_size,
                args.value_size,
            )));
            continue;
        }
        tasks.push(tokio::spawn(client_loop(
            kv_of(c % connections),
            args.workload,
            ops,
            (args.key_size, args.value_size),
        )));
    }
    let mut latencies = Vec::with_capacity(args.total);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    storming.store(false, std::sync::atomic::Ordering::Relaxed);
    latencies.sort_unstable();
    let ops = latencies.len();
    println!(
        "{label} workload={workload:?} clients={clients} ops={ops} seconds={secs:.2} ops_per_sec={rate:.0} p50_ms={p50:.2} p99_ms={p99:.2} mean_ms={mean:.3} max_ms={max:.2}{storm}",
        label = args.label,
        workload = args.workload,
        clients = args.clients,
        secs = elapsed.as_secs_f64(),
        rate = ops as f64 / elapsed.as_secs_f64(),
        p50 = percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        mean = latencies.iter().sum::<Duration>().as_secs_f64() * 1e3 / ops.max(1) as f64,
        max = latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        storm = match args.storm {
            0 => String::new(),
            n => format!(
                " storm_tasks={n} wrong_password_attempts={}",
                attempts.load(std::sync::atomic::Ordering::Relaxed)
            ),
        },
    );
    Ok(())
}

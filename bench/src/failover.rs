//! The failover workload: writers keep putting through every member of a cluster, the
//! leader's process is killed with SIGKILL, and the result is the time from the kill to the
//! first acknowledged put that was *sent after* the kill.
//!
//! Writers behave like a client with every member's endpoint: a put that fails or takes longer
//! than [`PUT_TIMEOUT`] is retried through the next member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::{PutRequest, StatusRequest};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

/// A put not answered by then is abandoned and retried through another member.
const PUT_TIMEOUT: Duration = Duration::from_secs(1);
/// Steady writing before the kill.
const WARM_UP: Duration = Duration::from_secs(1);
/// Give up if no put gets through for this long after the kill.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Measures one leader kill; `pids[i]` is the process serving `endpoints[i]`.
pub async fn run(endpoints: &[&str], pids: &[u32], writers: usize, label: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        endpoints.len() == pids.len() && endpoints.len() > 1,
        "failover needs --pids, one per endpoint, and several endpoints"
    );
    let mut channels = Vec::new();
    for endpoint in endpoints {
        let channel = Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(PUT_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("connect to {endpoint}"))?;
        channels.push(channel);
    }
    let leader = leader_index(&channels).await?;

    // The earliest acknowledgement of a put sent after the kill.
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let first_after: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (channels, killed_at, first_after, stop) = (
            channels.clone(),
            killed_at.clone(),
            first_after.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut member = w % channels.len();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut kv = KvClient::new(channels[member].clone());
                let sent = Instant::now();
                let put = kv.put(PutRequest {
                    key: format!("failover/{w}/{seq}").into_bytes(),
                    value: vec![b'v'; 64],
                    ..Default::default()
                });
                seq += 1;
                match tokio::time::timeout(PUT_TIMEOUT, put).await {
                    Ok(Ok(_)) => {
                        let acked = Instant::now();
                        let kill = *killed_at.lock().await;
                        if kill.is_some_and(|k| sent >= k) {
                            let mut first = first_after.lock().await;
                            if first.is_none_or(|f| acked < f) {
                                *first = Some(acked);
                            }
                        }
                    }
                    _ => member = (member + 1) % channels.len(),
                }
            }
        }));
    }

    tokio::time::sleep(WARM_UP).await;
    *killed_at.lock().await = Some(Instant::now());
    let kill_started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &pids[leader].to_string()])
        .status()
        .context("kill the leader")?;
    anyhow::ensure!(status.success(), "kill -9 {} failed", pids[leader]);
    let failover = loop {
        if let Some(first) = *first_after.lock().await {
            break first - kill_started;
        }
        anyhow::ensure!(
            kill_started.elapsed() < GIVE_UP,
            "no put got through within {GIVE_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    println!(
        "{label} workload=Failover killed={} writers={writers} failover_ms={:.0}",
        endpoints[leader],
        failover.as_secs_f64() * 1e3
    );
    Ok(())
}

/// The index of the member every member names as leader.
async fn leader_index(channels: &[Channel]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for channel in channels {
            match MaintenanceClient::new(channel.clone())
                .status(StatusRequest {})
                .await
            {
                Ok(status) => {
                    let status = status.into_inner();
                    ids.push(status.header.map_or(0, |h| h.member_id));
                    leaders.push(status.leader);
                }
                Err(_) => {
                    ids.push(0);
                    leaders.push(0);
                }
            }
        }
        let agreed = leaders
            .first()
            .copied()
            .filter(|&l| l != 0 && leaders.iter().all(|&x| x == l));
        if let Some(position) = agreed.and_then(|l| ids.iter().position(|&id| id == l)) {
            return Ok(position);
        }
        anyhow::ensure!(Instant::now() < deadline, "the members never agreed on a leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

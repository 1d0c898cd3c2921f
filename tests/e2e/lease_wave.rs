//! A wave of expiring leases does not stall writes: 10,000 leases, each with a key, expire
//! within half a second of each other while other clients keep putting. The leader revokes
//! them at a bounded rate (5,000 per second), so puts keep flowing between revocation batches.
//!
//! Prints the worst and 99th-percentile put latency during the wave; with the release binary
//! (`cargo test --release --test e2e expiry_wave -- --nocapture`) that is the figure the lease
//! issue's note reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::harness::Server;

const LEASES: usize = 10_000;
/// The leases' TTL. Granting them all takes longer than that with the debug binary on two
/// busy cores (20–50 s), so a refresher keeps the granted ones alive meanwhile.
const TTL_SECS: i64 = 10;
/// How often the refresher goes over the granted leases.
const REFRESH: Duration = Duration::from_secs(2);
const GRANTERS: usize = 32;
const PUTTERS: usize = 4;
/// A put that takes longer than this during the wave counts as a stall.
const STALL: Duration = Duration::from_secs(1);
/// The wave must be over (every key gone) this long after the leases' deadline.
const WAVE_LIMIT: Duration = Duration::from_secs(15);

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn wave_key(i: usize) -> Vec<u8> {
    format!("wave/{i:05}").into_bytes()
}

/// Grants the leases and attaches one key to each, keeping the granted ones alive until all
/// are; returns their IDs.
async fn grant_all(channel: &Channel) -> Vec<i64> {
    let granted = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (channel, granted, done) = (channel.clone(), granted.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let ids = granted.lock().unwrap().clone();
                renew_all(&channel, &ids).await;
                tokio::time::sleep(REFRESH).await;
            }
        })
    };
    let ids = grant_with_keys(channel, granted).await;
    done.store(true, Ordering::Relaxed);
    refresher.await.unwrap();
    ids
}

async fn grant_with_keys(channel: &Channel, granted: Arc<Mutex<Vec<i64>>>) -> Vec<i64> {
    let mut tasks = Vec::new();
    for g in 0..GRANTERS {
        let channel = channel.clone();
        let granted = granted.clone();
        tasks.push(tokio::spawn(async move {
            let mut lease = LeaseClient::new(channel.clone());
            let mut kv = KvClient::new(channel);
            let mut ids = Vec::new();
            for i in (g..LEASES).step_by(GRANTERS) {
                let request = LeaseGrantRequest { ttl: TTL_SECS, id: 0 };
                let id = lease.lease_grant(request).await.unwrap().into_inner().id;
                kv.put(PutRequest {
                    key: wave_key(i),
                    value: b"v".to_vec(),
                    lease: id,
                    ..Default::default()
                })
                .await
                .unwrap();
                granted.lock().unwrap().push(id);
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// Keeps every lease alive once, as fast as one stream goes, so that all their deadlines fall
/// within a moment of each other. Returns when the last keepalive was answered.
async fn renew_all(channel: &Channel, ids: &[i64]) -> Instant {
    let (tx, rx) = mpsc::channel(1024);
    let mut lease = LeaseClient::new(channel.clone());
    let ids = ids.to_vec();
    let count = ids.len();
    let sender = tokio::spawn(async move {
        for id in ids {
            tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
        }
    });
    let mut answers = lease
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..count {
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.ttl, TTL_SECS, "lease {:x} renewed", answer.id);
    }
    sender.await.unwrap();
    Instant::now()
}

async fn wave_keys_left(kv: &mut KvClient<Channel>) -> i64 {
    kv.range(RangeRequest {
        key: b"wave/".to_vec(),
        range_end: b"wave0".to_vec(),
        count_only: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_wave_does_not_stall_puts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let channel = channel(&server).await;
    let ids = grant_all(&channel).await;
    assert_eq!(ids.len(), LEASES);
    let renewed = renew_all(&channel, &ids).await;
    let deadline = renewed + Duration::from_secs(TTL_SECS as u64);

    // Putters run from before the deadline until the wave is over.
    let stop = Arc::new(AtomicBool::new(false));
    let mut putters = Vec::new();
    for p in 0..PUTTERS {
        let mut kv = KvClient::new(channel.clone());
        let stop = stop.clone();
        putters.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                kv.put(PutRequest {
                    key: format!("steady/{p}/{n}").into_bytes(),
                    value: vec![b'x'; 256],
                    ..Default::default()
                })
                .await
                .unwrap();
                latencies.push((started, started.elapsed()));
                n += 1;
            }
            latencies
        }));
    }

    let mut kv = KvClient::new(channel.clone());
    tokio::time::sleep_until((deadline - Duration::from_secs(1)).into()).await;
    let wave_start = Instant::now();
    let gone = loop {
        if wave_keys_left(&mut kv).await == 0 {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline + WAVE_LIMIT,
            "{} wave keys still there {WAVE_LIMIT:?} after their deadline",
            wave_keys_left(&mut kv).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let mut during: Vec<Duration> = Vec::new();
    for putter in putters {
        for (started, latency) in putter.await.unwrap() {
            if started >= wave_start && started <= gone {
                during.push(latency);
            }
        }
    }
    during.sort_unstable();
    assert!(!during.is_empty(), "no put ran during the wave");
    let worst = *during.last().unwrap();
    let p99 = during[(during.len() - 1) * 99 / 100];
    println!(
        "expiry wave: {LEASES} leases gone {:.2}s after their deadline; {} puts during the wave, \
         worst {:.1} ms, p99 {:.1} ms",
        gone.saturating_duration_since(deadline).as_secs_f64(),
        during.len(),
        worst.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
    assert!(worst < STALL, "a put took {worst:?} during the expiry wave");
    assert!(
        gone >= deadline - Duration::from_millis(100),
        "leases expired before their deadline"
    );
    let left = LeaseClient::new(channel)
        .lease_leases(concord_proto::etcdserverpb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .len();
    assert_eq!(left, 0, "every lease was revoked");
}

//! The Raft log's memory budget (`--log-cache-bytes`): entries past it are let go of and read
//! back from the WAL, so a lagging follower still catches up from the log, a restart replays it,
//! and large values do not fill memory between snapshots; and replay reads only what was written.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use crate::client_kv::connect;
use crate::cluster::harness::Cluster;
use crate::harness::Server;

/// A value of `len` bytes that tells which key it belongs to.
fn value_of(key: &str, len: usize) -> String {
    let mut value = format!("{key}:");
    while value.len() < len {
        value.push('x');
    }
    value
}

/// Every key under `prefix` with its value, as `client`'s member reads it (serializable: from
/// its own store, not the leader's).
async fn local_prefix(client: &mut Client, prefix: &str) -> Vec<(String, String)> {
    let options = GetOptions::new().with_prefix().with_serializable();
    match client.get(prefix, Some(options)).await {
        Ok(resp) => resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().unwrap().to_string();
                (key, kv.value_str().unwrap().to_string())
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A memory figure of process `pid` from `/proc/<pid>/status`, in bytes: `VmHWM` (the peak
/// resident memory) or `VmRSS` (the resident memory now).
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_from_entries_the_leader_keeps_only_in_its_wal() {
    const KEYS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    // 8 KiB of entries in memory: the 300 puts of 2 KiB below are nearly all on disk only.
    // The snapshot count stays at its default (100,000), so no snapshot covers them: the
    // follower can only catch up from the leader's log.
    let mut cluster = Cluster::start_with(dir.path(), 3, &["--log-cache-bytes", "8192"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = (0..3).find(|&i| i != leader).unwrap();
    cluster.terminate(follower);

    let mut client = cluster.client(leader).await;
    let expected: Vec<(String, String)> = (0..KEYS)
        .map(|i| {
            let key = format!("lagging/{i:04}");
            let value = value_of(&key, 2048);
            (key, value)
        })
        .collect();
    for (key, value) in &expected {
        client.put(key.as_str(), value.as_str(), None).await.unwrap();
    }

    cluster.restart(follower);
    let mut on_follower = cluster.client(follower).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = local_prefix(&mut on_follower, "lagging/").await;
        if seen.len() == KEYS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.len(),
        KEYS,
        "the follower caught up with {} of {KEYS} keys",
        seen.len()
    );
    assert!(
        seen == expected,
        "the follower's values differ from what was written"
    );
    // No snapshot was built, so none was sent: the entries came from the leader's log.
    let snapshots = cluster.log_lines_containing(leader, "built snapshot");
    assert!(snapshots.is_empty(), "the leader built a snapshot: {snapshots:?}");

    // The leader, restarted, replays its log within the same budget and has every key.
    cluster.terminate(leader);
    cluster.restart(leader);
    cluster.wait_for_leader(Duration::from_secs(10));
    let mut client = cluster.client(leader).await;
    assert!(local_prefix(&mut client, "lagging/").await == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_do_not_fill_memory_between_snapshots() {
    const PUTS: usize = 2_500;
    const VALUE: usize = 64 << 10;
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB of entries in memory, while 156 MiB of values go through the log. A debug build
    // peaks at about 97 MB with the budget, whether 1,500 or 3,000 such puts are made; kept
    // in memory until a snapshot (100,000 entries away), 1,500 of them made it peak at 178 MB.
    let mut server = Server::start(dir.path(), &["--log-cache-bytes", "1048576"]);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = connect(&server).await;
        writers.push(tokio::spawn(async move {
            for i in (w..PUTS).step_by(WRITERS) {
                let key = format!("big/{i:05}");
                client
                    .put(key.as_str(), value_of(&key, VALUE), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let written = (PUTS * VALUE) as u64;
    let peak = memory(server.pid(), "VmHWM:");
    assert!(
        peak < written / 4 * 3,
        "peak RSS {} MiB with {} MiB of values in the log",
        peak >> 20,
        written >> 20
    );

    // Nothing is lost by keeping the log on disk: a restart replays it.
    server.terminate();
    server.restart();
    let mut client = connect(&server).await;
    for i in [0, 777, PUTS - 1] {
        let key = format!("big/{i:05}");
        let resp = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(resp.kvs()[0].value_str().unwrap(), value_of(&key, VALUE));
    }
    // Replay reads each 64 MiB segment whole, for a moment, so the peak is not the measure
    // here; what stays resident is.
    let resident = memory(server.pid(), "VmRSS:");
    assert!(
        resident < written / 4 * 3,
        "replay kept the log in memory: {} MiB resident",
        resident >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_read_the_preallocated_wal_into_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut client = connect(&server).await;
    for i in 0..100 {
        client.put(format!("k{i}"), "v", None).await.unwrap();
    }
    drop(client);
    server.terminate();
    server.restart();
    // The last WAL segment is preallocated to 64 MiB; replay used to read all of it, so every
    // start peaked above 64 MiB for a log of a few kilobytes.
    let peak = memory(server.pid(), "VmHWM:");
    assert!(peak < 48 << 20, "a restart peaked at {} MiB", peak >> 20);
    let mut client = connect(&server).await;
    let resp = client.get("k99", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value_str().unwrap(), "v");
}

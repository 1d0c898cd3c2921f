//! Linearizability under a leader kill: six clients run random gets, puts and compare-and-swaps
//! on three keys of a three-member cluster while its leader is SIGKILLed, and each key's
//! recorded history must be explainable by one register ([`crate::checkers::register`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::Client;

use super::harness::{Cluster, XorShift};
use crate::checkers::register::{Entry, Op, Outcome, Value, check_and_print, learned, perform};

/// Clients, each through one member at a time.
const CLIENTS: usize = 6;
/// Keys, each a register of its own.
const KEYS: usize = 3;
/// Per-request timeout of the clients (an op without an answer by then is unknown).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// When the leader is killed, and for how long clients run in all (from the first op).
const KILL_AT: Duration = Duration::from_millis(1500);
const RUN_FOR: Duration = Duration::from_secs(4);
/// How long clients may run on when nothing called after the kill succeeded by `RUN_FOR`.
const MAX_RUN: Duration = Duration::from_secs(8);
/// A client pauses this long after a failed op, so an election does not pile up unknowns.
const BACKOFF: Duration = Duration::from_millis(150);

/// What the client tasks share with the test.
#[derive(Default)]
struct Shared {
    /// Per key, its operations.
    histories: Mutex<Vec<Vec<Entry>>>,
    /// Per member, whether it was killed.
    dead: Mutex<Vec<bool>>,
    stop: AtomicBool,
    /// Reads that failed (dropped from the histories).
    failed_reads: Mutex<usize>,
}

/// Client task `id`: random ops on random keys through `clients[member]` until told to stop,
/// moving to a live member when its own was killed.
async fn client_task(id: usize, mut clients: Vec<Client>, mut member: usize, seed: u64, shared: Arc<Shared>) {
    let mut rng = XorShift(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // The last value this client saw per key: what its CASes expect, so some succeed.
    let mut last_seen: [Option<Value>; KEYS] = [None; KEYS];
    let mut seq = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS);
        seq += 1;
        let value = (id as Value + 1) * 1_000_000 + seq;
        let op = match rng.below(10) {
            0..4 => Op::Get,
            4..7 => Op::Put(value),
            _ => Op::Cas {
                expected: last_seen[k],
                new: value,
            },
        };
        let call = Instant::now();
        // The client's own timeout should fire first; this only bounds the wait for sure.
        let within = REQUEST_TIMEOUT + Duration::from_millis(500);
        let outcome = perform(&mut clients[member], &format!("lin/k{k}"), op, within).await;
        let ret = Instant::now();
        if let Some(value) = learned(op, outcome) {
            last_seen[k] = value;
        }
        if op == Op::Get && outcome == Outcome::Unknown {
            *shared.failed_reads.lock().unwrap() += 1;
        } else {
            let entry = Entry {
                op,
                outcome,
                call,
                ret,
                client: id,
                member,
            };
            shared.histories.lock().unwrap()[k].push(entry);
        }
        if outcome == Outcome::Unknown {
            let live: Vec<usize> = {
                let dead = shared.dead.lock().unwrap();
                (0..dead.len()).filter(|&m| !dead[m]).collect()
            };
            if !live.contains(&member) {
                member = live[rng.below(live.len())];
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_history_with_a_leader_kill_is_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = XorShift(seed);
    // Two clients per member, which member gets which at random.
    let offset = rng.below(3);
    println!("seed {seed:#x}; leader is {}", cluster.name(leader));

    let shared = Arc::new(Shared::default());
    *shared.histories.lock().unwrap() = vec![Vec::new(); KEYS];
    *shared.dead.lock().unwrap() = vec![false; cluster.len()];
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let mut clients = Vec::new();
        for m in 0..cluster.len() {
            clients.push(cluster.client_with_timeout(m, REQUEST_TIMEOUT).await);
        }
        let member = (id + offset) % cluster.len();
        tasks.push(tokio::spawn(client_task(
            id,
            clients,
            member,
            seed,
            shared.clone(),
        )));
    }
    let base = Instant::now();

    tokio::time::sleep_until((base + KILL_AT).into()).await;
    shared.dead.lock().unwrap()[leader] = true;
    cluster.kill9(leader);
    let killed_at = Instant::now();
    // Until RUN_FOR, and on (bounded) until an op called after the kill has succeeded.
    let succeeded_after_kill = || {
        let histories = shared.histories.lock().unwrap();
        histories
            .iter()
            .flatten()
            .any(|e| e.call >= killed_at && e.returned().is_some())
    };
    while base.elapsed() < RUN_FOR || (!succeeded_after_kill() && base.elapsed() < MAX_RUN) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        // Each op is bounded by its timeout, so every task stops within it.
        tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(2), task)
            .await
            .expect("a client task did not stop")
            .unwrap();
    }
    let ran = base.elapsed();

    let histories = std::mem::take(&mut *shared.histories.lock().unwrap());
    let after_kill = histories
        .iter()
        .flatten()
        .filter(|e| e.call >= killed_at && e.returned().is_some())
        .count();
    println!(
        "killed {} at {:?}; ran {ran:?}; {after_kill} ops called after the kill succeeded; \
         {} failed reads dropped",
        cluster.name(leader),
        killed_at - base,
        shared.failed_reads.lock().unwrap()
    );
    let mut failures = Vec::new();
    for (k, history) in histories.iter().enumerate() {
        if let Err(report) = check_and_print(&format!("lin/k{k}"), history, base) {
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        after_kill > 0,
        "no op called after the kill succeeded\n{}",
        cluster.logs()
    );
}

//! The robustness suite: a 3- and a 5-member cluster under concurrent load while a nemesis
//! injects one fault after another (members killed and restarted, paused and resumed, the
//! leader isolated, minority and bridge partitions, lossy and slow links between members,
//! crashes at points inside the server: around the WAL's fdatasync and the apply, while a
//! snapshot is built, sent or installed, during a compaction and a defragmentation), and
//! afterwards checkers that judge the recorded history:
//!
//! - every hot key's history is linearizable as one register ([`crate::checkers::register`]);
//! - no read saw half of a two-key txn;
//! - no acknowledged write is missing from the history, which has every revision once;
//! - every watcher saw exactly the history, in order, whole revisions at a time, across its
//!   resumptions and bookmarks ([`crate::checkers::watch`]); the history is what the watchers
//!   saw together (compactions during the run remove it from the members), and must have every
//!   revision once;
//! - every member holds the same data at the last revision (HashKV).
//!
//! The short mode runs with the e2e suite: each kind of fault once, in an order the seed picks.
//! `CONCORD_ROBUSTNESS_FAULTS=N` makes a long run of N faults (`scripts/robustness.sh`), and
//! `CONCORD_ROBUSTNESS_KINDS=Loss,Minority` keeps to those kinds, and
//! `CONCORD_ROBUSTNESS_SEED` replays a run's choices (which fault, aimed where, for how long;
//! which operation each client does next). Every run prints its seed and its figures.

mod nemesis;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::GetOptions;

use self::nemesis::{Injected, Kind, Nemesis};
use self::workload::{PREFIX, REGISTERS, Recorder, WatchEnd};
use crate::checkers::{register, watch};
use crate::cluster::harness::{Cluster, XorShift};

/// Client tasks per member.
const CLIENTS_PER_MEMBER: usize = 2;
/// How long the load runs before the first fault.
const WARM_UP: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_keep_every_guarantee_under_faults() {
    run(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_keep_every_guarantee_under_faults() {
    run(5).await;
}

/// The run's seed: `CONCORD_ROBUSTNESS_SEED` (decimal or 0x-hex) or the clock's.
fn seed() -> u64 {
    match std::env::var("CONCORD_ROBUSTNESS_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("CONCORD_ROBUSTNESS_SEED={text} is not a number"))
        }
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1,
    }
}

/// The kinds of fault of a run: `CONCORD_ROBUSTNESS_KINDS` (names separated by commas, as the
/// report spells them) or every kind the cluster can be given.
fn kinds(members: usize) -> Vec<Kind> {
    let all = Kind::all(members);
    match std::env::var("CONCORD_ROBUSTNESS_KINDS") {
        Ok(names) => names
            .split(',')
            .map(|name| {
                *all.iter()
                    .find(|k| format!("{k:?}").eq_ignore_ascii_case(name.trim()))
                    .unwrap_or_else(|| panic!("no fault kind {name:?} for {members} members: {all:?}"))
            })
            .collect(),
        Err(_) => all,
    }
}

/// The faults of a run: each kind once in the short mode; `CONCORD_ROBUSTNESS_FAULTS` of them,
/// every kind in turn (each round in a new order), in the long one.
fn schedule(kinds: &[Kind], rng: &mut XorShift) -> Vec<Kind> {
    let count = match std::env::var("CONCORD_ROBUSTNESS_FAULTS") {
        Ok(n) => n.parse().expect("CONCORD_ROBUSTNESS_FAULTS is a number"),
        Err(_) => kinds.len(),
    };
    let mut faults = Vec::with_capacity(count);
    while faults.len() < count {
        let mut round = kinds.to_vec();
        for i in (1..round.len()).rev() {
            round.swap(i, rng.below(i + 1));
        }
        faults.extend(round);
    }
    faults.truncate(count);
    faults
}

/// A fault as it went: what, and how long no write succeeded from its start to the next
/// fault's (or the end of the load).
struct Figures {
    injected: Injected,
    healed_after: Duration,
    longest_outage: Duration,
}

async fn run(members: usize) {
    let seed = seed();
    let mut rng = XorShift(seed);
    let faults = schedule(&kinds(members), &mut rng);
    println!(
        "robustness: {members} members, {} faults, seed {seed:#x} (replay: CONCORD_ROBUSTNESS_SEED={seed:#x})",
        faults.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let fault_file = dir.path().join("peer-faults");
    let failpoint_file = dir.path().join("failpoints");
    let mut nemesis = Nemesis::new(&fault_file, &failpoint_file, seed ^ 0x5eed);
    let (fault_env, failpoint_env) = (
        fault_file.display().to_string(),
        failpoint_file.display().to_string(),
    );
    let mut cluster = Cluster::start_with_env(
        dir.path(),
        members,
        // Snapshots often, and few entries kept after them: a member down for a second needs
        // a snapshot to catch up, so snapshots are built, sent and installed under faults.
        &[
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "20",
        ],
        &[
            ("CONCORD_PEER_FAULTS", &fault_env),
            ("CONCORD_FAILPOINT_FILE", &failpoint_env),
        ],
    );
    tokio::task::block_in_place(|| cluster.wait_for_leader(Duration::from_secs(10)));
    let endpoints: Vec<String> = (0..members).map(|i| cluster.client_url(i).to_string()).collect();

    // The load: clients spread over the members, one watcher per member.
    let recorder = Arc::new(Recorder::new());
    let mut clients = Vec::new();
    for id in 0..members * CLIENTS_PER_MEMBER {
        let mut per_member = Vec::new();
        for endpoint in &endpoints {
            per_member.push(workload::connect(endpoint).await);
        }
        let task = workload::client_task(id, per_member, id % members, seed, recorder.clone());
        clients.push(tokio::spawn(task));
    }
    let watch_end = Arc::new(WatchEnd::new(members));
    let watchers: Vec<_> = (0..members)
        .map(|m| tokio::spawn(workload::watcher_task(m, endpoints.clone(), m, watch_end.clone())))
        .collect();

    // The faults, one at a time.
    tokio::time::sleep(WARM_UP).await;
    let mut done: Vec<(Injected, Duration)> = Vec::new();
    let mut violations = Vec::new();
    for kind in faults {
        let hold = Duration::from_millis(600 + nemesis.rng.below(900) as u64);
        let quiet = Duration::from_millis(500 + nemesis.rng.below(700) as u64);
        let compactable = watch_end.compactable();
        let mut injected = tokio::task::block_in_place(|| nemesis.inject(&mut cluster, kind, compactable));
        println!(
            "  {:>3} {:?} {} on {:?}",
            done.len() + 1,
            injected.kind,
            injected.detail,
            injected.targets
        );
        let hold = hold.max(injected.hold_at_least);
        tokio::time::sleep(hold / 2).await;
        tokio::task::block_in_place(|| nemesis.midway(&mut cluster));
        tokio::time::sleep(hold / 2).await;
        let (fired, unexpected) = tokio::task::block_in_place(|| nemesis.heal(&mut cluster));
        if let Some(fired) = fired {
            injected.detail += if fired { " fired" } else { " did not fire" };
        }
        for (m, why) in unexpected {
            let violation = format!(
                "m{m} stopped during {:?} {}, which was not meant to stop it: {why}",
                injected.kind, injected.detail
            );
            println!("  VIOLATION: {violation}");
            violations.push(violation);
        }
        let healed_after = injected.started.elapsed();
        done.push((injected, healed_after));
        tokio::time::sleep(quiet).await;
    }
    tokio::time::sleep(WARM_UP).await;
    let load_end = Instant::now();
    recorder.stop.store(true, Ordering::Relaxed);
    for task in clients {
        tokio::time::timeout(workload::REQUEST_TIMEOUT * 2, task)
            .await
            .expect("a client task did not stop")
            .unwrap();
    }

    // The run's last revision, then the watchers until they heard of it.
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader(Duration::from_secs(10)));
    let mut via_leader = workload::connect(&endpoints[leader]).await;
    let last = via_leader
        .get(PREFIX, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap_or_else(|e| panic!("read the last revision: {e}\n{}", cluster.logs()))
        .header()
        .unwrap()
        .revision();
    watch_end.until.store(last, Ordering::Relaxed);
    watch_end.stop.store(true, Ordering::Relaxed);
    let mut watched = Vec::new();
    for (m, task) in watchers.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(received) => watched.push(received.unwrap()),
            Err(_) => panic!("the watcher that began on m{m} never heard of revision {last}"),
        }
    }
    let reference = match workload::merged_history(&watched) {
        Ok(reference) => reference,
        Err(why) => {
            violations.push(format!("the watchers disagree: {why}"));
            Vec::new()
        }
    };
    let base = recorder
        .histories
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .map(|e| e.call)
        .min();

    // Registers.
    let histories = std::mem::take(&mut *recorder.histories.lock().unwrap());
    for (k, history) in histories.iter().enumerate() {
        let started = Instant::now();
        let result = register::check(history);
        let unknown = history.iter().filter(|e| e.returned().is_none()).count();
        println!(
            "  {}: {} ops ({unknown} unknown): {} in {:?}",
            workload::register(k),
            history.len(),
            if result.is_ok() {
                "linearizable"
            } else {
                "NOT linearizable"
            },
            started.elapsed()
        );
        if let Err(violation) = result {
            let base = base.unwrap_or_else(Instant::now);
            violations.push(format!(
                "{} is not linearizable: {}",
                workload::register(k),
                violation.report(history, base)
            ));
        }
    }
    // Two-key txns: never seen torn, and the history has every acknowledged write.
    for torn in recorder.torn_pairs.lock().unwrap().iter() {
        violations.push(format!("a read saw half of a two-key txn: {torn}"));
    }
    if let Err(why) = watch::check_reference(&reference, 2, last) {
        violations.push(format!("the history itself: {why}"));
    }
    let acked = recorder.acked.lock().unwrap().clone();
    for write in &acked {
        let revisions: Vec<Option<i64>> = write
            .keys
            .iter()
            .map(|key| {
                reference
                    .iter()
                    .find(|e| !e.delete && &e.key == key && e.value == write.value)
                    .map(|e| e.revision)
            })
            .collect();
        if revisions.iter().any(Option::is_none) || revisions.windows(2).any(|w| w[0] != w[1]) {
            violations.push(format!(
                "the acknowledged write of {} to {:?} is not in the history as one revision: {revisions:?}",
                write.value, write.keys
            ));
        }
    }
    // Watchers.
    for (m, received) in watched.iter().enumerate() {
        let resumed = received
            .iter()
            .filter(|r| matches!(r, watch::Received::Resumed { .. }))
            .count();
        let bookmarks = received
            .iter()
            .filter(|r| matches!(r, watch::Received::Progress(_)))
            .count();
        let result = watch::check(1, received, &reference);
        println!(
            "  watcher from m{m}: {} responses, {resumed} resumptions, {bookmarks} bookmarks: {}",
            received.len(),
            if result.is_ok() {
                "every guarantee held"
            } else {
                "BROKEN"
            }
        );
        if let Err(why) = result {
            violations.push(format!("the watcher that began on m{m}: {why}"));
        }
    }
    // Every member holds the same data at the last revision.
    let mut hashes = Vec::new();
    for (m, endpoint) in endpoints.iter().enumerate() {
        if !cluster.is_running(m) {
            violations.push(format!("m{m} is not running at the end"));
            continue;
        }
        let mut client = workload::connect(endpoint).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let hash = loop {
            match client.hash_kv(last).await {
                Ok(answer) => break answer.hash(),
                Err(e) if Instant::now() >= deadline => panic!("HashKV at {last} on m{m}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        hashes.push(hash);
    }
    if hashes.windows(2).any(|w| w[0] != w[1]) {
        violations.push(format!(
            "the members' HashKV at revision {last} differ: {hashes:?}"
        ));
    }

    // The figures.
    let mut successes: Vec<Instant> = acked.iter().map(|a| a.at).collect();
    successes.sort();
    let figures: Vec<Figures> = done
        .iter()
        .enumerate()
        .map(|(i, (injected, healed_after))| {
            let until = done.get(i + 1).map_or(load_end, |(next, _)| next.started);
            Figures {
                injected: injected.clone(),
                healed_after: *healed_after,
                longest_outage: longest_gap(&successes, injected.started, until),
            }
        })
        .collect();
    let mut by_kind: BTreeMap<Kind, (usize, Duration)> = BTreeMap::new();
    for f in &figures {
        let entry = by_kind.entry(f.injected.kind).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(f.longest_outage);
        println!(
            "  fault {:?} {}on {:?}: healed after {:?}; longest time without a successful write {:?}",
            f.injected.kind,
            if f.injected.detail.is_empty() {
                String::new()
            } else {
                format!("{} ", f.injected.detail)
            },
            f.injected.targets,
            f.healed_after,
            f.longest_outage
        );
    }
    println!(
        "robustness: {members} members, seed {seed:#x}: {} ops succeeded, {} unknown; {} writes \
         acknowledged; {} registers; last revision {last}; {} faults",
        recorder.ok.load(Ordering::Relaxed),
        recorder.unknown.load(Ordering::Relaxed),
        acked.len(),
        REGISTERS,
        figures.len()
    );
    for (kind, (count, worst)) in &by_kind {
        println!("  {kind:?}: {count} injected, longest time without a successful write {worst:?}");
    }
    println!(
        "  verdict: {}",
        if violations.is_empty() {
            "no violation"
        } else {
            "VIOLATIONS"
        }
    );
    assert!(
        violations.is_empty(),
        "seed {seed:#x}: {} violation(s):\n{}\n{}",
        violations.len(),
        violations.join("\n"),
        cluster.logs()
    );
}

/// The longest stretch of `[from, until)` without an instant of `sorted`.
fn longest_gap(sorted: &[Instant], from: Instant, until: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    let mut previous = from;
    for &at in sorted.iter().filter(|&&at| at > from && at < until) {
        longest = longest.max(at - previous);
        previous = at;
    }
    longest.max(until.saturating_duration_since(previous))
}

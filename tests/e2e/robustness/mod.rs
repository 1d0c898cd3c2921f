//! The robustness suite: a 3- and a 5-member cluster under concurrent load while a nemesis
//! injects one fault after another (members killed and restarted, paused and resumed, the
//! leader isolated, minority and bridge partitions, lossy and slow links between members,
//! crashes at points inside the server: around the WAL's fdatasync and the apply, while a
//! snapshot is built, sent or installed, during a compaction and a defragmentation; leadership
//! moved, a member removed and replaced, wall clocks stepped), and afterwards checkers that judge
//! the recorded history:
//!
//! - every hot key's history (gets, puts, swaps, deletes, range reads) is linearizable as one
//!   register ([`crate::checkers::register`]);
//! - no read saw half of a two-key txn;
//! - no acknowledged write is missing from the history, which has every revision once;
//! - every watcher saw exactly the history, in order, whole revisions at a time, across its
//!   resumptions and bookmarks ([`crate::checkers::watch`]); the history is what the watchers
//!   saw together (compactions during the run remove it from the members), and must have every
//!   revision once;
//! - no leased key is gone before its lease's deadline, nor there long after it
//!   ([`crate::checkers::lease`]);
//! - a lock has one holder at a time and accepts no write fenced by a key that no longer holds
//!   it; an election one leader, whose proclaims alone succeed ([`crate::checkers::ownership`]);
//! - every member holds the same data at the last revision (HashKV).
//!
//! The short mode runs with the e2e suite: each kind of fault once, in an order the seed picks.
//! `CONCORD_ROBUSTNESS_FAULTS=N` makes a long run of N faults (`scripts/robustness.sh`), and
//! `CONCORD_ROBUSTNESS_KINDS=Loss,Minority` keeps to those kinds, and
//! `CONCORD_ROBUSTNESS_SEED` replays a run's choices (which fault, aimed where, for how long;
//! which operation each client does next). Every run prints its seed and its figures.

mod clock;
mod figures;
mod leases;
mod load;
mod nemesis;
mod ownership;
mod verdicts;
mod workload;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use self::clock::Clocks;
use self::figures::Done;
use self::load::Load;
use self::nemesis::{Kind, Nemesis};
use crate::cluster::harness::{Cluster, XorShift};

/// How long the load runs before the first fault, and after the last.
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

async fn run(members: usize) {
    let seed = seed();
    let mut rng = XorShift(seed);
    let faults = schedule(&kinds(members), &mut rng);
    println!(
        "robustness: {members} members, {} faults, seed {seed:#x} (replay: CONCORD_ROBUSTNESS_SEED={seed:#x})",
        faults.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, mut nemesis) = start(dir.path(), members, seed);
    let endpoints: Vec<String> = (0..members).map(|i| cluster.client_url(i).to_string()).collect();

    let load = Load::start(&endpoints, seed).await;
    tokio::time::sleep(WARM_UP).await;
    let (done, mut violations) = inject(&mut cluster, &mut nemesis, &load, faults).await;
    tokio::time::sleep(WARM_UP).await;
    let load_end = Instant::now();
    let run = load.finish(&cluster, &endpoints).await;

    let spans = done
        .iter()
        .map(|d| (d.injected.started, d.injected.started + d.healed_after))
        .collect();
    violations.extend(verdicts::judge(&run, spans));
    violations.extend(verdicts::same_data_everywhere(&mut cluster, &endpoints, run.last).await);
    let rec = &run.recorder;
    let mut successes: Vec<Instant> = rec.acked.lock().unwrap().iter().map(|a| a.at).collect();
    successes.sort();
    figures::print(&done, &successes, load_end);
    println!(
        "robustness: {members} members, seed {seed:#x}: {} ops succeeded, {} unknown; {} writes \
         acknowledged; last revision {}; {} faults",
        rec.ok.load(std::sync::atomic::Ordering::Relaxed),
        rec.unknown.load(std::sync::atomic::Ordering::Relaxed),
        successes.len(),
        run.last,
        done.len()
    );
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

/// A cluster of `members` with a leader, reading the nemesis's fault files, and its nemesis.
fn start(dir: &std::path::Path, members: usize, seed: u64) -> (Cluster, Nemesis) {
    let fault_file = dir.join("peer-faults");
    let failpoint_file = dir.join("failpoints");
    let clocks = Clocks::new(dir, (0..members).map(|i| format!("m{i}")));
    let mut env = vec![
        (
            "CONCORD_PEER_FAULTS".to_string(),
            fault_file.display().to_string(),
        ),
        (
            "CONCORD_FAILPOINT_FILE".to_string(),
            failpoint_file.display().to_string(),
        ),
    ];
    env.extend(clocks.iter().flat_map(Clocks::env));
    let nemesis = Nemesis::new(&fault_file, &failpoint_file, clocks, seed ^ 0x5eed);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cluster = Cluster::start_with_env(
        dir,
        members,
        // Snapshots often, and few entries kept after them: a member down for a second needs
        // a snapshot to catch up, so snapshots are built, sent and installed under faults.
        &[
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "20",
        ],
        &env,
    );
    tokio::task::block_in_place(|| cluster.wait_for_leader(Duration::from_secs(10)));
    (cluster, nemesis)
}

/// Injects `faults` one at a time, each held a while, healed, then followed by a quiet spell;
/// returns how each went, and a violation for each member that stopped without being meant to.
async fn inject(
    cluster: &mut Cluster,
    nemesis: &mut Nemesis,
    load: &Load,
    faults: Vec<Kind>,
) -> (Vec<Done>, Vec<String>) {
    let mut done: Vec<Done> = Vec::new();
    let mut violations = Vec::new();
    for kind in faults {
        let hold = Duration::from_millis(600 + nemesis.rng.below(900) as u64);
        let quiet = Duration::from_millis(500 + nemesis.rng.below(700) as u64);
        let compactable = load.compactable();
        let mut injected = tokio::task::block_in_place(|| nemesis.inject(cluster, kind, compactable));
        println!(
            "  {:>3} at {:>6} ms: {:?} {} on {:?}",
            done.len() + 1,
            injected.started.duration_since(load.started).as_millis(),
            injected.kind,
            injected.detail,
            injected.targets
        );
        let hold = hold.max(injected.hold_at_least);
        tokio::time::sleep(hold / 2).await;
        tokio::task::block_in_place(|| nemesis.midway(cluster));
        tokio::time::sleep(hold / 2).await;
        let (fired, unexpected) = tokio::task::block_in_place(|| nemesis.heal(cluster));
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
        done.push(Done {
            injected,
            healed_after,
        });
        tokio::time::sleep(quiet).await;
    }
    (done, violations)
}

//! Membership changes while writers keep the cluster busy: a learner joins, catches up and is
//! promoted, then an original follower and the leader itself are removed. Writers follow the
//! member set as it changes, and no acknowledged put may be lost or change its revision.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use super::checks::{await_voters, read_prefix};
use super::harness::{Cluster, XorShift};

/// How long a cluster may take to agree on a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(10);
/// A put not answered by then counts as failed (the writer moves on to another member).
const PUT_TIMEOUT: Duration = Duration::from_secs(2);
const WRITERS: usize = 4;
/// Puts that must be acknowledged between one membership change and the next.
const ACKS_PER_PHASE: usize = 10;
/// How long writes may stall after a change before the test gives up on them.
const PROGRESS_WAIT: Duration = Duration::from_secs(10);

/// What the membership looked like when a put was sent: the last change made before it.
const PHASES: [&str; 5] = [
    "3 voters",
    "learner added",
    "learner promoted",
    "follower removed",
    "leader removed",
];

/// One acknowledged put.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
    /// Index into [`PHASES`] when it was sent.
    phase: usize,
    /// The member it was sent through.
    member: usize,
}

/// What the writers share with the test.
#[derive(Default)]
struct Load {
    /// The members writers may send puts through (the current voters), each with a client.
    usable: Mutex<BTreeMap<usize, Client>>,
    /// Index into [`PHASES`] of the last change made; read under `usable`'s lock, so a put
    /// sent in a phase never goes to a member removed before that phase began.
    phase: AtomicUsize,
    acked: Mutex<Vec<Ack>>,
    /// Failed puts by (phase, error).
    failed: Mutex<BTreeMap<(usize, String), usize>>,
    stop: AtomicBool,
}

impl Load {
    /// Acknowledged puts sent in `phase`.
    fn acked_in(&self, phase: usize) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.phase == phase)
            .count()
    }

    /// Failed puts sent in `phase`.
    fn failed_in(&self, phase: usize) -> usize {
        self.failed
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, _), _)| *p == phase)
            .map(|(_, n)| n)
            .sum()
    }
}

/// One writer: puts `reconf/w{w}/{seq}` through a random usable member until told to stop. A
/// failed put is not retried under the same key (it may still commit later, under a revision
/// nobody acknowledged); the next put goes to another member.
async fn write(w: usize, load: Arc<Load>) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut last_failed: Option<usize> = None;
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let (member, mut client, phase) = {
            let usable = load.usable.lock().unwrap();
            assert!(!usable.is_empty(), "no member to write through");
            let mut candidates: Vec<usize> = usable
                .keys()
                .copied()
                .filter(|&m| Some(m) != last_failed)
                .collect();
            if candidates.is_empty() {
                candidates = usable.keys().copied().collect();
            }
            let member = candidates[rng.below(candidates.len())];
            (member, usable[&member].clone(), load.phase.load(Ordering::SeqCst))
        };
        let key = format!("reconf/w{w}/{seq:06}");
        let value = format!("w{w}-{seq}-via-m{member}");
        seq += 1;
        let put = tokio::time::timeout(PUT_TIMEOUT, client.put(key.clone(), value.clone(), None)).await;
        let error = match put {
            Ok(Ok(resp)) => {
                let revision = resp.header().expect("header").revision();
                load.acked.lock().unwrap().push(Ack {
                    key,
                    value,
                    revision,
                    phase,
                    member,
                });
                last_failed = None;
                continue;
            }
            Ok(Err(e)) => e.to_string().chars().take(100).collect(),
            Err(_) => format!("no answer within {PUT_TIMEOUT:?}"),
        };
        *load.failed.lock().unwrap().entry((phase, error)).or_default() += 1;
        last_failed = Some(member);
        // Fast failures (no leader for a moment) would otherwise spin the writer.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until at least `count` puts sent in `phase` were acknowledged; panics with the logs if
/// writes stall for [`PROGRESS_WAIT`].
async fn await_acks(cluster: &Cluster, load: &Load, phase: usize, count: usize) {
    let deadline = Instant::now() + PROGRESS_WAIT;
    while load.acked_in(phase) < count {
        assert!(
            Instant::now() < deadline,
            "only {} puts acknowledged ({} failed: {:?}) in {PROGRESS_WAIT:?} after the change \
             to \"{}\"\n{}",
            load.acked_in(phase),
            load.failed_in(phase),
            load.failed.lock().unwrap(),
            PHASES[phase],
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The current leader, found without holding up the runtime's worker (writers run there too).
fn leader(cluster: &Cluster) -> usize {
    tokio::task::block_in_place(|| cluster.wait_for_leader(ELECTION_WAIT))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_write_load_lose_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let first_leader = leader(&cluster);

    let load = Arc::new(Load::default());
    for i in 0..3 {
        let client = cluster.client_with_timeout(i, PUT_TIMEOUT).await;
        load.usable.lock().unwrap().insert(i, client);
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(w, load.clone())))
        .collect();
    let mut phase_started = vec![Instant::now()];
    // Moves to the next phase once its change is made.
    let next_phase = |phase_started: &mut Vec<Instant>| {
        load.phase.store(phase_started.len(), Ordering::SeqCst);
        phase_started.push(Instant::now());
    };
    await_acks(&cluster, &load, 0, ACKS_PER_PHASE).await;

    // A learner joins under load and catches up: a put acknowledged after it started shows up
    // in its own state.
    let new = tokio::task::block_in_place(|| cluster.add_member(true));
    next_phase(&mut phase_started);
    await_acks(&cluster, &load, 1, 1).await;
    let probe = load
        .acked
        .lock()
        .unwrap()
        .iter()
        .find(|a| a.phase == 1)
        .unwrap()
        .clone();
    let mut learner = cluster.client(new).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = learner
            .get(probe.key.as_str(), Some(GetOptions::new().with_serializable()))
            .await
            .map(|r| {
                r.kvs()
                    .first()
                    .map(|kv| (kv.value_str().unwrap().to_string(), kv.mod_revision()))
            });
        if let Ok(Some((value, revision))) = &seen {
            assert_eq!(
                (value, *revision),
                (&probe.value, probe.revision),
                "{} on the learner\n{}",
                probe.key,
                cluster.logs()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "learner {} still says {seen:?} for {} after 15s\n{}",
            cluster.name(new),
            probe.key,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{}: learner caught up", cluster.name(new));
    await_acks(&cluster, &load, 1, ACKS_PER_PHASE).await;

    // Promote it; under load the leader may not count it in sync at once.
    let id = format!("{:x}", tokio::task::block_in_place(|| cluster.member_id(new)));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    loop {
        let via = leader(&cluster);
        let out = tokio::task::block_in_place(|| cluster.member(via).etcdctl(&["member", "promote", &id]));
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            stderr.contains("etcdserver: can only promote a learner member which is in sync with leader"),
            "member promote {id} through {} failed: {stderr}\n{}",
            cluster.name(via),
            cluster.logs()
        );
        assert!(
            Instant::now() < deadline,
            "learner {id} still not in sync after 10s under load: {stderr}\n{}",
            cluster.logs()
        );
        refused += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = cluster.client_with_timeout(new, PUT_TIMEOUT).await;
    load.usable.lock().unwrap().insert(new, client);
    next_phase(&mut phase_started);
    println!(
        "{}: promoted ({refused} refusals: not in sync yet)",
        cluster.name(new)
    );
    await_voters(&cluster, &[0, 1, 2, new], Duration::from_secs(10)).await;
    await_acks(&cluster, &load, 2, ACKS_PER_PHASE).await;

    // An original follower leaves; writers stop using it first.
    let lead = leader(&cluster);
    let follower = (0..3).find(|&i| i != lead).unwrap();
    load.usable.lock().unwrap().remove(&follower);
    tokio::task::block_in_place(|| cluster.remove_member(follower));
    next_phase(&mut phase_started);
    let mut remaining: Vec<usize> = (0..=new).filter(|&i| i != follower).collect();
    println!(
        "removed follower {} (leader {})",
        cluster.name(follower),
        cluster.name(lead)
    );
    await_voters(&cluster, &remaining, Duration::from_secs(10)).await;
    await_acks(&cluster, &load, 3, ACKS_PER_PHASE).await;

    // Then the leader itself: it must step down and the others elect a new leader.
    let lead = leader(&cluster);
    load.usable.lock().unwrap().remove(&lead);
    let removing = Instant::now();
    tokio::task::block_in_place(|| cluster.remove_member(lead));
    next_phase(&mut phase_started);
    remaining.retain(|&i| i != lead);
    let new_leader = leader(&cluster);
    println!(
        "removed leader {} in {:?}; {} leads now ({:?} after the removal began)",
        cluster.name(lead),
        phase_started[4] - removing,
        cluster.name(new_leader),
        removing.elapsed()
    );
    await_voters(&cluster, &remaining, Duration::from_secs(10)).await;
    // The removed leader no longer claims to lead (`endpoint status` would show two leaders),
    // or has shut down as etcd's does.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = tokio::task::block_in_place(|| cluster.status(lead));
        let Some(status) = status.filter(|s| s.leader == s.member_id) else {
            println!("removed leader {} now says {status:?}", cluster.name(lead));
            break;
        };
        if Instant::now() >= deadline {
            let mut client = cluster.client_with_timeout(lead, PUT_TIMEOUT).await;
            let put = client.put("reconf/probe-removed-leader", "x", None).await;
            panic!(
                "removed leader {} still says it leads 5s after its removal: {status:?}; a put \
                 through it answers {:?}\n{}",
                cluster.name(lead),
                put.map(|r| r.header().map_or(0, |h| h.revision())),
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // About a second more of writes, then stop.
    await_acks(&cluster, &load, 4, ACKS_PER_PHASE).await;
    let rest = Duration::from_secs(1).saturating_sub(phase_started[4].elapsed());
    tokio::time::sleep(rest).await;
    load.stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    for writer in writers {
        writer.await.unwrap();
    }
    phase_started.push(stopped);

    let acks = load.acked.lock().unwrap().clone();
    for (phase, name) in PHASES.iter().enumerate() {
        let mut via: BTreeMap<String, usize> = BTreeMap::new();
        for ack in acks.iter().filter(|a| a.phase == phase) {
            *via.entry(cluster.name(ack.member).to_string()).or_default() += 1;
        }
        println!(
            "phase {phase} \"{name}\" ({:?}): {} acknowledged (via {via:?}), {} failed",
            phase_started[phase + 1] - phase_started[phase],
            load.acked_in(phase),
            load.failed_in(phase)
        );
    }
    for ((phase, error), n) in load.failed.lock().unwrap().iter() {
        println!("  {n} failed in phase {phase}: {error}");
    }
    println!(
        "{} puts acknowledged in all; first leader {}, remaining {:?}",
        acks.len(),
        cluster.name(first_leader),
        remaining.iter().map(|&i| cluster.name(i)).collect::<Vec<_>>()
    );
    for (phase, name) in PHASES.iter().enumerate() {
        assert!(
            load.acked_in(phase) >= ACKS_PER_PHASE,
            "too few puts acknowledged in phase \"{name}\"\n{}",
            cluster.logs()
        );
    }

    // Distinct puts have distinct revisions.
    let mut revisions = HashSet::new();
    for ack in &acks {
        assert!(
            revisions.insert(ack.revision),
            "{ack:?} shares its revision with another acknowledged put: {:?}\n{}",
            acks.iter()
                .filter(|a| a.revision == ack.revision)
                .collect::<Vec<_>>(),
            cluster.logs()
        );
    }

    // Every acknowledged put is on every remaining member, with its value and revision, once
    // each has applied up to the last acknowledged revision.
    let max_revision = acks.iter().map(|a| a.revision).max().unwrap();
    for &i in &remaining {
        let mut client = cluster.client(i).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let options = GetOptions::new().with_serializable().with_count_only();
            let seen = client
                .get("reconf/", Some(options))
                .await
                .map(|r| r.header().map_or(0, |h| h.revision()));
            if matches!(seen, Ok(r) if r >= max_revision) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} is at revision {seen:?} after 10s, the last acknowledged put at \
                 {max_revision}\n{}",
                cluster.name(i),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stored = read_prefix(&mut client, "reconf/", GetOptions::new().with_serializable()).await;
        for ack in &acks {
            let (value, revision) = stored.get(&ack.key).unwrap_or_else(|| {
                panic!(
                    "acknowledged {} (revision {}, phase \"{}\", via {}) is missing on {}\n{}",
                    ack.key,
                    ack.revision,
                    PHASES[ack.phase],
                    cluster.name(ack.member),
                    cluster.name(i),
                    cluster.logs()
                )
            });
            assert_eq!(
                (value, *revision),
                (&ack.value, ack.revision),
                "{} (phase \"{}\", via {}) on {}\n{}",
                ack.key,
                PHASES[ack.phase],
                cluster.name(ack.member),
                cluster.name(i),
                cluster.logs()
            );
        }
    }

    // The two remaining members still take a put and serve a linearizable get.
    for &i in &remaining {
        let mut client = cluster.client(i).await;
        let key = format!("reconf/final/via-{}", cluster.name(i));
        let put = client
            .put(key.as_str(), "ok", None)
            .await
            .unwrap_or_else(|e| panic!("put through {}: {e}\n{}", cluster.name(i), cluster.logs()));
        let revision = put.header().expect("header").revision();
        for &j in &remaining {
            let resp = cluster
                .client(j)
                .await
                .get(key.as_str(), None)
                .await
                .unwrap_or_else(|e| {
                    panic!("linearizable get on {}: {e}\n{}", cluster.name(j), cluster.logs())
                });
            let kv = resp.kvs().first().unwrap_or_else(|| {
                panic!(
                    "linearizable get on {} misses {key}\n{}",
                    cluster.name(j),
                    cluster.logs()
                )
            });
            assert_eq!(
                (kv.value_str().unwrap(), kv.mod_revision()),
                ("ok", revision),
                "{key} on {}",
                cluster.name(j)
            );
        }
    }
    println!("done in {:?}", started.elapsed());
}

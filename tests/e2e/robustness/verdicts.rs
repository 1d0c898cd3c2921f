//! The checkers' verdicts on what a run recorded, each violation as one message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::load::Recorded;
use super::workload::{self, Acked};
use crate::checkers::watch::{self, Event};
use crate::checkers::{lease, ownership, register};
use crate::cluster::harness::Cluster;

/// Every violation in `run`, printing a line per register, watcher and checker. `faults` are
/// the faults' spans, from their start to their healing.
pub fn judge(run: &Recorded, faults: Vec<(Instant, Instant)>) -> Vec<String> {
    let mut violations = Vec::new();
    let rec = &run.recorder;
    let history: &[Event] = match &run.history {
        Ok(history) => history,
        Err(why) => {
            violations.push(format!("the watchers disagree: {why}"));
            &[]
        }
    };
    // Registers.
    let histories = rec.histories.lock().unwrap();
    let base = histories
        .iter()
        .flatten()
        .map(|e| e.call)
        .min()
        .unwrap_or_else(Instant::now);
    for (k, history) in histories.iter().enumerate() {
        if let Err(report) = register::check_and_print(&workload::register(k), history, base) {
            violations.push(report);
        }
    }
    // Two-key txns never seen torn; the history whole; every acknowledged write in it.
    for torn in rec.torn_pairs.lock().unwrap().iter() {
        violations.push(format!("a read saw half of a two-key txn: {torn}"));
    }
    if let Err(why) = watch::check_reference(history, 2, run.last) {
        violations.push(format!("the history itself: {why}"));
    }
    violations.extend(lost_writes(&rec.acked.lock().unwrap(), history));
    // Watchers.
    for (m, received) in run.watched.iter().enumerate() {
        let count = |f: fn(&watch::Received) -> bool| received.iter().filter(|r| f(r)).count();
        let resumed = count(|r| matches!(r, watch::Received::Resumed { .. }));
        let bookmarks = count(|r| matches!(r, watch::Received::Progress(_)));
        let result = watch::check(1, received, history);
        println!(
            "  watcher from m{m}: {} responses, {resumed} resumptions, {bookmarks} bookmarks: {}",
            received.len(),
            verdict(result.is_ok(), "every guarantee held")
        );
        if let Err(why) = result {
            violations.push(format!("the watcher that began on m{m}: {why}"));
        }
    }
    // Leases.
    let leases = rec.leases.lock().unwrap();
    // Two election timeouts of the test clusters, and the new leader's wait for its log.
    let tolerance = lease::Tolerance {
        faults,
        election: Duration::from_millis(1500),
        expiry_latency: Duration::from_millis(500),
    };
    let broken: Vec<String> = leases
        .iter()
        .filter_map(|life| lease::check(life, &tolerance, run.started).err())
        .collect();
    let revoked = leases.iter().filter(|l| l.revoke_acked.is_some()).count();
    let renewals: usize = leases.iter().map(|l| l.renewals.len() - 1).sum();
    println!(
        "  leases: {} ({revoked} revoked, {renewals} keepalives answered), {} reads of their keys: {}",
        leases.len(),
        leases.iter().map(|l| l.reads.len()).sum::<usize>(),
        verdict(broken.is_empty(), "none expired early or outlived its lease")
    );
    violations.extend(broken);
    // Locks and elections.
    let claims = rec.claims.lock().unwrap();
    let result = ownership::check(&claims, history);
    let count = |word: &str| claims.iter().filter(|c| c.what.contains(word)).count();
    println!(
        "  locks: {} granted, {} fenced writes accepted ({} after letting go); elections: {} won, \
         {} proclaims ({} after letting go): {}",
        count("locked"),
        count("fenced"),
        count("fenced write after"),
        count("won"),
        count("proclaimed"),
        count("proclaimed after"),
        verdict(result.is_ok(), "never two owners, no stale token accepted")
    );
    if let Err(why) = result {
        violations.push(format!("lock or election safety: {why}"));
    }
    violations
}

/// The acknowledged writes missing from `history`, or not at one revision for all their keys.
fn lost_writes(acked: &[Acked], history: &[Event]) -> Vec<String> {
    let mut at: HashMap<(&str, &str), i64> = HashMap::new();
    for e in history.iter().filter(|e| !e.delete) {
        at.insert((e.key.as_str(), e.value.as_str()), e.revision);
    }
    acked
        .iter()
        .filter_map(|write| {
            let revisions: Vec<Option<i64>> = write
                .keys
                .iter()
                .map(|key| at.get(&(key.as_str(), write.value.as_str())).copied())
                .collect();
            let whole = revisions.iter().all(Option::is_some) && revisions.windows(2).all(|w| w[0] == w[1]);
            (!whole).then(|| {
                format!(
                    "the acknowledged write of {} to {:?} is not in the history as one revision: {revisions:?}",
                    write.value, write.keys
                )
            })
        })
        .collect()
}

/// Every member holds the same data at revision `last` (HashKV); a violation per difference or
/// member not running.
pub async fn same_data_everywhere(cluster: &mut Cluster, endpoints: &[String], last: i64) -> Vec<String> {
    let mut violations = Vec::new();
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
    violations
}

/// `good` as said, or BROKEN.
fn verdict(ok: bool, good: &str) -> &str {
    if ok { good } else { "BROKEN" }
}

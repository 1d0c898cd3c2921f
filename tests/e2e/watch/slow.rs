//! Slow consumers: a watcher whose client stops reading costs the server bounded memory (its
//! stream's channel, then catch-up from history), does not hold up a watcher that keeps up,
//! and gets every event in order once it reads again, or, if the history it still needs was
//! compacted meanwhile, what was buffered followed by a `canceled` with `compact_revision`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::WatchResponse;
use etcd_client::{Client, Txn, TxnOp};

use super::support::{RawWatch, WAIT, connection, create, gauge, prefix_end, revision};
use crate::harness::Server;

/// Distinct keys the load writes, 100 per txn (the default --max-txn-ops is 128).
const KEYS: usize = 1000;
const PUTS_PER_TXN: usize = 100;
const VALUE_BYTES: usize = 100;
const LOAD_WRITERS: usize = 8;

const SLOW_WATCHERS: &str = "etcd_debugging_mvcc_slow_watcher_total";

fn key(k: usize) -> String {
    format!("load/{k:04}")
}

/// Txn `t`'s value for its `m`-th put: says where it came from, padded to `VALUE_BYTES`.
fn value(t: usize, m: usize) -> Vec<u8> {
    let mut v = format!("{t}:{m}:").into_bytes();
    v.resize(VALUE_BYTES, b'.');
    v
}

/// Txn `t` puts keys `t*100 .. t*100+100` (mod `KEYS`), in that order.
fn txn(t: usize) -> Txn {
    Txn::new().and_then(
        (0..PUTS_PER_TXN)
            .map(|m| TxnOp::put(key((t * PUTS_PER_TXN + m) % KEYS), value(t, m), None))
            .collect::<Vec<_>>(),
    )
}

/// Runs txns `range` from `LOAD_WRITERS` concurrent clients; returns `(revision, t)` for each.
async fn load(server: &Server, range: std::ops::Range<usize>) -> Vec<(i64, usize)> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..LOAD_WRITERS {
        let url = server.url();
        let next = next.clone();
        let end = range.end;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect([url], None).await.unwrap();
            let mut done = Vec::new();
            loop {
                let t = next.fetch_add(1, Ordering::Relaxed);
                if t >= end {
                    return done;
                }
                let rev = c.txn(txn(t)).await.unwrap().header().unwrap().revision();
                done.push((rev, t));
            }
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.extend(task.await.unwrap());
    }
    revisions.sort_unstable();
    revisions
}

/// The events `(revision, key, value)` the load's txns produced, in revision order.
fn expected(txns: &[(i64, usize)]) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    txns.iter()
        .flat_map(|&(rev, t)| {
            (0..PUTS_PER_TXN)
                .map(move |m| (rev, key((t * PUTS_PER_TXN + m) % KEYS).into_bytes(), value(t, m)))
        })
        .collect()
}

/// The events of a watcher's responses, checking none is a control response.
fn events(responses: &[WatchResponse], id: i64) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut got = Vec::new();
    for r in responses {
        assert_eq!(r.watch_id, id);
        assert!(!r.created && !r.canceled && !r.fragment, "{r:?}");
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            got.push((kv.mod_revision, kv.key.to_vec(), kv.value.to_vec()));
        }
    }
    got
}

/// Reads `watch` until each of its watches `ids` (0, 1, ...) got exactly `want`, checking every
/// event against it as it arrives: in order, no gaps, no duplicates.
async fn read_all(watch: &mut RawWatch, ids: usize, want: &[(i64, Vec<u8>, Vec<u8>)]) {
    let mut seen = vec![0usize; ids];
    while seen.iter().any(|&n| n < want.len()) {
        let r = watch.next().await;
        assert!(!r.created && !r.canceled && !r.fragment, "{r:?}");
        let n = &mut seen[r.watch_id as usize];
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            let (rev, key, value) = want
                .get(*n)
                .unwrap_or_else(|| panic!("watch {}: extra event {e:?}", r.watch_id));
            assert!(
                kv.mod_revision == *rev && kv.key == *key && kv.value == *value,
                "watch {}: event {n} is {}@{}, want {}@{rev}",
                r.watch_id,
                String::from_utf8_lossy(&kv.key),
                kv.mod_revision,
                String::from_utf8_lossy(key)
            );
            *n += 1;
        }
    }
}

/// `/proc/<pid>/status` field `name` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(server: &Server, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// CPU time the server has used (user + system), from `/proc/<pid>/stat`.
fn cpu_time(server: &Server) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// Watches on the stalled stream: an unbounded design would buffer every event once per
/// watch, 5 x 100,000 here, while the data written stays the same.
const STALLED_WATCHES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher_costs_bounded_memory_and_catches_up() {
    const TXNS: usize = 1000; // 100,000 events
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let range = || create(b"load/", &prefix_end(b"load/"));

    // Each stream on its own connection: HTTP/2 flow control is per connection too, and a
    // client that stops reading would otherwise stall its neighbours in the client itself.
    let mut stalled = RawWatch::open(&connection(&server).await).await;
    for id in 0..STALLED_WATCHES {
        assert_eq!(stalled.created(range()).await.watch_id, id as i64);
    }
    let mut fast = RawWatch::open(&connection(&server).await).await;
    assert_eq!(fast.created(range()).await.watch_id, 0);

    let before = status_kib(&server, "VmRSS");
    let at = Instant::now();
    let (txns, fast_got) = tokio::join!(load(&server, 0..TXNS), async {
        // The fast watcher reads everything while the load runs.
        let mut got = Vec::new();
        while got.len() < TXNS * PUTS_PER_TXN {
            got.extend(events(&[fast.next().await], 0));
        }
        got
    });
    let wrote = at.elapsed();
    let want = expected(&txns);
    assert_eq!(txns.first().unwrap().0, 2);
    assert_eq!(txns.last().unwrap().0, 1 + TXNS as i64, "one revision per txn");
    assert!(fast_got == want, "the fast watcher got every event in order");
    let after = status_kib(&server, "VmRSS");
    let peak = status_kib(&server, "VmHWM");
    eprintln!(
        "slow: wrote {} events in {wrote:?}; RSS {} MiB -> {} MiB (peak {} MiB)",
        want.len(),
        before / 1024,
        after / 1024,
        peak / 1024
    );
    // The stalled watches were moved off the live path.
    assert_eq!(gauge(&server, SLOW_WATCHERS), STALLED_WATCHES as i64);
    // Memory, measured on this machine (debug build, values of 100 bytes, from ~46 MiB at
    // start): without stalled watches this load alone grows the server by ~46 MiB (redb's page
    // cache, the Raft log, the key index); with the five stalled watches by 59-67 MiB, the
    // difference being the stream's channel (256 responses of 100 events) and HTTP/2 buffers.
    // With the channel made unbounded the growth was ~200 MiB (every event kept 5 times), and
    // with catch-up re-reading history for the stalled watches every round 96-128 MiB. The
    // bound sits between: ~45 MiB above what bounded buffering costs.
    let growth_mib = (after.saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 110,
        "server RSS grew by {growth_mib} MiB with a stalled watcher"
    );

    // Stalled watchers cost nothing while nothing is written: catch-up leaves them alone
    // until their client reads (measured 20-40 ms of CPU in this second; 710 ms when it
    // re-read 512 revisions for them every 100 ms).
    let idle = cpu_time(&server);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = cpu_time(&server) - idle;
    eprintln!("slow: idle server with stalled watches used {busy:?} of CPU in 1 s");
    assert!(
        busy < Duration::from_millis(250),
        "an idle server with stalled watchers used {busy:?} of CPU in 1 s"
    );

    let (extra, progress) = fast.until_progress().await;
    assert!(extra.is_empty() && revision(&progress) == 1 + TXNS as i64);

    // Reading again, every stalled watch gets everything: what was buffered, then catch-up.
    let at = Instant::now();
    read_all(&mut stalled, STALLED_WATCHES, &want).await;
    eprintln!("slow: caught up in {:?}", at.elapsed());
    let (extra, progress) = stalled.until_progress().await;
    assert!(extra.is_empty(), "{extra:?}");
    assert_eq!(revision(&progress), 1 + TXNS as i64);
    assert_eq!(gauge(&server, SLOW_WATCHERS), 0, "synced again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher_whose_history_is_compacted_is_canceled_after_its_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut stalled = RawWatch::open(&connection(&server).await).await;
    for id in 0..STALLED_WATCHES {
        let range = create(b"load/", &prefix_end(b"load/"));
        assert_eq!(stalled.created(range).await.watch_id, id as i64);
    }

    // Write until every stalled watch fell behind, then some more, and compact it all away.
    let mut txns = Vec::new();
    let deadline = Instant::now() + WAIT;
    while gauge(&server, SLOW_WATCHERS) < STALLED_WATCHES as i64 {
        assert!(Instant::now() < deadline, "the watches never fell behind");
        let t = txns.len();
        txns.extend(load(&server, t..t + 10).await);
    }
    let t = txns.len();
    txns.extend(load(&server, t..t + 10).await);
    txns.sort_unstable();
    let compacted = txns.last().unwrap().0;
    let mut c = Client::connect([server.url()], None).await.unwrap();
    c.compact(compacted, None).await.unwrap();

    // Reading again, each watch gets a gap-free start of the history (what its stream had
    // buffered), then `canceled` with the compacted revision, then nothing.
    let want = expected(&txns);
    let mut got = vec![Vec::new(); STALLED_WATCHES];
    let mut canceled = vec![None; STALLED_WATCHES];
    while canceled.iter().any(Option::is_none) {
        let r = stalled.next().await;
        let id = r.watch_id as usize;
        assert!(
            canceled[id].is_none(),
            "watch {id}: a response after its cancel: {r:?}"
        );
        if r.canceled {
            canceled[id] = Some(r);
        } else {
            got[id].extend(events(&[r], id as i64));
        }
    }
    for (id, (got, canceled)) in got.iter().zip(&canceled).enumerate() {
        let canceled = canceled.as_ref().unwrap();
        assert_eq!((canceled.compact_revision, canceled.created), (compacted, false));
        assert!(canceled.events.is_empty());
        assert!(
            !got.is_empty() && got.len() < want.len(),
            "watch {id}: {} of {} events",
            got.len(),
            want.len()
        );
        assert!(*got == want[..got.len()], "watch {id}: not the history's start");
    }
    let (extra, _) = stalled.until_progress().await;
    assert!(extra.is_empty(), "nothing after the cancel: {extra:?}");
    eprintln!(
        "slow+compact: {:?} of {} events before the cancel at {compacted}",
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        want.len()
    );
}

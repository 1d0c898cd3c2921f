//! Durability: acknowledged writes survive `kill -9`, nothing is applied twice, and a clean
//! stop and restart recovers everything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::GetOptions;

use crate::client_kv::connect;
use crate::cluster::harness::XorShift;
use crate::harness::{Server, lone_member_flags};

/// Acknowledged puts: key -> the revision the put was answered with.
type Acked = Arc<Mutex<BTreeMap<String, i64>>>;

/// The WAL's crash points (see `src/failpoint.rs`).
const WAL_POINTS: [&str; 3] = ["wal-before-write", "wal-before-sync", "wal-after-sync"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let acked: Acked = Arc::default();
    let writers = start_writers(&server, 0..8, &acked).await;
    // Let the load run, then pull the plug mid-way.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 2000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 2000,
        "only {} puts acknowledged before the kill",
        acked.len()
    );

    server.restart();
    assert_nothing_acknowledged_lost(&server, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_and_restart_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("a", "1", None).await.unwrap();
    c.put("b", "2", None).await.unwrap();
    c.put("a", "3", None).await.unwrap();
    c.delete("b", None).await.unwrap();
    c.compact(3, None).await.unwrap();
    drop(c);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM should exit cleanly, got {status}");

    server.restart();
    let mut c = connect(&server).await;
    let a = c.get("a", None).await.unwrap();
    assert_eq!(a.header().unwrap().revision(), 5);
    assert_eq!(a.kvs()[0].value(), b"3");
    assert_eq!(
        (
            a.kvs()[0].version(),
            a.kvs()[0].create_revision(),
            a.kvs()[0].mod_revision()
        ),
        (2, 2, 4)
    );
    assert_eq!(c.get("b", None).await.unwrap().count(), 0);
    let old = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap_err();
    assert!(
        old.to_string().contains("required revision has been compacted"),
        "{old}"
    );
    assert_eq!(
        c.get("a", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap()
            .kvs()[0]
            .value(),
        b"1"
    );
    assert_eq!(
        c.put("c", "4", None).await.unwrap().header().unwrap().revision(),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_truncate_the_log_and_recovery_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--snapshot-count", "100"]);
    let mut c = connect(&server).await;
    for i in 0..600 {
        c.put(format!("s/{i:04}"), format!("{i}"), None).await.unwrap();
    }
    c.compact(300, None).await.unwrap();
    let snap_dir = dir.path().join("data/member/snap");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let snapshots = loop {
        let found: Vec<_> = std::fs::read_dir(&snap_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                    .collect()
            })
            .unwrap_or_default();
        // A new snapshot is renamed into place before the older one is removed: wait for
        // that sweep too, not only for the first file to appear.
        if found.len() == 1 || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        snapshots.len(),
        1,
        "exactly the newest snapshot is kept: {snapshots:?}"
    );
    drop(c);
    server.kill9();
    server.restart();
    let mut c = connect(&server).await;
    let all = c.get("s/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(all.count(), 600);
    assert_eq!(all.header().unwrap().revision(), 601);
    assert_eq!(all.kvs()[599].value(), b"599");
    let old = c
        .get("s/0000", Some(GetOptions::new().with_revision(299)))
        .await
        .unwrap_err();
    assert!(
        old.to_string().contains("required revision has been compacted"),
        "{old}"
    );
    assert_eq!(
        c.put("s/next", "x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision(),
        602
    );
}

/// One writer per id in `ids`, each putting `w<id>/<i>` = `value-<id>-<i>` for i = 0, 1, ...
/// and recording what was acknowledged, until a put fails.
async fn start_writers(
    server: &Server,
    ids: std::ops::Range<usize>,
    acked: &Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    // Connected first, so that no writer's load can crash the member before all are connected.
    let mut clients = Vec::new();
    for w in ids {
        clients.push((w, connect(server).await));
    }
    let mut writers = Vec::new();
    for (w, mut c) in clients {
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let key = format!("w{w}/{i:06}");
                match c.put(key.clone(), format!("value-{w}-{i}"), None).await {
                    Ok(resp) => {
                        let rev = resp.header().expect("header").revision();
                        acked.lock().unwrap().insert(key, rev);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    writers
}

/// The member aborts (as kill -9 would stop it) at a random hit of each of the WAL's crash
/// points in turn, under 8 writers: before a batch is written, between the write and its
/// fdatasync, and after the fdatasync but before the appends are reported durable. After each
/// crash it restarts on the same data; at the end every acknowledged put is there, once, and
/// revisions have no gaps. Set `CONCORD_TEST_SEED` to replay a run (each prints its seed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_random_points_of_the_wal_loses_no_acknowledged_put() {
    use std::os::unix::process::ExitStatusExt;
    let seed = std::env::var("CONCORD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("CONCORD_TEST_SEED={seed}");
    let mut rng = XorShift(seed);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let acked: Acked = Arc::default();
    for (round, point) in WAL_POINTS.iter().enumerate() {
        let at = 50 + rng.below(300);
        let armed = format!("{point}=abort@{at}");
        println!("round {round}: CONCORD_FAILPOINTS={armed}");
        let env = vec![("CONCORD_FAILPOINTS".to_string(), armed.clone())];
        let mut server = Server::spawn_with_env(data_dir.clone(), lone_member_flags(), env, true).listening();
        let before = acked.lock().unwrap().len();
        let writers = start_writers(&server, round * 8..round * 8 + 8, &acked).await;
        let status = server.wait_exit(Duration::from_secs(60));
        for w in writers {
            w.await.unwrap();
        }
        let status = status.unwrap_or_else(|| panic!("{armed} never fired:\n{}", server.log_tail()));
        assert_eq!(
            status.signal(),
            Some(6),
            "{armed}: not an abort: {status}\n{}",
            server.log_tail()
        );
        println!(
            "round {round}: {} puts acknowledged before the crash",
            acked.lock().unwrap().len() - before
        );
    }
    let server = Server::spawn(data_dir, lone_member_flags(), true).listening();
    let acked = acked.lock().unwrap().clone();
    assert_nothing_acknowledged_lost(&server, &acked).await;
}

/// A failing fdatasync (the WAL's `wal-sync` failpoint armed with `error`, under 4 writers):
/// the member stops, with exit status 101 and a log line naming the failure, rather than
/// acknowledge a write that is not durable; restarted on the same data, it has every put it
/// acknowledged, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fdatasync_stops_the_member_and_loses_no_acknowledged_put() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let env = vec![("CONCORD_FAILPOINTS".to_string(), "wal-sync=error@200".to_string())];
    let mut server = Server::spawn_with_env(data_dir.clone(), lone_member_flags(), env, true).listening();
    let acked: Acked = Arc::default();
    let writers = start_writers(&server, 0..4, &acked).await;
    let status = server.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "the member kept running after its fdatasync failed:\n{}",
            server.log_tail()
        )
    });
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(status.code(), Some(101), "{status}\n{}", server.log_tail());
    assert!(
        !server.log_lines_containing("fdatasync failed").is_empty(),
        "no log line names the failure:\n{}",
        server.log_tail()
    );
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100, "only {} puts acknowledged", acked.len());
    let server = Server::spawn(data_dir, lone_member_flags(), true).listening();
    assert_nothing_acknowledged_lost(&server, &acked).await;
}

/// Checks, on a restarted `server`, that every put in `acked` (key -> revision; keys
/// `w<writer>/<i>`, values `value-<writer>-<i>`, each written once) is there at its revision and
/// applied once, that revisions have no gaps or duplicates, and that the store takes writes.
async fn assert_nothing_acknowledged_lost(server: &Server, acked: &BTreeMap<String, i64>) {
    let mut c = connect(server).await;
    let all = c.get("w", Some(GetOptions::new().with_prefix())).await.unwrap();
    let stored: BTreeMap<String, (i64, i64, String)> = all
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv.key_str().unwrap().to_string();
            (
                key,
                (
                    kv.mod_revision(),
                    kv.version(),
                    kv.value_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    for (key, rev) in acked {
        let (stored_rev, version, value) = stored
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged {key} lost"));
        assert_eq!(stored_rev, rev, "{key} has another revision than acknowledged");
        assert_eq!(*version, 1, "{key} was applied more than once");
        let (w, i) = key[1..].split_once('/').unwrap();
        assert_eq!(
            value,
            &format!(
                "value-{w}-{}",
                i.trim_start_matches('0').parse::<u64>().unwrap_or(0)
            )
        );
    }
    // Every key written once, each write its own revision: revisions are exactly 2..=N+1.
    let mut revisions: Vec<i64> = stored.values().map(|(rev, ..)| *rev).collect();
    revisions.sort_unstable();
    let expected: Vec<i64> = (2..2 + revisions.len() as i64).collect();
    assert_eq!(revisions, expected, "revisions have gaps or duplicates");
    assert_eq!(all.header().unwrap().revision(), 1 + stored.len() as i64);
    // And the store takes writes again.
    let resp = c.put("after", "restart", None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 2 + stored.len() as i64);
}

//! Durability: acknowledged writes survive `kill -9`, nothing is applied twice, and a clean
//! stop and restart recovers everything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::GetOptions;

use crate::client_kv::connect;
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = connect(&server).await;
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
    let mut c = connect(&server).await;
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
    for (key, rev) in &acked {
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

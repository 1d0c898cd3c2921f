//! Backups end to end: `etcdctl snapshot save` from a member under write load, then
//! `concord snapshot status` and `concord snapshot restore` into a new cluster.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::harness::Cluster;
use crate::harness::Server;

/// Runs `concord snapshot ARGS...`.
fn concord_snapshot(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("snapshot")
        .args(args)
        .output()
        .expect("run concord snapshot")
}

/// `concord snapshot status FILE -w json`, parsed.
pub fn status(file: &Path) -> Value {
    let out = concord_snapshot(&["status", &file.display().to_string(), "-w", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every key-value (create, mod revisions, version, lease, value) as etcdctl prints them.
fn everything(kvs: &Value) -> Vec<Value> {
    kvs["kvs"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_into_a_new_cluster_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let source = Cluster::start(&dir.path().join("source"), 3);
    source.wait_for_leader(Duration::from_secs(10));

    // Eight clients put (and now and then delete) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut client = source.client(w % 3).await;
        let (stop, done) = (stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{w}/{}", k % 16);
                if k % 7 == 6 {
                    client.delete(key, None).await.unwrap();
                } else {
                    client.put(key, format!("v{k}"), None).await.unwrap();
                }
                k += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backup = dir.path().join("backup.db");
    let saved = source.ctl_on(1, &["snapshot", "save", &backup.display().to_string()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let after_backup = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < after_backup + 100 {
        assert!(Instant::now() < deadline, "the writers stopped during the backup");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    // The backup holds some revision R of the source, whole: every key as it was at R, and
    // the same hash as the source's history up to R.
    let described = status(&backup);
    let revision = described["revision"].as_i64().unwrap();
    let total_size = described["totalSize"].as_u64().unwrap();
    assert!(
        total_size > 0 && described["totalKey"].as_u64().unwrap() > 100,
        "{described}"
    );
    let mut client = source.client(0).await;
    assert!(client.get("w/", None).await.unwrap().header().unwrap().revision() > revision);
    let source_hash = client.hash_kv(revision).await.unwrap();
    assert_eq!(described["hash"].as_u64().unwrap(), u64::from(source_hash.hash()));
    let at_backup: Value = serde_json::from_str(&source.ctl_on(
        0,
        &[
            "get",
            "",
            "--prefix",
            "--rev",
            &revision.to_string(),
            "-w",
            "json",
        ],
    ))
    .unwrap();
    assert!(everything(&at_backup).len() > 10);

    // Restored into a new cluster of three, the data is exactly that.
    let restored = Cluster::start_restored(&dir.path().join("restored"), 3, &backup);
    restored.wait_for_leader(Duration::from_secs(10));
    for i in 0..3 {
        let now: Value = serde_json::from_str(
            &restored.ctl_on(i, &["get", "", "--prefix", "--consistency", "l", "-w", "json"]),
        )
        .unwrap();
        assert_eq!(now["header"]["revision"].as_i64(), Some(revision), "member {i}");
        assert_eq!(everything(&now), everything(&at_backup), "member {i}");
        let mut member = restored.client(i).await;
        assert_eq!(
            member.hash_kv(revision).await.unwrap().hash(),
            source_hash.hash(),
            "member {i}"
        );
    }
    assert_ne!(
        restored.status(0).unwrap().cluster_id,
        source.status(0).unwrap().cluster_id,
        "a restore starts a new cluster"
    );
    // And it goes on from there.
    let mut client = restored.client(2).await;
    let put = client.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), revision + 1);
}

#[test]
fn damaged_backups_are_refused_and_nothing_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.ctl(&["put", "k", "v"]);
    let backup = dir.path().join("backup.db");
    server.ctl(&["snapshot", "save", &backup.display().to_string()]);
    let bytes = std::fs::read(&backup).unwrap();
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();

    // Whole, it restores into a lone member that serves the key.
    let target = dir.path().join("whole");
    let out = concord_snapshot(&[
        "restore",
        &backup.display().to_string(),
        "--data-dir",
        &target.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = Server::start_on_data_dir(target.clone(), &[]);
    assert!(restored.ctl(&["get", "k"]).contains('v'));
    // Restoring onto an existing data directory is refused.
    let out = concord_snapshot(&[
        "restore",
        &backup.display().to_string(),
        "--data-dir",
        &target.display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("exists"), "{}", text(&out));

    for (name, damaged) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("cut-off checksum", bytes[..bytes.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("flipped", {
            let mut b = bytes.clone();
            b[bytes.len() / 3] ^= 0x40;
            b
        }),
    ] {
        let file = dir.path().join(format!("{name}.db"));
        std::fs::write(&file, &damaged).unwrap();
        let target = dir.path().join(format!("restore-{name}"));
        let out = concord_snapshot(&[
            "restore",
            &file.display().to_string(),
            "--data-dir",
            &target.display().to_string(),
        ]);
        assert!(!out.status.success(), "{name} was restored");
        let said = text(&out);
        assert!(
            said.contains("integrity check failed") || said.contains("too short"),
            "{name}: {said}"
        );
        assert!(!target.exists(), "{name}: a data directory was left behind");
        let out = concord_snapshot(&["status", &file.display().to_string()]);
        assert!(!out.status.success(), "{name} has a status");
    }
}

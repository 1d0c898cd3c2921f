//! Auto-compaction end to end: `--auto-compaction-mode periodic|revision` with
//! `--auto-compaction-retention`, as etcd's.

use std::time::{Duration, Instant};

use crate::harness::Server;

const COMPACTED: &str = "required revision has been compacted";

/// Waits until reading `key` at `revision` fails with etcd's compaction error.
fn wait_compacted(server: &Server, key: &str, revision: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = server.etcdctl(&["get", key, "--rev", &revision.to_string()]);
        if String::from_utf8_lossy(&out.stderr).contains(COMPACTED) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "revision {revision} was never compacted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn periodic_auto_compaction_keeps_the_last_period() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--auto-compaction-retention", "1s"]);
    server.ctl(&["put", "k", "first"]); // revision 2
    for i in 0..5 {
        server.ctl(&["put", "k", &format!("v{i}")]);
    }
    wait_compacted(&server, "k", 2);
    // What was written since is kept.
    server.ctl(&["put", "k", "last"]);
    assert!(server.ctl(&["get", "k"]).contains("last"));
}

#[test]
fn revision_auto_compaction_keeps_the_last_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut plain = Server::start_on_data_dir(data_dir.clone(), &[]);
    for i in 0..20 {
        plain.ctl(&["put", "k", &format!("v{i}")]);
    }
    plain.terminate();
    drop(plain);
    // Revisions 2..=21 were written; keeping 5 compacts at 16 as soon as the member leads.
    let server = Server::start_on_data_dir(
        data_dir,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "5",
        ],
    );
    wait_compacted(&server, "k", 15);
    assert!(server.ctl(&["get", "k", "--rev", "16"]).contains("v14"));
    // A bad retention is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args([
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1h",
        ])
        .args(["--data-dir", &dir.path().join("bad").display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a number of revisions"));
}

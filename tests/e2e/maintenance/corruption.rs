//! Corruption checks end to end: a member whose stored history was changed behind its back
//! (its database edited while it was down) is found by the leader's periodic check, which
//! raises CORRUPT for it, and `--experimental-initial-corrupt-check` refuses to start it.

use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::cluster::harness::Cluster;
use crate::harness::Server;

/// The MVCC history table, as the server stores it.
const HISTORY: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("mvcc_history");

/// Rewrites, in the stopped member's database at `data_dir`, every history row holding `from`
/// to hold `to` instead (same length); returns how many rows changed.
fn tamper(data_dir: &std::path::Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let db = redb::Database::create(data_dir.join("member").join("db.redb")).unwrap();
    let rows: Vec<([u8; 16], Vec<u8>)> = {
        let read = db.begin_read().unwrap();
        let table = read.open_table(HISTORY).unwrap();
        table
            .iter()
            .unwrap()
            .map(|row| row.unwrap())
            .map(|(k, v)| (k.value(), v.value().to_vec()))
            .filter(|(_, v)| v.windows(from.len()).any(|w| w == from))
            .collect()
    };
    let write = db.begin_write().unwrap();
    {
        let mut table = write.open_table(HISTORY).unwrap();
        for (key, value) in &rows {
            let at = value.windows(from.len()).position(|w| w == from).unwrap();
            let mut changed = value.clone();
            changed[at..at + to.len()].copy_from_slice(to);
            table.insert(key, changed.as_slice()).unwrap();
        }
    }
    write.commit().unwrap();
    rows.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_member_is_found_and_alarmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(dir.path(), 3, &["--experimental-corrupt-check-time", "1s"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let victim = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    client.put("tamper", "tamper-me", None).await.unwrap();
    // Write on until the victim has durably recorded having applied that (its state is
    // committed with an fsync at least every second), so a restart does not replay it.
    let written = Instant::now();
    let mut i = 0;
    while written.elapsed() < Duration::from_millis(1500) {
        client.put(format!("after/{i}"), "x", None).await.unwrap();
        i += 1;
    }
    assert!(
        cluster.ctl_on(leader, &["alarm", "list"]).trim().is_empty(),
        "no alarm while all agree"
    );
    cluster.terminate(victim);
    let victim_dir = dir.path().join(cluster.name(victim));
    assert_eq!(tamper(&victim_dir, b"tamper-me", b"tamper-ME"), 1);

    // With the check at start, the tampered member refuses to serve.
    let mut checked = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("--data-dir")
        .arg(&victim_dir)
        .args([
            "--experimental-initial-corrupt-check",
            "--name",
            cluster.name(victim),
        ])
        .args(["--listen-client-urls", cluster.client_url(victim)])
        .args(["--advertise-client-urls", cluster.client_url(victim)])
        .args(["--listen-peer-urls", cluster.peer_url(victim)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = checked.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            checked.kill().unwrap();
            panic!("the tampered member started serving despite the initial check");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut checked.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success());
    assert!(said.contains("found data inconsistency with peers"), "{said}");

    // Without it, it starts, and the leader's periodic check raises CORRUPT for it alone.
    cluster.restart(victim);
    let victim_id = cluster.member_id(victim);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = cluster.ctl_on(leader, &["alarm", "list"]);
        if listed.contains("alarm:CORRUPT") {
            assert!(listed.contains(&format!("memberID:{victim_id} ")), "{listed}");
            assert_eq!(listed.trim().lines().count(), 1, "{listed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "CORRUPT was never raised: {}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = client.put("k", "v", None).await.unwrap_err();
    assert!(err.to_string().contains("etcdserver: corrupt cluster"), "{err}");
    // Reads go on, and the operator can tell the members apart.
    assert_eq!(
        client.get("tamper", None).await.unwrap().kvs()[0].value(),
        b"tamper-me"
    );
}

#[test]
fn a_lone_member_passes_its_own_initial_check() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--experimental-initial-corrupt-check"]);
    server.ctl(&["put", "k", "v"]);
}

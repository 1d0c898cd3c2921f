//! Three members talking to each other over TLS only (`https://` peer URLs, peer client
//! certificates required): they form a cluster, replicate, and fail over.

use std::time::{Duration, Instant};

use super::Pki;
use crate::cluster::harness::free_ports;
use crate::harness::Server;

/// Retries `f` every 100 ms until it answers `Some`, for at most 20 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = f() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_form_replicate_and_fail_over_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ports = free_ports(6);
    let peer = |i: usize| format!("https://127.0.0.1:{}", ports[2 * i + 1]);
    let client = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
    let initial = (0..3)
        .map(|i| format!("m{i}={}", peer(i)))
        .collect::<Vec<_>>()
        .join(",");
    let spawn = |i: usize| {
        let args: Vec<String> = [
            "--name",
            &format!("m{i}"),
            "--listen-client-urls",
            &client(i),
            "--advertise-client-urls",
            &client(i),
            "--listen-peer-urls",
            &peer(i),
            "--initial-advertise-peer-urls",
            &peer(i),
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            "tls-cluster",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--peer-cert-file",
            &pki.path("server.pem"),
            "--peer-key-file",
            &pki.path("server-key.pem"),
            "--peer-trusted-ca-file",
            &pki.path("ca.pem"),
            "--peer-client-cert-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Server::spawn(dir.path().join(format!("m{i}")), args, false)
    };
    let spawned: Vec<_> = (0..3).map(spawn).collect();
    let mut members: Vec<Server> = spawned.into_iter().map(|s| s.listening()).collect();

    // Formed: a leader, and a write through one member read on another.
    let leader_of = |members: &[Server], i: usize| -> Option<u64> {
        let out = members[i].etcdctl(&["--command-timeout=1s", "endpoint", "status", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json[0]["Status"]["leader"].as_u64().filter(|&l| l != 0)
    };
    let leader = eventually("a leader", || leader_of(&members, 0));
    members[0].ctl(&["put", "over/tls", "1"]);
    eventually("replicated to m2", || {
        let out = members[2].etcdctl(&["get", "over/tls", "--consistency=s", "--print-value-only"]);
        (String::from_utf8_lossy(&out.stdout).trim() == "1").then_some(())
    });
    assert!(
        members.iter().all(|m| m
            .log_lines_containing("serving peer requests")
            .iter()
            .all(|l| l.contains("tls=true"))),
        "every peer listener serves TLS"
    );

    // Fail over: kill the leader, and the other two elect a new one and take writes.
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            let out = members[i].ctl(&["endpoint", "status", "-w", "json"]);
            let json: serde_json::Value = serde_json::from_str(&out).unwrap();
            json[0]["Status"]["header"]["member_id"].as_u64().unwrap()
        })
        .collect();
    let dead = ids.iter().position(|&id| id == leader).unwrap();
    members[dead].kill9();
    let alive = (dead + 1) % 3;
    let new_leader = eventually("a new leader", || {
        leader_of(&members, alive).filter(|&l| l != leader)
    });
    assert_ne!(new_leader, leader);
    eventually("a write after the fail-over", || {
        members[alive]
            .etcdctl(&["put", "after", "2"])
            .status
            .success()
            .then_some(())
    });
    let other = 3 - dead - alive;
    eventually("replicated after the fail-over", || {
        let out = members[other].etcdctl(&["get", "after", "--consistency=s", "--print-value-only"]);
        (String::from_utf8_lossy(&out.stdout).trim() == "2").then_some(())
    });
}

//! The auth state is replicated state: it survives kill -9, and a member that joins after the
//! log was compacted into a snapshot receives it in the snapshot.

use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use super::{client_as, message, rbac};
use crate::cluster::harness::Cluster;
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_the_enabled_flag_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    rbac(&server);
    server.ctl(&["role", "add", "extra", "--user=root:rootpw"]);
    server.kill9();
    server.restart();
    // Still on: anonymous refused, alice's permissions exactly as before.
    assert!(server.ctl_err(&["get", "foo"]).contains("user name is empty"));
    let mut alice = client_as(&server, "alice", "alicepw").await;
    assert_eq!(alice.get("foo", None).await.unwrap().kvs()[0].value(), b"bar");
    assert_eq!(
        message(alice.get("secret/s", None).await),
        "etcdserver: permission denied"
    );
    let roles = server.ctl(&["role", "list", "--user=root:rootpw"]);
    assert_eq!(roles.lines().collect::<Vec<_>>(), ["extra", "reader"]);
    assert!(
        server
            .ctl_err(&["get", "foo", "--user=alice:wrong"])
            .contains("authentication failed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_after_a_snapshot_receives_the_auth_state() {
    // More entries than the log keeps behind a snapshot (1,000), so the joiner must install one.
    const KEYS: usize = 1300;
    const WRITERS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(dir.path(), 1, &["--snapshot-count", "100"]);
    cluster.wait_for_leader(Duration::from_secs(10));
    rbac(cluster.member(0));
    cluster.set_ctl_args(&["--user=root:rootpw"]);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut root = client_as(cluster.member(0), "root", "rootpw").await;
        writers.push(tokio::spawn(async move {
            for k in (w..KEYS).step_by(WRITERS) {
                root.put(format!("app/{k:05}"), "v", None).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // A learner: a voter could not be added to a lone member without losing the quorum.
    let joiner = cluster.add_member(true);
    // The joiner serves alice (its own tokens, its own copy of her permissions) once it has
    // the state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut alice = loop {
        let options = etcd_client::ConnectOptions::new()
            .with_user("alice", "alicepw")
            .with_timeout(Duration::from_secs(2));
        if let Ok(client) = etcd_client::Client::connect([cluster.client_url(joiner)], Some(options)).await {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "the joiner never authenticated alice\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let serializable = GetOptions::new().with_prefix().with_serializable();
    let deadline = Instant::now() + Duration::from_secs(30);
    while alice
        .get("app/", Some(serializable.clone()))
        .await
        .map(|r| r.kvs().len())
        .ok()
        != Some(KEYS)
    {
        assert!(
            Instant::now() < deadline,
            "the joiner never caught up\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let denied = alice
        .get("secret/s", Some(GetOptions::new().with_serializable()))
        .await;
    assert_eq!(message(denied), "etcdserver: permission denied");
    assert!(
        !cluster
            .log_lines_containing(joiner, "installed snapshot")
            .is_empty(),
        "the joiner should have caught up from a snapshot"
    );
}

//! `concord-client` with credentials: it authenticates by itself, again whenever its token
//! lapses or the member forgets it (a restart), and its helpers' streams keep working.

use std::time::Duration;

use concord_client::{Client, ClientOptions, Credentials, ErrorKind};

use super::rbac;
use crate::cluster::harness::Cluster;

fn options(user: &str, password: &str) -> ClientOptions {
    ClientOptions {
        credentials: Some(Credentials::new(user, password)),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_authenticates_and_never_shows_a_lapsed_token() {
    let dir = tempfile::tempdir().unwrap();
    // A one-member cluster: its URLs stay the same across a restart.
    let mut cluster = Cluster::start_with(dir.path(), 1, &["--auth-token-ttl", "1"]);
    cluster.wait_for_leader(Duration::from_secs(10));
    let url = cluster.client_url(0).to_string();
    // Credentials while auth is off are simply not needed.
    let early = Client::connect_with([url.as_str()], options("alice", "alicepw"))
        .await
        .unwrap();
    early.put("app/early", "1").await.unwrap();
    rbac(cluster.member(0));
    let alice = Client::connect_with([url.as_str()], options("alice", "alicepw"))
        .await
        .unwrap();
    alice.put("app/a", "1").await.unwrap();
    assert_eq!(alice.get("foo").await.unwrap().unwrap().value, &b"bar"[..]);
    let denied = alice.put("foo", "x").await.unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
    // The early client learns that auth is on now, and authenticates.
    early.put("app/early", "2").await.unwrap();

    // A lock's session keeps its lease alive on the token, across the token's lapses.
    let guard = alice
        .lock_with_ttl("app/job", Duration::from_secs(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!guard.is_lost(), "keep-alives went on");
    // Idle past the TTL: the next request authenticates again without the caller noticing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(alice.get("foo").await.unwrap().unwrap().value, &b"bar"[..]);
    guard.unlock().await.unwrap();

    // A restarted member has forgotten every token: the client authenticates again.
    cluster.kill9(0);
    cluster.restart(0);
    let after = alice.get("app/a").await.unwrap().unwrap();
    assert_eq!(after.value, &b"1"[..]);

    // Wrong credentials are the caller's to fix: the error says so.
    let wrong = Client::connect_with([url.as_str()], options("alice", "nope"))
        .await
        .unwrap();
    let refused = wrong.get("foo").await.unwrap_err();
    assert!(refused.to_string().contains("authentication failed"), "{refused}");
    assert!(!refused.is_retryable());
}

//! Shared by the recipe tests: fast Raft timing (a 1 s minimum lease TTL), a background
//! `etcdctl` that can be signalled, keepalive tasks, and error unpacking.

use std::time::{Duration, Instant};

use etcd_client::Client;

pub use crate::background::{Etcdctl, STILL_WAITING, WAIT};
use crate::harness::Server;

/// A lease with a 1 s TTL that is not renewed must be gone, and whatever it held handed on,
/// this long after it was granted or last renewed (the TTL plus 1.5 s for the expiry check,
/// the revoke's commit and a loaded debug build).
pub const EXPIRY_LIMIT: Duration = Duration::from_millis(2500);

/// Raft timing that makes the minimum lease TTL 1 s instead of 2 s (etcd's rule: 1.5 election
/// timeouts), so crashed holders release their locks sooner.
pub const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// A new connection to `server` (each contender gets its own, like separate processes).
pub async fn connect(server: &Server) -> Client {
    Client::connect([server.url()], None)
        .await
        .expect("connect to concord")
}

/// The gRPC status inside a client error.
pub fn status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("a gRPC status expected, got {other:?}"),
    }
}

/// A lease of `ttl` seconds, renewed every `every` by a background task until it is aborted.
/// Returns the lease ID and the task.
pub async fn kept_alive(c: &mut Client, ttl: i64, every: Duration) -> (i64, tokio::task::JoinHandle<()>) {
    let id = c.lease_grant(ttl, None).await.unwrap().id();
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    let task = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match responses.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                _ => return,
            }
            tokio::time::sleep(every).await;
        }
    });
    (id, task)
}

/// The keys under `prefix`, oldest first.
pub async fn keys_under(c: &mut Client, prefix: &str) -> Vec<String> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
    c.get(prefix, Some(options))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

/// Polls until the keys under `prefix` are `want`, failing after [`WAIT`].
pub async fn wait_keys(c: &mut Client, prefix: &str, want: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = keys_under(c, prefix).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "keys under {prefix:?}: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

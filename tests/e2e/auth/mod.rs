//! Auth end to end: the `etcd-client` crate and `etcdctl` against a server with users, roles
//! and permissions; tokens lapsing; the auth state surviving kill -9 and reaching a member that
//! joins later; bad input.

mod bad_input;
mod client;
mod durability;
mod jwt;
mod permissions;
mod services;
mod tokens;

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::harness::Server;

/// Sets up etcd's RBAC walk-through on `server` with etcdctl: `root` (password `rootpw`),
/// and `alice` (`alicepw`) with the role `reader`: read on `foo`, readwrite on the prefix
/// `app/`; then turns auth on.
pub fn rbac(server: &Server) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "foo"],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "reader",
            "readwrite",
            "app/",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["put", "foo", "bar"],
        &["put", "secret/s", "x"],
        &["auth", "enable"],
    ] {
        server.ctl(args);
    }
}

/// Opens a watch on the prefix `prefix` and waits for the server's `created` answer, so that
/// every write after this returns is seen (the crate's `watch` returns before the server has
/// registered the watch).
pub async fn prefix_watch(client: &mut Client, prefix: &str) -> etcd_client::WatchStream {
    let options = etcd_client::WatchOptions::new().with_prefix();
    let mut stream = client.watch(prefix, Some(options)).await.unwrap();
    let created = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the created answer within 10 s")
        .expect("the watch stream works")
        .expect("the watch stream is open");
    assert!(created.created() && !created.canceled(), "{created:?}");
    stream
}

/// The next watch response on `stream` that is not just `created` (within 10 s).
pub async fn next_watch_response(stream: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    loop {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a watch response within 10 s")
            .expect("the watch stream works")
            .expect("the watch stream is open");
        if response.created() && !response.canceled() && response.events().is_empty() {
            continue;
        }
        return response;
    }
}

/// A client of `server` authenticated as `user`.
pub async fn client_as(server: &Server, user: &str, password: &str) -> Client {
    let options = ConnectOptions::new()
        .with_user(user, password)
        .with_timeout(Duration::from_secs(10));
    Client::connect([server.url()], Some(options)).await.unwrap()
}

/// The message of a failed call.
#[track_caller]
pub fn message<T>(result: Result<T, etcd_client::Error>) -> String {
    match result {
        Ok(_) => panic!("the call should have been refused"),
        Err(etcd_client::Error::GRpcStatus(status)) => status.message().to_string(),
        Err(other) => other.to_string(),
    }
}

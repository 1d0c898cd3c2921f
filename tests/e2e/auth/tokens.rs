//! Simple tokens: a lapsed or unknown token is refused with `invalid auth token`, so clients
//! authenticate again; a password change or a deletion ends the user's tokens at once.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::{client_as, message, rbac};
use crate::harness::Server;

const INVALID_TOKEN: &str = "etcdserver: invalid auth token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_token_makes_clients_authenticate_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--auth-token-ttl", "1"]);
    rbac(&server);
    let mut plain = client_as(&server, "alice", "alicepw").await;
    let refreshing = ConnectOptions::new()
        .with_user("alice", "alicepw")
        .with_auto_token_refresh(true);
    let mut refreshing = Client::connect([server.url()], Some(refreshing)).await.unwrap();
    plain.get("foo", None).await.unwrap();
    refreshing.get("foo", None).await.unwrap();
    // A token lapses a TTL after its last use; nothing can observe it sooner.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let refused = plain.get("foo", None).await;
    assert_eq!(message(refused), INVALID_TOKEN);
    let status = match plain.get("foo", None).await {
        Err(etcd_client::Error::GRpcStatus(status)) => status,
        other => panic!("{other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // The refreshing client authenticates again by itself.
    let foo = refreshing.get("foo", None).await.unwrap();
    assert_eq!(foo.kvs()[0].value(), b"bar");
    // etcdctl authenticates on every call.
    assert!(
        server
            .ctl(&["get", "foo", "--user=alice:alicepw"])
            .contains("bar")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_use_stays_and_a_password_change_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--auth-token-ttl", "2"]);
    rbac(&server);
    let mut alice = client_as(&server, "alice", "alicepw").await;
    // Used more often than its TTL, a token lives on (each use restarts it).
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        alice.get("foo", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A keepalive stream opened with the old token...
    let lease = alice.lease_grant(30, None).await.unwrap().id();
    let (mut keeper, mut acks) = alice.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert!(acks.message().await.unwrap().is_some());
    let out = server.etcdctl_with_stdin(
        &[
            "user",
            "passwd",
            "alice",
            "--interactive=false",
            "--user=root:rootpw",
        ],
        Some("newpw\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(message(alice.get("foo", None).await), INVALID_TOKEN);
    // ...ends with the error at its next keepalive.
    keeper.keep_alive().await.unwrap();
    assert_eq!(message(acks.message().await), INVALID_TOKEN);
    assert_eq!(
        message(
            Client::connect(
                [server.url()],
                Some(ConnectOptions::new().with_user("alice", "alicepw"))
            )
            .await
        ),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    let mut again = client_as(&server, "alice", "newpw").await;
    again.get("foo", None).await.unwrap();
    // Deleting the user ends its tokens too.
    server.ctl(&["user", "delete", "alice", "--user=root:rootpw"]);
    assert_eq!(message(again.get("foo", None).await), INVALID_TOKEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_tokens_are_refused_and_ignored_while_auth_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let get = |token: &'static [u8]| {
        let channel = channel.clone();
        async move {
            let mut kv = concord_proto::etcdserverpb::kv_client::KvClient::new(channel);
            let mut request = tonic::Request::new(concord_proto::etcdserverpb::RangeRequest {
                key: b"foo".to_vec(),
                ..Default::default()
            });
            let value = tonic::metadata::MetadataValue::try_from(token).unwrap();
            request.metadata_mut().insert("token", value);
            kv.range(request).await
        }
    };
    // Auth off: tokens are not looked at.
    assert!(get(b"whatever.1").await.is_ok());
    rbac(&server);
    for forged in [&b"abcdefghijklmnop.1"[..], b"", b"not-a-token", &[b'x'; 4096]] {
        let refused = get(Box::leak(forged.to_vec().into_boxed_slice()))
            .await
            .unwrap_err();
        assert_eq!(
            refused.message(),
            INVALID_TOKEN,
            "{:?}",
            String::from_utf8_lossy(forged)
        );
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
}

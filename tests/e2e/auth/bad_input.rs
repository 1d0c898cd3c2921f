//! Bad input to the Auth service: each refused with etcd's error, nothing changed.

use super::{client_as, message, rbac};
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_names_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // Before auth is on.
    let mut open = etcd_client::Client::connect([server.url()], None).await.unwrap();
    assert_eq!(
        message(open.auth_client().authenticate("root".into(), "pw".into()).await),
        "etcdserver: authentication is not enabled"
    );
    assert_eq!(
        message(open.auth_enable().await),
        "etcdserver: root user does not exist"
    );
    assert_eq!(
        message(open.user_add("", "pw", None).await),
        "etcdserver: user name is empty"
    );
    assert_eq!(message(open.role_add("").await), "etcdserver: role name is empty");
    rbac(&server);
    let mut root = client_as(&server, "root", "rootpw").await;
    let users_before = root.user_list().await.unwrap().users().to_vec();
    let wrong = |user: &'static str, password: String| {
        let url = server.url();
        async move {
            let options = etcd_client::ConnectOptions::new().with_user(user, password);
            message(etcd_client::Client::connect([url], Some(options)).await)
        }
    };
    let failed = "etcdserver: authentication failed, invalid user ID or password";
    assert_eq!(wrong("alice", "wrong".into()).await, failed);
    assert_eq!(wrong("nobody", "pw".into()).await, failed);
    assert_eq!(wrong("alice", "x".repeat(100_000)).await, failed);
    // Names: 1 MiB (and anything over 256 bytes) is refused; 2 MiB is over the request limit.
    let too_long = "etcdserver: user or role name is too long (at most 256 bytes)";
    let huge = "u".repeat(1 << 20);
    assert_eq!(message(root.user_add(huge.as_str(), "pw", None).await), too_long);
    assert_eq!(message(root.role_add(huge.as_str()).await), too_long);
    let over_limit = message(root.role_add("r".repeat(2 << 20)).await);
    assert!(over_limit.contains("larger than max"), "{over_limit}");
    assert_eq!(
        message(root.user_add("alice", "pw", None).await),
        "etcdserver: user name already exists"
    );
    assert_eq!(
        message(root.role_add("reader").await),
        "etcdserver: role name already exists"
    );
    assert_eq!(
        message(root.user_get("nobody").await),
        "etcdserver: user name not found"
    );
    assert_eq!(
        message(root.role_get("nobody").await),
        "etcdserver: role name not found"
    );
    assert_eq!(
        message(root.user_delete("root").await),
        "etcdserver: invalid auth management"
    );
    assert_eq!(
        message(root.user_grant_role("alice", "nosuch").await),
        "etcdserver: role name not found"
    );
    // A password too long for bcrypt (72 bytes) is refused rather than cut short.
    let long = "p".repeat(100);
    let refused = message(root.user_add("carol", long.as_str(), None).await);
    assert!(refused.contains("password"), "{refused}");
    assert_eq!(root.user_list().await.unwrap().users(), users_before.as_slice());
    // Alice still authenticates with her own password.
    client_as(&server, "alice", "alicepw")
        .await
        .get("foo", None)
        .await
        .unwrap();
}

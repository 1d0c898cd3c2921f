//! A user with read on `foo` and readwrite on `app/`, through the `etcd-client` crate: what it
//! may and may not do, every refusal with etcd's text, nothing changed by a refused call.
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

use super::{client_as, message, next_watch_response, prefix_watch, rbac};
use crate::harness::Server;

const DENIED: &str = "etcdserver: permission denied";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_foo_and_app_may_do_only_that() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    rbac(&server);
    let mut alice = client_as(&server, "alice", "alicepw").await;
    let mut root = client_as(&server, "root", "rootpw").await;

    // Reads: foo and app/ yes; secret/, everything, and a range leaving app/ no.
    let foo = alice.get("foo", None).await.unwrap();
    assert_eq!(foo.kvs()[0].value(), b"bar");
    assert_eq!(message(alice.get("secret/s", None).await), DENIED);
    let everything = GetOptions::new().with_all_keys();
    assert_eq!(message(alice.get("", Some(everything)).await), DENIED);
    let from_app = GetOptions::new().with_from_key();
    assert_eq!(message(alice.get("app/", Some(from_app)).await), DENIED);
    assert!(
        alice
            .get("app/", Some(GetOptions::new().with_prefix()))
            .await
            .is_ok()
    );

    // Writes: app/ yes, foo no (read only), and a refused write changes nothing.
    alice.put("app/a", "1", None).await.unwrap();
    assert_eq!(message(alice.put("foo", "x", None).await), DENIED);
    assert_eq!(root.get("foo", None).await.unwrap().kvs()[0].value(), b"bar");
    let with_prev = PutOptions::new().with_prev_key();
    assert!(alice.put("app/a", "2", Some(with_prev)).await.is_ok());

    // A txn needs every compare and every op of both branches.
    let reads_secret = Txn::new()
        .when([Compare::version("secret/s", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("app/b", "1", None)]);
    assert_eq!(message(alice.txn(reads_secret).await), DENIED);
    let writes_foo_on_failure = Txn::new()
        .when([Compare::version("app/a", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("app/b", "1", None)])
        .or_else([TxnOp::put("foo", "x", None)]);
    assert_eq!(message(alice.txn(writes_foo_on_failure).await), DENIED);
    assert!(
        root.get("app/b", None).await.unwrap().kvs().is_empty(),
        "nothing applied"
    );
    let allowed = Txn::new()
        .when([Compare::version("app/a", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("app/b", "1", None), TxnOp::get("foo", None)]);
    assert!(alice.txn(allowed).await.unwrap().succeeded());

    // Watches: inside app/ yes; outside, canceled at once with etcd's reason.
    let mut inside = prefix_watch(&mut alice, "app/").await;
    alice.put("app/c", "1", None).await.unwrap();
    let event = next_watch_response(&mut inside).await;
    assert_eq!(event.events()[0].kv().unwrap().key(), b"app/c");
    let mut outside = alice
        .watch("secret/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let refused = next_watch_response(&mut outside).await;
    assert!(refused.canceled(), "{refused:?}");
    assert_eq!(refused.cancel_reason(), DENIED);

    // Leases: revoking one that holds a key alice may not write is refused, and the key stays.
    let lease = root.lease_grant(60, None).await.unwrap().id();
    root.put("secret/leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert_eq!(message(alice.lease_revoke(lease).await), DENIED);
    assert_eq!(
        message(
            alice
                .put("app/leased", "v", Some(PutOptions::new().with_lease(lease)))
                .await
        ),
        DENIED,
        "attaching a key to a lease alice could not revoke"
    );
    assert_eq!(root.get("secret/leased", None).await.unwrap().kvs().len(), 1);
    let own = alice.lease_grant(60, None).await.unwrap().id();
    alice
        .put("app/mine", "v", Some(PutOptions::new().with_lease(own)))
        .await
        .unwrap();
    alice.lease_revoke(own).await.unwrap();
    assert!(root.get("app/mine", None).await.unwrap().kvs().is_empty());

    // Administration is root's.
    assert_eq!(message(alice.user_add("bob", "bobpw", None).await), DENIED);
    assert_eq!(message(alice.role_add("writer").await), DENIED);
    assert_eq!(message(alice.auth_disable().await), DENIED);
    assert!(
        root.user_list()
            .await
            .unwrap()
            .users()
            .contains(&"alice".to_string())
    );
    assert_eq!(message(alice.user_list().await), DENIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_user_loses_the_permission_is_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    rbac(&server);
    let mut alice = client_as(&server, "alice", "alicepw").await;
    let mut root = client_as(&server, "root", "rootpw").await;
    let mut stream = prefix_watch(&mut alice, "app/").await;
    root.role_revoke_permission(
        "reader",
        "app/",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    // Events after the revoke never reach alice: the watch ends with etcd's reason first.
    root.put("app/after", "v", None).await.unwrap();
    let canceled = next_watch_response(&mut stream).await;
    assert!(canceled.canceled(), "{canceled:?}");
    assert!(canceled.events().is_empty());
    assert_eq!(canceled.cancel_reason(), DENIED);
    assert_eq!(message(alice.get("app/after", None).await), DENIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_on_the_server_check_the_callers_keys() {
    use etcd_client::{ElectionClient, LockOptions};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    rbac(&server);
    let mut alice = client_as(&server, "alice", "alicepw").await;
    let lease = alice.lease_grant(30, None).await.unwrap().id();
    let held = alice
        .lock("app/job", Some(LockOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert!(held.key().starts_with(b"app/job/"));
    alice.unlock(held.key()).await.unwrap();
    assert_eq!(
        message(
            alice
                .lock("jobs/nightly", Some(LockOptions::new().with_lease(lease)))
                .await
        ),
        DENIED
    );
    let mut election: ElectionClient = alice.election_client();
    assert_eq!(message(election.campaign("leaders/x", "me", lease).await), DENIED);
    assert!(election.campaign("app/leader", "me", lease).await.is_ok());
    // Without a token, nothing at all.
    let mut anonymous = etcd_client::Client::connect([server.url()], None).await.unwrap();
    assert_eq!(
        message(anonymous.get("foo", None).await),
        "etcdserver: user name is empty"
    );
    assert_eq!(
        message(anonymous.lock("app/job", None).await),
        "etcdserver: user name is empty"
    );
}

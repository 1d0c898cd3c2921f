//! The Registry service: concordctl and the client register, list, watch, drain and
//! deregister; a crashed instance leaves within its TTL; a paused one registers again; a
//! thousand instances; the stored format read and written with etcdctl; bad input refused.

use std::time::{Duration, Instant};

use concord_client::proto::concord::registry::v1::registry_client::RegistryClient;
use concord_client::proto::concord::registry::v1::{
    DrainRequest, ListRequest, RegisterRequest, WatchRequest,
};
use concord_client::{Kv, MembershipChange};
use futures::StreamExt;
use serde_json::Value;

use super::support::{Background, FAST, client, ctl_fails, ctl_ok, revision, until, within};
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concordctl_registers_lists_watches_drains_and_deregisters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let watch = Background::concordctl(&server.url(), &["registry", "watch", "api"]);
    let register = Background::concordctl(
        &server.url(),
        &[
            "registry",
            "register",
            "api",
            "a1",
            "10.0.0.1:80",
            "--ttl",
            "2",
            "--metadata",
            r#"{"zone":"a"}"#,
        ],
    );
    let registered = register.stdout_containing("\n").await;
    assert!(
        registered.starts_with("registered services/api/a1 with lease "),
        "{registered}"
    );
    let lease = registered.trim().rsplit(' ').next().unwrap().to_string();

    // Listed, in every output format.
    let listed = ctl_ok(&server, &["registry", "list", "api"]);
    assert_eq!(listed, format!("a1 10.0.0.1:80 up {{\"zone\":\"a\"}} {lease}\n"));
    let json: Value =
        serde_json::from_str(&ctl_ok(&server, &["-w", "json", "registry", "list", "api"])).unwrap();
    assert_eq!(json[0]["addr"], "10.0.0.1:80");
    assert_eq!(json[0]["metadata"]["zone"], "a");
    let table = ctl_ok(&server, &["-w", "table", "registry", "list", "api"]);
    assert!(table.contains("| a1 | 10.0.0.1:80 | up    |"), "{table}");

    // Stored in etcd's naming format; one written that way by hand is listed.
    let stored = server.ctl(&["get", "services/api/a1", "--print-value-only"]);
    assert_eq!(
        stored.trim(),
        r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"zone":"a"}}"#
    );
    server.ctl(&[
        "put",
        "services/api/go-1",
        r#"{"Op":0,"Addr":"10.0.0.2:80","Metadata":null}"#,
    ]);
    let listed = ctl_ok(&server, &["registry", "list", "api"]);
    assert!(listed.contains("go-1 10.0.0.2:80 up null 0\n"), "{listed}");

    // Heartbeats keep it past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ctl_ok(&server, &["registry", "list", "api"]).contains("a1 "));

    // Drained: still listed, marked, and the extra field is one Go's decoder ignores.
    assert_eq!(
        ctl_ok(&server, &["registry", "drain", "api", "a1"]),
        "draining services/api/a1\n"
    );
    assert!(ctl_ok(&server, &["registry", "list", "api"]).contains("a1 10.0.0.1:80 draining"));
    let drained = server.ctl(&["get", "services/api/a1", "--print-value-only"]);
    assert_eq!(
        drained.trim(),
        r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"zone":"a"},"State":"draining"}"#
    );

    // Deregistered by hand; an unknown instance is an error.
    assert_eq!(
        ctl_ok(&server, &["registry", "deregister", "api", "go-1"]),
        "deregistered services/api/go-1\n"
    );
    let missing = ctl_fails(&server, &["registry", "deregister", "api", "go-1"], None);
    assert_eq!(missing, "Error: services/api/go-1 is not registered\n");

    // Interrupted: the registration deregisters on its way out.
    let (status, out, _) = register.signal("INT");
    assert!(status.success(), "{out}");
    assert!(out.ends_with("deregistered services/api/a1\n"), "{out}");
    assert_eq!(ctl_ok(&server, &["registry", "list", "api"]), "");

    let seen = watch.stdout_containing("REMOVED a1").await;
    let kinds: Vec<String> = seen
        .lines()
        .map(|line| line.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        kinds,
        [
            "ADDED a1",
            "ADDED go-1",
            "UPDATED a1",
            "REMOVED go-1",
            "REMOVED a1"
        ],
        "{seen}"
    );
    watch.kill();
}

/// A registering process killed with SIGKILL sends nothing: its instance leaves when its lease
/// expires, and a watcher sees it leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_gone_within_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let observer = client(&server).await;
    let mut members = observer.watch_service("api").await.unwrap();
    within("the first membership", members.next())
        .await
        .unwrap()
        .unwrap();
    let register = Background::concordctl(
        &server.url(),
        &["registry", "register", "api", "a1", "10.0.0.1:80", "--ttl", "1"],
    );
    register.stdout_containing("registered").await;
    let added = within("the instance added", members.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&added.changes[..], [MembershipChange::Added(i)] if i.id == "a1"),
        "{added:?}"
    );

    register.kill9();
    let crashed = Instant::now();
    let removed = within("the instance removed", members.next())
        .await
        .unwrap()
        .unwrap();
    let gone_after = crashed.elapsed();
    assert_eq!(removed.changes, [MembershipChange::Removed { id: "a1".into() }]);
    assert!(removed.instances.is_empty());
    // The TTL (1 s) plus the lease clock's check and the revoke's commit.
    assert!(
        gone_after < Duration::from_millis(2500),
        "gone after {gone_after:?}"
    );
    eprintln!("measured: a crashed instance (TTL 1 s) left the watch after {gone_after:?}");
    assert!(observer.instances("api").await.unwrap().is_empty());
}

/// A registering process paused past its TTL loses its lease; when it runs again it registers
/// again by itself, on a new lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_registers_again_when_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST);
    let observer = client(&server).await;
    let register = Background::concordctl(
        &server.url(),
        &["registry", "register", "api", "a1", "10.0.0.1:80", "--ttl", "1"],
    );
    register.stdout_containing("registered").await;
    let first = observer.instances("api").await.unwrap();
    assert_eq!(first.len(), 1);

    register.send("STOP");
    until("the paused instance expires", async || {
        observer.instances("api").await.unwrap().is_empty()
    })
    .await;
    register.send("CONT");
    until("the instance registered again", async || {
        observer.instances("api").await.unwrap().len() == 1
    })
    .await;
    let again = observer.instances("api").await.unwrap();
    assert_ne!(again[0].lease, first[0].lease, "a new lease");
    assert_eq!(again[0].endpoint, first[0].endpoint);
    register.stderr_containing("registered again with lease").await;
    let (status, _, _) = register.signal("TERM");
    assert!(status.success());
    assert!(observer.instances("api").await.unwrap().is_empty());
}

/// A thousand instances of one service, on one lease: listed, and watched as they come and
/// as they go (all at once, when the lease is revoked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_are_listed_and_watched() {
    const INSTANCES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = client(&server).await;
    let mut members = client.watch_service("big").await.unwrap();
    within("the first membership", members.next())
        .await
        .unwrap()
        .unwrap();
    let lease = client.lease_grant(60).await.unwrap().id;
    let mut registry = RegistryClient::new(client.channel().await.unwrap());
    for i in 0..INSTANCES {
        let request = RegisterRequest {
            service: "big".into(),
            id: format!("i{i:04}"),
            addr: format!("10.0.{}.{}:80", i / 256, i % 256),
            metadata: format!(r#"{{"n":{i}}}"#),
            lease,
            ..Default::default()
        };
        registry.register(request).await.unwrap();
    }
    let listed = client.instances("big").await.unwrap();
    assert_eq!(listed.len(), INSTANCES);
    assert!(
        listed
            .iter()
            .enumerate()
            .all(|(i, instance)| instance.id == format!("i{i:04}"))
    );

    let mut seen = 0;
    while seen < INSTANCES {
        let membership = within("the registrations", members.next())
            .await
            .unwrap()
            .unwrap();
        for change in &membership.changes {
            assert!(matches!(change, MembershipChange::Added(_)), "{change:?}");
        }
        seen += membership.changes.len();
        assert_eq!(membership.instances.len(), seen);
    }
    assert_eq!(seen, INSTANCES);

    // A watch started now gets all of them at once.
    let mut late = RegistryClient::new(client.channel().await.unwrap())
        .watch(WatchRequest {
            service: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = late.message().await.unwrap().unwrap();
    assert!(first.reset);
    assert_eq!(first.instances.len(), INSTANCES);

    client.lease_revoke(lease).await.unwrap();
    let gone = within("the lease's revocation", members.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.changes.len(), INSTANCES);
    assert!(
        gone.changes
            .iter()
            .all(|c| matches!(c, MembershipChange::Removed { .. }))
    );
    assert!(gone.instances.is_empty());
    let gone = late.message().await.unwrap().unwrap();
    assert_eq!((gone.reset, gone.changes.len()), (false, INSTANCES));
}

/// Empty names, names with '/', bad metadata, bad TTLs and revisions, unknown leases and
/// oversized values: each refused with a clear error, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = client(&server).await;
    let mut registry = RegistryClient::new(client.channel().await.unwrap());
    let valid = RegisterRequest {
        service: "api".into(),
        id: "a1".into(),
        addr: "10.0.0.1:80".into(),
        ..Default::default()
    };
    // Without a lease, the server grants one of the default TTL for the caller to keep alive.
    let granted = registry.register(valid.clone()).await.unwrap().into_inner();
    assert!(granted.lease != 0 && granted.ttl == 10, "{granted:?}");
    let before = revision(&server);
    let leases_before = server.ctl(&["lease", "list"]);

    let refusals = [
        (
            RegisterRequest {
                service: String::new(),
                ..valid.clone()
            },
            "a service name must be non-empty and without '/'",
        ),
        (
            RegisterRequest {
                service: "a/b".into(),
                ..valid.clone()
            },
            "a service name must be non-empty and without '/'",
        ),
        (
            RegisterRequest {
                id: String::new(),
                ..valid.clone()
            },
            "an instance ID must be non-empty",
        ),
        (
            RegisterRequest {
                addr: String::new(),
                ..valid.clone()
            },
            "an instance's address must be non-empty",
        ),
        (
            RegisterRequest {
                metadata: "[1, 2]".into(),
                ..valid.clone()
            },
            "an instance's metadata must be a JSON object",
        ),
        (
            RegisterRequest {
                metadata: "{zone".into(),
                ..valid.clone()
            },
            "registry: metadata is not valid JSON",
        ),
        (
            RegisterRequest {
                ttl: -5,
                ..valid.clone()
            },
            "registry: a TTL must be positive",
        ),
        (
            RegisterRequest {
                prefix: "nodes".into(),
                ..valid.clone()
            },
            "a registry prefix must end with '/'",
        ),
    ];
    for (request, expected) in refusals {
        let status = registry.register(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert!(status.message().contains(expected), "{request:?}: {status:?}");
    }
    let unknown_lease = registry
        .register(RegisterRequest {
            lease: 12345,
            ..valid.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_lease.message(), "etcdserver: requested lease not found");
    let huge = registry
        .register(RegisterRequest {
            addr: "x".repeat(2 << 20),
            ..valid.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::ResourceExhausted, "{huge:?}");
    let negative = registry
        .watch(WatchRequest {
            service: "api".into(),
            start_revision: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), tonic::Code::InvalidArgument);
    let drain = registry
        .drain(DrainRequest {
            service: "api".into(),
            id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(drain.code(), tonic::Code::InvalidArgument);
    let list = registry
        .list(ListRequest {
            service: "a/b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(list.code(), tonic::Code::InvalidArgument);

    // concordctl says so on stderr, with a non-zero exit.
    let bad = ctl_fails(
        &server,
        &["registry", "register", "api", "a2", "h:1", "--metadata", "{zone"],
        None,
    );
    assert!(bad.contains("--metadata is not valid JSON"), "{bad}");

    assert_eq!(revision(&server), before, "nothing was written");
    assert_eq!(
        server.ctl(&["lease", "list"]),
        leases_before,
        "no lease was left behind"
    );
    assert_eq!(client.instances("api").await.unwrap().len(), 1);
}

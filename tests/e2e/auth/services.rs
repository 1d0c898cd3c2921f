//! Concord's own services with auth on, through `concordctl --user`: the registry, the config
//! center and pub/sub check the caller's permissions on the keys they touch.

use super::rbac;
use crate::harness::Server;
use crate::services::support::{Background, concordctl};

/// `concordctl` as `user` (None: without credentials): (success, stdout + stderr).
fn as_user(server: &Server, user: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut full = Vec::new();
    let flag;
    if let Some(user) = user {
        flag = format!("--user={user}");
        full.push(flag.as_str());
    }
    full.extend_from_slice(args);
    let out = concordctl(&server.url(), &full, Some("{\"max\": 3}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concordctl_acts_as_its_user_on_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    rbac(&server);
    for args in [
        &["role", "add", "billing", "--user=root:rootpw"][..],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "billing",
            "readwrite",
            "services/billing/",
            "--user=root:rootpw",
        ],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "billing",
            "readwrite",
            "config/values/billing/",
            "--user=root:rootpw",
        ],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "billing",
            "readwrite",
            "config/heads/billing/",
            "--user=root:rootpw",
        ],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "billing",
            "readwrite",
            "config/versions/billing/",
            "--user=root:rootpw",
        ],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "billing",
            "readwrite",
            "config/reports/billing/",
            "--user=root:rootpw",
        ],
        &[
            "role",
            "grant-permission",
            "billing",
            "readwrite",
            "config/namespaces/billing",
            "--user=root:rootpw",
        ],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "billing",
            "readwrite",
            "pubsub/orders/",
            "--user=root:rootpw",
        ],
        &[
            "role",
            "grant-permission",
            "billing",
            "readwrite",
            "pubsub/orders",
            "--user=root:rootpw",
        ],
        &["user", "grant-role", "alice", "billing", "--user=root:rootpw"],
    ] {
        server.ctl(args);
    }
    let alice = Some("alice:alicepw");
    let denied = "etcdserver: permission denied";

    // Registry: her service yes, another no, nobody nothing.
    let register = Background::concordctl(
        &server.url(),
        &[
            "--user=alice:alicepw",
            "registry",
            "register",
            "billing",
            "b-1",
            "10.0.0.7:80",
        ],
    );
    let registered = register.stdout_containing("\n").await;
    assert!(
        registered.starts_with("registered services/billing/b-1"),
        "{registered}"
    );
    let (ok, out) = as_user(&server, alice, &["registry", "list", "billing"]);
    assert!(ok && out.contains("b-1"), "{out}");
    let (ok, out) = as_user(&server, alice, &["registry", "list", "payments"]);
    assert!(!ok && out.contains(denied), "{out}");
    let (ok, out) = as_user(&server, None, &["registry", "list", "billing"]);
    assert!(!ok && out.contains("etcdserver: user name is empty"), "{out}");

    // Config: her namespace yes (its keys under config/values, heads, versions, reports and
    // namespaces), another no.
    let (ok, out) = as_user(
        &server,
        alice,
        &["config", "put", "billing", "limits", "--format", "json"],
    );
    assert!(ok, "{out}");
    let (ok, out) = as_user(&server, alice, &["config", "get", "billing", "limits"]);
    assert!(ok && out.contains("\"max\""), "{out}");
    let (ok, out) = as_user(
        &server,
        alice,
        &["config", "put", "payments", "limits", "--format", "json"],
    );
    assert!(!ok && out.contains(denied), "{out}");

    // Pub/sub: her topic (its state at pubsub/orders, its messages under pubsub/orders/) yes,
    // another no.
    let (ok, out) = as_user(&server, alice, &["pub", "orders", "order 7"]);
    assert!(ok, "{out}");
    let (ok, out) = as_user(&server, alice, &["pub", "refunds", "r 1"]);
    assert!(!ok && out.contains(denied), "{out}");

    // Bad flags are refused before anything is sent.
    let (ok, out) = as_user(&server, Some("alice"), &["registry", "list", "billing"]);
    assert!(!ok && out.contains("has no password"), "{out}");
    let (ok, out) = as_user(&server, Some("alice:wrong"), &["registry", "list", "billing"]);
    assert!(!ok && out.contains("authentication failed"), "{out}");
}

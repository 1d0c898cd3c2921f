//! The other services over the gateway: auth (tokens in `Authorization`), cluster,
//! maintenance, lock, Concord's own services under `/v1/`, and HTTPS.

use serde_json::json;

use super::curl::{Curl, b64, int, start, text};
use crate::tls::{Pki, clients::start as start_https};

/// etcd's curl walk-through of auth: users and roles, enable, authenticate, then the token in
/// `Authorization` decides; the same error texts and codes as gRPC.
#[test]
fn auth_over_the_gateway() {
    let (_dir, _server, curl) = start(&[]);
    curl.ok("/v3/auth/user/add", r#"{"name": "root", "password": "pass"}"#);
    curl.ok("/v3/auth/role/add", r#"{"name": "root"}"#);
    curl.ok("/v3/auth/user/grant", r#"{"user": "root", "role": "root"}"#);
    curl.ok("/v3/auth/user/add", r#"{"name": "alice", "password": "secret"}"#);
    curl.ok("/v3/auth/role/add", r#"{"name": "reader"}"#);
    curl.ok(
        "/v3/auth/role/grant",
        &json!({"name": "reader", "perm": {"permType": "READ", "key": b64("app/"), "range_end": b64("app0")}})
            .to_string(),
    );
    curl.ok("/v3/auth/user/grant", r#"{"user": "alice", "role": "reader"}"#);
    curl.ok("/v3/auth/enable", "{}");

    let anonymous = curl.post(
        "/v3/kv/put",
        &json!({"key": b64("app/x"), "value": b64("1")}).to_string(),
    );
    assert_eq!(
        (anonymous.status, anonymous.message()),
        (400, "etcdserver: user name is empty")
    );
    let wrong = curl.post("/v3/auth/authenticate", r#"{"name": "root", "password": "nope"}"#);
    assert_eq!(
        (wrong.status, wrong.message()),
        (
            400,
            "etcdserver: authentication failed, invalid user ID or password"
        )
    );
    let token = |name: &str, password: &str| {
        let answer = curl.ok(
            "/v3/auth/authenticate",
            &json!({"name": name, "password": password}).to_string(),
        );
        answer["token"].as_str().unwrap().to_string()
    };
    let root = curl.with_token(&token("root", "pass"));
    let alice = curl.with_token(&token("alice", "secret"));
    root.ok(
        "/v3/kv/put",
        &json!({"key": b64("app/x"), "value": b64("1")}).to_string(),
    );
    let got = alice.ok("/v3/kv/range", &json!({"key": b64("app/x")}).to_string());
    assert_eq!(text(&got["kvs"][0]["value"]), "1");
    let denied = alice.post(
        "/v3/kv/put",
        &json!({"key": b64("app/x"), "value": b64("2")}).to_string(),
    );
    assert_eq!(
        (denied.status, denied.json["code"].as_i64(), denied.message()),
        (403, Some(7), "etcdserver: permission denied")
    );
    // A watch without the right is canceled in the stream, which stays open (as etcd's).
    let watch_denied = alice.stream(
        "/v3/watch",
        &json!({"create_request": {"key": b64("other")}}).to_string(),
    );
    let canceled = watch_denied.result();
    assert_eq!(
        (&canceled["canceled"], canceled["cancel_reason"].as_str()),
        (&json!(true), Some("etcdserver: permission denied")),
        "{canceled}"
    );
    let bogus = curl
        .with_token("bogus")
        .post("/v3/kv/range", &json!({"key": b64("app/x")}).to_string());
    assert_eq!(
        (bogus.status, bogus.message()),
        (401, "etcdserver: invalid auth token")
    );
    let users = root.ok("/v3/auth/user/list", "{}");
    assert_eq!(users["users"], json!(["alice", "root"]));
    let role = root.ok("/v3/auth/role/get", r#"{"role": "reader"}"#);
    assert!(
        role["perm"][0].get("permType").is_none(),
        "READ is the default: {role}"
    );
    assert_eq!(text(&role["perm"][0]["key"]), "app/");
    assert_eq!(root.ok("/v3/auth/status", "{}")["enabled"], true);
    root.ok("/v3/auth/disable", "{}");
    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("free"), "value": b64("1")}).to_string(),
    );
}

/// Cluster, maintenance and lock calls answer with etcd's shapes.
#[test]
fn cluster_maintenance_and_lock() {
    let (_dir, server, curl) = start(&[]);
    let members = curl.ok("/v3/cluster/member/list", "{}");
    assert!(members["header"].get("revision").is_none(), "{members}");
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    let added = curl.ok(
        "/v3/cluster/member/add",
        r#"{"peerURLs": ["http://127.0.0.1:1"], "isLearner": true}"#,
    );
    assert_eq!(added["member"]["isLearner"], true);
    curl.ok(
        "/v3/cluster/member/remove",
        &json!({"ID": added["member"]["ID"]}).to_string(),
    );
    assert_eq!(
        curl.ok("/v3/cluster/member/list", "{}")["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("h"), "value": b64("1")}).to_string(),
    );
    let alarms = curl.ok("/v3/maintenance/alarm", "{}");
    assert!(alarms.get("alarms").is_none(), "no alarm: {alarms}");
    curl.ok("/v3/maintenance/defragment", "{}");
    let hash = curl.ok("/v3/maintenance/hash", "{}");
    assert!(hash["hash"].is_u64(), "a 32-bit integer is a number: {hash}");
    let hash_kv = curl.ok("/v3/maintenance/hashkv", "{}");
    assert!(hash_kv["hash"].is_u64(), "{hash_kv}");

    let lease = curl.ok("/v3/lease/grant", r#"{"TTL": 30}"#)["ID"].clone();
    let locked = curl.ok(
        "/v3/lock/lock",
        &json!({"name": b64("job"), "lease": lease}).to_string(),
    );
    let key = text(&locked["key"]);
    assert!(key.starts_with("job/"), "{key}");
    let out = server.etcdctl(&["get", &key, "-w", "json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"count\":1"));
    curl.ok("/v3/lock/unlock", &json!({"key": locked["key"]}).to_string());
    let gone = curl.ok("/v3/kv/range", &json!({"key": locked["key"]}).to_string());
    assert!(gone.get("kvs").is_none(), "{gone}");
}

/// The registry, the config center and pub/sub under `/v1/`, streams included.
#[test]
fn concord_services_under_v1() {
    let (_dir, _server, curl) = start(&[]);

    let watch = curl.stream("/v1/registry/watch", r#"{"service": "api"}"#);
    let first = watch.result();
    assert_eq!(first["reset"], true, "{first}");
    let registered = curl.ok(
        "/v1/registry/register",
        r#"{"service": "api", "id": "a1", "addr": "10.0.0.1:80", "ttl": "10"}"#,
    );
    assert!(int(&registered["lease"]) != 0, "{registered}");
    let change = watch.result();
    assert_eq!(change["changes"][0]["instance"]["id"], "a1", "{change}");
    let listed = curl.ok("/v1/registry/list", r#"{"service": "api"}"#);
    assert_eq!(listed["instances"][0]["addr"], "10.0.0.1:80");
    assert_eq!(
        curl.ok("/v1/registry/drain", r#"{"service": "api", "id": "a1"}"#)["drained"],
        true
    );
    assert_eq!(
        curl.ok("/v1/registry/deregister", r#"{"service": "api", "id": "a1"}"#)["deregistered"],
        true
    );

    let put = curl.ok(
        "/v1/config/put",
        r#"{"namespace": "prod", "key": "db", "value": "{\"pool\": 4}", "format": "json"}"#,
    );
    assert_eq!(put["version"]["version"], "1");
    let config_watch = curl.stream(
        "/v1/config/watch",
        r#"{"namespace": "prod", "key": "db", "start_revision": "1"}"#,
    );
    assert_eq!(config_watch.result()["versions"][0]["value"], "{\"pool\": 4}");
    let bad = curl.post(
        "/v1/config/put",
        r#"{"namespace": "prod", "key": "db", "value": "{not json", "format": "json"}"#,
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    curl.ok(
        "/v1/config/put",
        r#"{"namespace": "prod", "key": "db", "value": "{\"pool\": 8}", "format": "json", "if_version": "1"}"#,
    );
    assert_eq!(config_watch.result()["versions"][0]["version"], "2");
    let got = curl.ok("/v1/config/get", r#"{"namespace": "prod", "key": "db"}"#);
    assert_eq!(got["version"]["value"], "{\"pool\": 8}");
    let history = curl.ok("/v1/config/history", r#"{"namespace": "prod", "key": "db"}"#);
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);

    let published = curl.ok(
        "/v1/pubsub/publish",
        &json!({"topic": "news", "payload": b64("hello")}).to_string(),
    );
    let subscription = curl.stream(
        "/v1/pubsub/subscribe",
        &json!({"topic": "news", "start_revision": published["revision"]}).to_string(),
    );
    let delivered = loop {
        let result = subscription.result();
        if let Some(messages) = result["messages"].as_array().filter(|m| !m.is_empty()) {
            break messages[0].clone();
        }
    };
    assert_eq!(text(&delivered["payload"]), "hello");
    assert_eq!(delivered["revision"], published["revision"]);
    let unknown = curl.post("/v1/pubsub/nosuch", "{}");
    assert_eq!(unknown.status, 404);
}

/// The gateway over HTTPS, beside gRPC on the same port; a client certificate names the user
/// while auth is on, as it does for gRPC.
#[test]
fn the_gateway_serves_https_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = start_https(dir.path(), &pki, &["--client-cert-auth"]);
    let base = format!("https://{}", server.endpoint);
    let certified = |name: &str| {
        Curl::new(&base).with_args(&[
            "--cacert",
            &pki.path("ca.pem"),
            "--cert",
            &pki.path(&format!("{name}.pem")),
            "--key",
            &pki.path(&format!("{name}-key.pem")),
        ])
    };
    let as_root = certified("root");
    as_root.ok(
        "/v3/kv/put",
        &json!({"key": b64("tls"), "value": b64("yes")}).to_string(),
    );
    as_root.ok("/v3/auth/user/add", r#"{"name": "root", "password": "unused"}"#);
    as_root.ok("/v3/auth/role/add", r#"{"name": "root"}"#);
    as_root.ok("/v3/auth/user/grant", r#"{"user": "root", "role": "root"}"#);
    as_root.ok("/v3/auth/enable", "{}");
    let got = as_root.ok("/v3/kv/range", &json!({"key": b64("tls")}).to_string());
    assert_eq!(text(&got["kvs"][0]["value"]), "yes");
    let as_alice = certified("alice");
    let denied = as_alice.post("/v3/kv/range", &json!({"key": b64("tls")}).to_string());
    assert_eq!(
        (denied.status, denied.message()),
        (403, "etcdserver: permission denied")
    );
    let no_cert = Curl::new(&base).with_args(&["--cacert", &pki.path("ca.pem")]);
    let refused = no_cert.post("/v3/kv/range", "{}");
    assert_eq!(refused.status, 0, "no certificate, no answer: {refused:?}");
}

//! KV over the gateway: etcd's documented curl examples, txns, aliases, and bad input.

use serde_json::json;

use super::curl::{b64, int, start, text};

/// etcd's own gateway walk-through (put, get, prefix get, a txn in camelCase), then checked
/// with etcdctl: the gateway wrote to the same store.
#[test]
fn etcds_curl_examples_work() {
    let (_dir, server, curl) = start(&[]);
    let put = curl.ok("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#);
    let header = &put["header"];
    assert_eq!(int(&header["revision"]), 2);
    for field in ["cluster_id", "member_id", "raft_term"] {
        assert!(header[field].is_string(), "{field} as a string in {put}");
    }

    let got = curl.ok("/v3/kv/range", r#"{"key": "Zm9v"}"#);
    assert_eq!(
        got["kvs"],
        json!([{"key": "Zm9v", "create_revision": "2", "mod_revision": "2", "version": "1", "value": "YmFy"}])
    );
    assert_eq!(got["count"], "1");

    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("foo2"), "value": b64("v2")}).to_string(),
    );
    let prefixed = curl.ok("/v3/kv/range", r#"{"key": "Zm9v", "range_end": "Zm9w"}"#);
    assert_eq!(prefixed["count"], "2");

    let txn = curl.ok(
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmF6"}}]}"#,
    );
    assert_eq!(txn["succeeded"], true, "{txn}");
    assert_eq!(txn["responses"][0]["response_put"]["header"]["revision"], "4");
    let out = server.etcdctl(&["get", "foo", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "baz");

    let deleted = curl.ok("/v3/kv/deleterange", r#"{"key": "Zm9v", "prev_kv": true}"#);
    assert_eq!(deleted["deleted"], "1");
    assert_eq!(text(&deleted["prev_kvs"][0]["value"]), "baz");
}

/// A txn with compares on every target, both branches, and nested ranges; enums by name.
#[test]
fn txns_compare_and_answer_in_json() {
    let (_dir, _server, curl) = start(&[]);
    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("k"), "value": b64("v1")}).to_string(),
    );
    let failed = curl.ok(
        "/v3/kv/txn",
        &json!({
            "compare": [
                {"target": "VALUE", "result": "EQUAL", "key": b64("k"), "value": b64("other")},
                {"target": "VERSION", "result": "GREATER", "key": b64("k"), "version": "0"},
            ],
            "success": [{"request_put": {"key": b64("k"), "value": b64("won")}}],
            "failure": [
                {"request_range": {"key": b64("k"), "sort_order": "DESCEND", "sort_target": "MOD"}},
                {"request_delete_range": {"key": b64("k"), "prev_kv": true}},
            ],
        })
        .to_string(),
    );
    assert!(failed.get("succeeded").is_none(), "false is omitted: {failed}");
    let range = &failed["responses"][0]["response_range"];
    assert_eq!(text(&range["kvs"][0]["value"]), "v1");
    assert_eq!(failed["responses"][1]["response_delete_range"]["deleted"], "1");

    let lease = curl.ok("/v3/lease/grant", r#"{"TTL": 30}"#);
    let kept = curl.ok(
        "/v3/kv/txn",
        &json!({
            "compare": [{"target": "CREATE", "result": "EQUAL", "key": b64("k"), "create_revision": 0}],
            "success": [{"request_put": {"key": b64("k"), "value": b64("again"), "lease": lease["ID"]}}],
        })
        .to_string(),
    );
    assert_eq!(kept["succeeded"], true, "{kept}");
    let got = curl.ok("/v3/kv/range", &json!({"key": b64("k")}).to_string());
    assert_eq!(got["kvs"][0]["lease"], lease["ID"]);
}

/// `/v3beta/` and `/v3alpha/` reach the same methods; `GET /version` answers as etcd.
#[test]
fn older_prefixes_and_version() {
    let (_dir, server, curl) = start(&[]);
    curl.ok(
        "/v3beta/kv/put",
        &json!({"key": b64("a"), "value": b64("1")}).to_string(),
    );
    let got = curl.ok("/v3alpha/kv/range", &json!({"key": b64("a")}).to_string());
    assert_eq!(text(&got["kvs"][0]["value"]), "1");
    let version = curl.request("GET", "/version", "");
    assert_eq!(version.status, 200);
    assert_eq!(
        version.json,
        json!({"etcdserver": "3.5.0", "etcdcluster": "3.5.0"})
    );
    // Beside the gateway, gRPC clients are served on the same port.
    let out = server.etcdctl(&["get", "a", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

/// Bad input gets the gateway's error answer with the right status, and changes nothing.
#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let (_dir, _server, curl) = start(&["--max-request-bytes", "1024"]);
    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("k"), "value": b64("kept")}).to_string(),
    );
    let cases = [
        (r#"{"key": "Zm9v", "value": "YmFy""#, "EOF while parsing"),
        (r#"{"key": "!!", "value": "YmFy"}"#, "Invalid symbol"),
        (r#"{"key": "Zm9v", "vlaue": "YmFy"}"#, "unknown field `vlaue`"),
        (r#"{"key": 5}"#, "invalid type"),
        (r#"{"key": "Zm9v", "lease": "soon"}"#, "invalid"),
        (r#"[1, 2]"#, "invalid type"),
    ];
    for (body, says) in cases {
        let answer = curl.post("/v3/kv/put", body);
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.json["code"], 3, "{body}: {answer:?}");
        assert_eq!(answer.json["error"], answer.json["message"]);
        assert!(answer.message().contains(says), "{body}: {answer:?}");
    }
    // etcd's own errors, through the same service code as gRPC.
    let missing = curl.post("/v3/kv/put", r#"{"value": "YmFy"}"#);
    assert_eq!(
        (missing.status, missing.message()),
        (400, "etcdserver: key is not provided")
    );
    let large = curl.post(
        "/v3/kv/put",
        &json!({"key": b64("big"), "value": b64(&"x".repeat(2048))}).to_string(),
    );
    assert_eq!(
        (large.status, large.message()),
        (400, "etcdserver: request is too large")
    );
    let no_lease = curl.post("/v3/lease/revoke", r#"{"ID": "7"}"#);
    assert_eq!(
        (
            no_lease.status,
            no_lease.json["code"].as_i64(),
            no_lease.message()
        ),
        (404, Some(5), "etcdserver: requested lease not found")
    );
    let future = curl.post(
        "/v3/kv/range",
        &json!({"key": b64("k"), "revision": 99}).to_string(),
    );
    assert_eq!(
        (future.status, future.message()),
        (400, "etcdserver: mvcc: required revision is a future revision")
    );
    // Wrong method, unknown path.
    assert_eq!(curl.request("GET", "/v3/kv/range", "").status, 405);
    let unknown = curl.post("/v3/kv/nosuch", "{}");
    assert_eq!((unknown.status, unknown.json["code"].as_i64()), (404, Some(5)));

    let got = curl.ok("/v3/kv/range", &json!({"key": b64("k")}).to_string());
    assert_eq!(text(&got["kvs"][0]["value"]), "kept");
    assert_eq!(int(&got["header"]["revision"]), 2, "no refused request wrote");
}

/// Compaction and an empty body (the default request) on the maintenance calls.
#[test]
fn compaction_and_empty_bodies() {
    let (_dir, _server, curl) = start(&[]);
    for value in ["1", "2", "3"] {
        curl.ok(
            "/v3/kv/put",
            &json!({"key": b64("c"), "value": b64(value)}).to_string(),
        );
    }
    curl.ok("/v3/kv/compaction", r#"{"revision": "3", "physical": true}"#);
    let old = curl.post(
        "/v3/kv/range",
        &json!({"key": b64("c"), "revision": 2}).to_string(),
    );
    assert_eq!(
        (old.status, old.message()),
        (400, "etcdserver: mvcc: required revision has been compacted")
    );
    let status = curl.ok("/v3/maintenance/status", "");
    assert_eq!(status["version"], "3.5.0");
    assert_eq!(status["leader"], status["header"]["member_id"]);
}

/// Every unary path reaches its gRPC method: an empty request gets the method's own answer or
/// error, never "no such method" (a misspelt method name in the gateway's table would get it).
#[test]
fn every_unary_path_reaches_its_method() {
    let (_dir, _server, curl) = start(&[]);
    let etcd = [
        "kv/range",
        "kv/put",
        "kv/deleterange",
        "kv/txn",
        "kv/compaction",
        "lease/grant",
        "lease/revoke",
        "kv/lease/revoke",
        "lease/timetolive",
        "kv/lease/timetolive",
        "lease/leases",
        "kv/lease/leases",
        "cluster/member/add",
        "cluster/member/remove",
        "cluster/member/update",
        "cluster/member/list",
        "cluster/member/promote",
        "maintenance/alarm",
        "maintenance/status",
        "maintenance/defragment",
        "maintenance/hash",
        "maintenance/hashkv",
        "maintenance/transfer-leadership",
        "maintenance/downgrade",
        "auth/enable",
        "auth/disable",
        "auth/status",
        "auth/authenticate",
        "auth/user/add",
        "auth/user/get",
        "auth/user/list",
        "auth/user/delete",
        "auth/user/changepw",
        "auth/user/grant",
        "auth/user/revoke",
        "auth/role/add",
        "auth/role/get",
        "auth/role/list",
        "auth/role/delete",
        "auth/role/grant",
        "auth/role/revoke",
        "lock/unlock",
        "election/proclaim",
        "election/leader",
        "election/resign",
    ];
    // Lock and Campaign with an empty request wait for one another (both take the prefix "/"
    // with a new 60 s lease): services.rs and streams.rs drive them with real names.
    let ours = [
        "registry/register",
        "registry/deregister",
        "registry/drain",
        "registry/list",
        "config/put",
        "config/get",
        "config/history",
        "config/rollback",
        "config/set-schema",
        "config/get-schema",
        "config/report",
        "config/status",
        "pubsub/publish",
        "pubsub/set-retention",
        "pubsub/topic-status",
    ];
    let paths = etcd
        .iter()
        .flat_map(|path| ["/v3", "/v3beta", "/v3alpha"].map(|prefix| format!("{prefix}/{path}")))
        .chain(ours.iter().map(|path| format!("/v1/{path}")));
    for path in paths {
        let answer = curl.post(&path, "{}");
        assert!(answer.json.is_object(), "POST {path}: {answer:?}");
        // tonic's answer for a method it does not know: UNIMPLEMENTED with no message.
        let unknown_method = answer.json["code"] == 12 && answer.message().is_empty();
        assert!(!unknown_method, "POST {path}: {answer:?}");
        assert_ne!(answer.message(), "gateway: no method at this path", "POST {path}");
    }
}

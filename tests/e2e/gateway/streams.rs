//! Streaming calls over the gateway: watch, lease keepalive, election observe, snapshot.

use std::time::Duration;

use serde_json::json;

use super::curl::{b64, int, start, text};
use crate::harness::{Server, wait_until};

/// The server's `etcd_debugging_mvcc_watcher_total`.
fn watchers(server: &Server) -> i64 {
    let (_, metrics) = server.http_get("/metrics").expect("/metrics answers");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .expect("the watcher gauge") as i64
}

/// A watch streams its creation and every event as `{"result": ...}` lines, stays open after
/// the request body ends, and goes when the client closes the connection.
#[test]
fn a_watch_streams_events_until_the_client_goes() {
    let (_dir, server, curl) = start(&[]);
    let watch = curl.stream(
        "/v3/watch",
        &json!({"create_request": {"key": b64("foo"), "prev_kv": true}}).to_string(),
    );
    let created = watch.result();
    assert_eq!(created["created"], true, "{created}");
    assert!(
        created.get("watch_id").is_none(),
        "the first watch is 0, omitted: {created}"
    );

    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("foo"), "value": b64("bar")}).to_string(),
    );
    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("foo"), "value": b64("baz")}).to_string(),
    );
    curl.ok("/v3/kv/deleterange", &json!({"key": b64("foo")}).to_string());
    let put = watch.result();
    let event = &put["events"][0];
    assert!(
        event.get("type").is_none(),
        "PUT is the default, omitted: {event}"
    );
    assert_eq!(text(&event["kv"]["value"]), "bar");
    let second = watch.result();
    assert_eq!(text(&second["events"][0]["prev_kv"]["value"]), "bar");
    let deleted = watch.result();
    assert_eq!(deleted["events"][0]["type"], "DELETE");
    assert_eq!(int(&deleted["header"]["revision"]), 4);

    assert_eq!(watchers(&server), 1);
    drop(watch);
    wait_until("the closed watch is gone", Duration::from_secs(10), || {
        watchers(&server) == 0
    });
}

/// A watch from history; then a create and its cancel sent in one body.
#[test]
fn a_watch_body_may_create_and_cancel() {
    let (_dir, server, curl) = start(&[]);
    for value in ["1", "2"] {
        curl.ok(
            "/v3/kv/put",
            &json!({"key": b64("h/a"), "value": b64(value)}).to_string(),
        );
    }
    let history = curl.stream(
        "/v3/watch",
        &json!({"create_request": {"key": b64("h/"), "range_end": b64("h0"), "start_revision": 2}})
            .to_string(),
    );
    assert_eq!(history.result()["created"], true);
    let mut values = Vec::new();
    while values.len() < 2 {
        let events = history.result()["events"].clone();
        values.extend(events.as_array().unwrap().iter().map(|e| text(&e["kv"]["value"])));
    }
    assert_eq!(values, ["1", "2"], "history from revision 2");
    drop(history);

    let body = format!(
        "{}\n{}",
        json!({"create_request": {"key": b64("h/"), "range_end": b64("h0")}}),
        json!({"cancel_request": {"watch_id": 0}})
    );
    let canceled = curl.stream("/v3/watch", &body);
    assert_eq!(canceled.result()["created"], true);
    let cancel = canceled.result();
    assert_eq!(cancel["canceled"], true, "{cancel}");
    wait_until("the watches are gone", Duration::from_secs(10), || {
        watchers(&server) == 0
    });
    let refused = curl.post("/v3/watch", r#"{"create_request": {"key": 5}}"#);
    assert_eq!(refused.status, 400, "{refused:?}");
}

/// Keepalives over the gateway refresh the lease; the stream ends with the request body.
#[test]
fn lease_keepalive_refreshes_and_ends_with_the_body() {
    let (_dir, _server, curl) = start(&[]);
    let granted = curl.ok("/v3/lease/grant", r#"{"TTL": "4"}"#);
    let id = granted["ID"].as_str().unwrap().to_string();
    curl.ok(
        "/v3/kv/put",
        &json!({"key": b64("leased"), "value": b64("v"), "lease": id}).to_string(),
    );
    // Keep it alive past its TTL, twice per round, and check it never runs out.
    for _ in 0..3 {
        let mut alive = curl.stream(
            "/v3/lease/keepalive",
            &format!("{}{}", json!({"ID": id}), json!({"ID": id})),
        );
        for _ in 0..2 {
            let answer = alive.result();
            assert_eq!(
                (answer["ID"].as_str(), int(&answer["TTL"])),
                (Some(id.as_str()), 4)
            );
        }
        assert!(
            alive.ends_within(Duration::from_secs(5)),
            "the stream ends with the body"
        );
        let ttl = curl.ok(
            "/v3/lease/timetolive",
            &json!({"ID": id, "keys": true}).to_string(),
        );
        assert!(int(&ttl["TTL"]) >= 3, "refreshed: {ttl}");
        assert_eq!(text(&ttl["keys"][0]), "leased");
        std::thread::sleep(Duration::from_millis(1500));
    }
    let leases = curl.ok("/v3/kv/lease/leases", "{}");
    assert_eq!(leases["leases"], json!([{"ID": id}]));
    let unknown = curl.stream("/v3/lease/keepalive", r#"{"ID": "123"}"#);
    let answer = unknown.result();
    assert!(
        answer.get("TTL").is_none(),
        "an unknown lease answers TTL 0: {answer}"
    );
    curl.ok("/v3/kv/lease/revoke", &json!({"ID": id}).to_string());
    let gone = curl.ok("/v3/kv/range", &json!({"key": b64("leased")}).to_string());
    assert!(gone.get("kvs").is_none(), "{gone}");
}

/// Observe streams each new leader; a snapshot streams the database in base64 blobs that
/// make a file `concord snapshot status` accepts.
#[test]
fn observe_and_snapshot_stream() {
    let (dir, _server, curl) = start(&[]);
    let lease = curl.ok("/v3/lease/grant", r#"{"TTL": 30}"#)["ID"].clone();
    let name = b64("jobs");
    let first = curl.ok(
        "/v3/election/campaign",
        &json!({"name": name, "lease": lease, "value": b64("one")}).to_string(),
    );
    let observe = curl.stream("/v3/election/observe", &json!({"name": name}).to_string());
    assert_eq!(text(&observe.result()["kv"]["value"]), "one");
    curl.ok(
        "/v3/election/proclaim",
        &json!({"leader": first["leader"], "value": b64("two")}).to_string(),
    );
    assert_eq!(text(&observe.result()["kv"]["value"]), "two");
    let leader = curl.ok("/v3/election/leader", &json!({"name": name}).to_string());
    assert_eq!(text(&leader["kv"]["value"]), "two");
    curl.ok(
        "/v3/election/resign",
        &json!({"leader": first["leader"]}).to_string(),
    );
    let none = curl.post("/v3/election/leader", &json!({"name": name}).to_string());
    assert_eq!(none.message(), "election: no leader");

    let snapshot = curl.stream("/v3/maintenance/snapshot", "{}");
    let mut file = Vec::new();
    for part in snapshot.results_to_the_end() {
        let blob = part["blob"].as_str().unwrap_or_default();
        file.extend(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, blob).unwrap());
    }
    let path = dir.path().join("backup.db");
    std::fs::write(&path, file).unwrap();
    let status = crate::maintenance::backup::status(&path);
    let current = curl.ok("/v3/kv/range", r#"{"key": "AA==", "count_only": true}"#);
    assert_eq!(
        status["revision"].as_i64(),
        Some(int(&current["header"]["revision"]))
    );
}

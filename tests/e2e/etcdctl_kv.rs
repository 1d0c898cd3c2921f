//! The README's etcdctl walk-through, output compared with what etcd 3.4 prints.

use serde_json::Value;

use crate::harness::Server;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn put_get_range_prefix_limit_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.ctl(&["put", "foo", "bar"]), "OK\n");
    for (k, v) in [("foo1", "bar1"), ("foo2", "bar2"), ("foo3", "bar3")] {
        assert_eq!(server.ctl(&["put", k, v]), "OK\n");
    }
    assert_eq!(lines(&server.ctl(&["get", "foo"])), ["foo", "bar"]);
    assert_eq!(server.ctl(&["get", "foo", "--print-value-only"]), "bar\n");
    assert_eq!(server.ctl(&["get", "foo", "--keys-only"]), "foo\n\n");
    assert_eq!(
        lines(&server.ctl(&["get", "foo", "foo3"])),
        ["foo", "bar", "foo1", "bar1", "foo2", "bar2"]
    );
    assert_eq!(
        lines(&server.ctl(&["get", "--prefix", "foo"])),
        ["foo", "bar", "foo1", "bar1", "foo2", "bar2", "foo3", "bar3"]
    );
    assert_eq!(
        lines(&server.ctl(&["get", "--prefix", "foo", "--limit=2"])),
        ["foo", "bar", "foo1", "bar1"]
    );
    assert_eq!(
        lines(&server.ctl(&[
            "get",
            "",
            "--prefix",
            "--keys-only",
            "--sort-by=MODIFY",
            "--order=DESCEND"
        ]))
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>(),
        ["foo3", "foo2", "foo1", "foo"]
    );
    assert_eq!(
        lines(&server.ctl(&["get", "foo", "--from-key", "--keys-only"]))
            .into_iter()
            .filter(|l| !l.is_empty())
            .count(),
        4
    );
    assert_eq!(server.ctl(&["del", "foo1"]), "1\n");
    assert_eq!(server.ctl(&["del", "nosuch"]), "0\n");
    assert_eq!(server.ctl(&["del", "--prefix", "foo"]), "3\n");
    assert_eq!(server.ctl(&["get", "", "--prefix"]), "");
}

#[test]
fn json_output_carries_revisions_versions_and_header() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.ctl(&["put", "foo", "bar"]);
    server.ctl(&["put", "foo", "bar_new"]);
    let out = json(&server.ctl(&["get", "foo", "-w", "json"]));
    let header = &out["header"];
    // etcd's IDs for the default peer URL and token: member 8e9e05c52164694d, cluster cdf818194e3a8c32.
    assert_eq!(header["cluster_id"].as_u64(), Some(0xcdf818194e3a8c32));
    assert_eq!(header["member_id"].as_u64(), Some(0x8e9e05c52164694d));
    assert_eq!(header["revision"], 3);
    assert!(header["raft_term"].as_u64().unwrap() >= 1);
    let kv = &out["kvs"][0];
    assert_eq!(kv["key"], "Zm9v"); // base64("foo")
    assert_eq!(kv["value"], "YmFyX25ldw=="); // base64("bar_new")
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 3);
    assert_eq!(kv["version"], 2);
    assert_eq!(out["count"], 1);

    // An empty result has no kvs and no count, as etcd prints it.
    let none = json(&server.ctl(&["get", "nosuchkey", "-w", "json"]));
    assert!(none.get("kvs").is_none());
    assert_eq!(none["header"]["revision"], 3);

    let prev = server.ctl(&["put", "foo", "third", "--prev-kv"]);
    assert_eq!(lines(&prev), ["OK", "foo", "bar_new"]);
}

#[test]
fn history_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for v in ["1", "2", "3"] {
        server.ctl(&["put", "a", v]);
    }
    // Revisions 2, 3, 4 hold a=1, a=2, a=3.
    assert_eq!(lines(&server.ctl(&["get", "a", "--rev=2"])), ["a", "1"]);
    assert_eq!(lines(&server.ctl(&["get", "a", "--rev=3"])), ["a", "2"]);
    assert_eq!(server.ctl(&["compact", "3"]), "compacted revision 3\n");
    let err = server.ctl_err(&["get", "a", "--rev=2"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    assert_eq!(lines(&server.ctl(&["get", "a", "--rev=3"])), ["a", "2"]);
    let err = server.ctl_err(&["get", "a", "--rev=100"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
    let err = server.ctl_err(&["compact", "2"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    let err = server.ctl_err(&["compact", "100"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
    assert_eq!(lines(&server.ctl(&["get", "a"])), ["a", "3"]);
}

#[test]
fn txn_compare_and_swap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.ctl(&["put", "k1", "v1"]);
    let out = server.etcdctl_with_stdin(
        &["txn", "--interactive=false"],
        Some("value(\"k1\") = \"v1\"\n\nput k1 swapped\nput k2 new\n\nput k3 never\n\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n\nOK\n");
    assert_eq!(lines(&server.ctl(&["get", "k1"])), ["k1", "swapped"]);
    // One txn is one revision: k1 and k2 share mod_revision 3.
    let k2 = json(&server.ctl(&["get", "k2", "-w", "json"]));
    assert_eq!(k2["kvs"][0]["mod_revision"], 3);
    let out = server.etcdctl_with_stdin(
        &["txn", "--interactive=false"],
        Some("value(\"k1\") = \"v1\"\n\nput k1 nope\n\nget k2\n\n"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FAILURE\n\nk2\nnew\n");
    let err = server.etcdctl_with_stdin(
        &["txn", "--interactive=false"],
        Some("\nput dup a\nput dup b\n\n\n"),
    );
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("etcdserver: duplicate key given in txn request"));
    assert_eq!(server.ctl(&["get", "dup"]), "");
}

#[test]
fn endpoint_health_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let out = server.etcdctl(&["endpoint", "health"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("is healthy: successfully committed proposal"),
        "{text}"
    );
    server.ctl(&["put", "x", "y"]);
    let status = json(&server.ctl(&["endpoint", "status", "-w", "json"]));
    let s = &status[0]["Status"];
    assert_eq!(s["leader"].as_u64(), Some(0x8e9e05c52164694d));
    assert_eq!(s["header"]["revision"], 2);
    assert!(s["dbSize"].as_i64().unwrap() > 0);
    assert!(s["raftIndex"].as_u64().unwrap() >= 2);
    assert_eq!(s["raftAppliedIndex"], s["raftIndex"]);
    let simple = server.ctl(&["endpoint", "status"]);
    assert!(simple.contains("8e9e05c52164694d, 3.5.0"), "{simple}");
    let table = server.ctl(&["endpoint", "status", "-w", "table"]);
    let row = table
        .lines()
        .find(|l| l.contains(&server.endpoint))
        .unwrap_or_else(|| panic!("no row for {}: {table}", server.endpoint));
    let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    // ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX
    assert_eq!(cells[1..3], ["8e9e05c52164694d", "3.5.0"], "{table}");
    assert_eq!(cells[4..6], ["true", "false"], "{table}");
    assert_eq!(
        cells[7], cells[8],
        "applied index equals raft index when idle: {table}"
    );
    let (code, body) = server.http_get("/health").unwrap();
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
}

//! `etcdctl lease ...` and `etcdctl put --lease` print what etcd 3.4's etcdctl prints
//! (expected outputs captured from etcd 3.4.23 running the same commands).

use serde_json::{Value, json};

use super::{granted, remaining};
use crate::harness::Server;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// etcdctl's rendering of a lease ID.
fn hex(id: i64) -> String {
    format!("{id:016x}")
}

/// Runs an etcdctl command that must fail: its exit code and the last line of its stderr (for
/// some errors etcdctl logs a client retry warning first, then `Error: ...`).
fn fails(server: &Server, args: &[&str]) -> (i32, String) {
    let out = server.etcdctl(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "etcdctl {args:?} should fail but printed {stdout}"
    );
    assert_eq!(stdout, "", "etcdctl {args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    (out.status.code().expect("exit code"), last)
}

#[test]
fn etcdctl_lease_commands_print_what_etcd_prints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let id = granted(&server.ctl(&["lease", "grant", "30"]), 30);
    // etcd's lease IDs start with the low 16 bits of the member ID (8e9e05c52164694d).
    assert!(id.starts_with("694d"), "{id}");
    let lease = format!("--lease={id}");
    assert_eq!(server.ctl(&["put", "a", "1", &lease]), "OK\n");
    assert_eq!(server.ctl(&["put", "b", "2", &lease]), "OK\n");

    let ttl = server.ctl(&["lease", "timetolive", &id]);
    let left = remaining(&ttl);
    assert!((28..=29).contains(&left), "{ttl}");
    assert_eq!(
        ttl,
        format!("lease {id} granted with TTL(30s), remaining({left}s)\n")
    );
    let ttl = server.ctl(&["lease", "timetolive", "--keys", &id]);
    let left = remaining(&ttl);
    assert!((28..=29).contains(&left), "{ttl}");
    assert_eq!(
        ttl,
        format!("lease {id} granted with TTL(30s), remaining({left}s), attached keys([a b])\n")
    );
    let ttl = json(&server.ctl(&["lease", "timetolive", "--keys", &id, "-w", "json"]));
    let decimal = i64::from_str_radix(&id, 16).unwrap();
    assert_eq!(ttl["id"], decimal);
    assert_eq!(ttl["granted-ttl"], 30);
    assert!((28..=29).contains(&ttl["ttl"].as_i64().unwrap()), "{ttl}");
    assert_eq!(ttl["keys"], json!(["YQ==", "Yg=="])); // base64 "a", "b"
    assert_eq!(ttl["revision"], 3);

    assert_eq!(
        server.ctl(&["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(30)\n")
    );
    let kept = json(&server.ctl(&["lease", "keep-alive", "--once", &id, "-w", "json"]));
    assert_eq!((&kept["ID"], &kept["TTL"]), (&json!(decimal), &json!(30)));

    // A grant is no revision; JSON carries the header inline, as etcdctl flattens it.
    let grant = json(&server.ctl(&["lease", "grant", "10", "-w", "json"]));
    assert_eq!(grant["TTL"], 10);
    assert_eq!(grant["Error"], "");
    assert_eq!(grant["revision"], 3);
    assert_eq!(grant["member_id"].as_u64(), Some(0x8e9e05c52164694d));
    assert_eq!(grant["cluster_id"].as_u64(), Some(0xcdf818194e3a8c32));
    let second = hex(grant["ID"].as_i64().unwrap());
    assert!(second > id, "server-chosen IDs increase: {id} then {second}");

    assert_eq!(
        server.ctl(&["lease", "list"]),
        format!("found 2 leases\n{id}\n{second}\n")
    );
    let list = json(&server.ctl(&["lease", "list", "-w", "json"]));
    assert_eq!(
        list["leases"],
        json!([{"id": decimal}, {"id": i64::from_str_radix(&second, 16).unwrap()}])
    );

    assert_eq!(
        server.ctl(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(server.ctl(&["get", "", "--prefix"]), "", "revoke deletes a and b");
    assert_eq!(
        server.ctl(&["lease", "timetolive", "--keys", &id]),
        format!("lease {id} already expired\n")
    );
    let gone = json(&server.ctl(&["lease", "timetolive", &id, "-w", "json"]));
    assert_eq!(
        (&gone["ttl"], &gone["granted-ttl"], &gone["keys"]),
        (&json!(-1), &json!(0), &Value::Null)
    );
    assert_eq!(
        server.ctl(&["lease", "timetolive", "1234"]),
        "lease 0000000000001234 already expired\n"
    );
    assert_eq!(
        server.ctl(&["lease", "list"]),
        format!("found 1 leases\n{second}\n")
    );

    // Errors, with etcd's exit codes.
    let not_found = "Error: etcdserver: requested lease not found";
    assert_eq!(fails(&server, &["put", "x", "y", &lease]), (1, not_found.into()));
    assert_eq!(
        fails(&server, &["put", "x", "y", "--lease=1234"]),
        (1, not_found.into())
    );
    assert_eq!(
        fails(&server, &["lease", "revoke", &id]),
        (
            1,
            "Error: failed to revoke lease (etcdserver: requested lease not found)".into()
        )
    );
    // etcdctl turns a keepalive answered with TTL 0 into this error itself.
    assert_eq!(
        fails(&server, &["lease", "keep-alive", "--once", &id]),
        (2, not_found.into())
    );
    assert_eq!(
        fails(&server, &["lease", "grant", "9000000001"]),
        (
            1,
            "Error: failed to grant lease (etcdserver: too large lease TTL)".into()
        )
    );
    assert_eq!(server.ctl(&["get", "x"]), "", "failed puts wrote nothing");

    // The longest TTL is accepted; shorter than the minimum is raised to it.
    granted(&server.ctl(&["lease", "grant", "9000000000"]), 9_000_000_000);
    let short = granted(&server.ctl(&["lease", "grant", "1"]), 2);
    let ttl = server.ctl(&["lease", "timetolive", &short]);
    assert!(
        ttl.starts_with(&format!("lease {short} granted with TTL(2s), remaining(")),
        "{ttl}"
    );
}

#[test]
fn etcdctl_put_moves_keys_between_leases() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let first = granted(&server.ctl(&["lease", "grant", "60"]), 60);
    let second = granted(&server.ctl(&["lease", "grant", "60"]), 60);
    let keys = |id: &str| {
        let out = server.ctl(&["lease", "timetolive", "--keys", id]);
        out.split("attached keys(")
            .nth(1)
            .unwrap_or_else(|| panic!("{out}"))
            .trim_end()
            .to_string()
    };
    server.ctl(&["put", "k", "v1", &format!("--lease={first}")]);
    server.ctl(&["put", "other", "o", &format!("--lease={first}")]);
    server.ctl(&["put", "k", "v2", &format!("--lease={second}")]);
    assert_eq!((keys(&first), keys(&second)), ("[other])".into(), "[k])".into()));
    // --ignore-lease keeps the key's lease; a plain put detaches it.
    server.ctl(&["put", "k", "v3", "--ignore-lease"]);
    assert_eq!(keys(&second), "[k])");
    let k = json(&server.ctl(&["get", "k", "-w", "json"]));
    assert_eq!(k["kvs"][0]["lease"], i64::from_str_radix(&second, 16).unwrap());
    assert_eq!(k["kvs"][0]["value"], "djM="); // base64 "v3"
    // --ignore-lease on a key that does not exist fails, as in etcd.
    let (code, err) = fails(&server, &["put", "nosuch", "v", "--ignore-lease"]);
    assert_eq!((code, err.as_str()), (1, "Error: etcdserver: key not found"));

    // Revoking the first lease leaves k, which moved away.
    server.ctl(&["lease", "revoke", &first]);
    assert_eq!(server.ctl(&["get", "", "--prefix", "--keys-only"]), "k\n\n");
    server.ctl(&["put", "k", "v4"]);
    assert_eq!(keys(&second), "[])");
    server.ctl(&["lease", "revoke", &second]);
    assert_eq!(server.ctl(&["get", "k", "--print-value-only"]), "v4\n");

    // In a txn: a put naming a missing lease fails the whole txn; --ignore-lease works there too.
    let third = granted(&server.ctl(&["lease", "grant", "60"]), 60);
    server.ctl(&["put", "t", "v", &format!("--lease={third}")]);
    let out = server.etcdctl_with_stdin(
        &["txn", "--interactive=false"],
        Some("\nput t2 x\nput u v --lease=1234\n\n\n"),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().last(),
        Some("Error: etcdserver: requested lease not found"),
        "{stderr}"
    );
    assert_eq!(
        server.ctl(&["get", "t2"]),
        "",
        "nothing of the failed txn is applied"
    );
    let out = server.etcdctl_with_stdin(
        &["txn", "--interactive=false"],
        Some("\nput t w --ignore-lease\nput t2 x\n\n\n"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n\nOK\n");
    assert_eq!(keys(&third), "[t])");
}

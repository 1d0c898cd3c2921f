//! The same JSON requests against etcd 3.4's gateway and Concord's, compared answer by answer
//! after normalising what must differ (ids, terms, tokens, remaining TTLs).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::curl::{Curl, b64};
use crate::cluster::harness::free_ports;
use crate::harness::{Server, http_get, wait_until};

/// A real etcd (Debian's etcd-server, 3.4) on ports of its own.
struct Etcd {
    child: Child,
    url: String,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let ports = free_ports(2);
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let child = Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd 3.4 runs (scripts/install-deps.sh --with-etcd installs it)");
        let endpoint = url.trim_start_matches("http://").to_string();
        wait_until("etcd is healthy", Duration::from_secs(30), || {
            http_get(&endpoint, "/health").is_some_and(|(status, _)| status == 200)
        });
        Etcd { child, url }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fields whose values differ between any two clusters (ids, terms, tokens), replaced.
const NORMALISED: [&str; 9] = [
    "cluster_id",
    "member_id",
    "raft_term",
    "ID",
    "lease",
    "token",
    "peerURLs",
    "clientURLs",
    "leader",
];

/// `value` with what must differ replaced: [`NORMALISED`] fields, a lease's remaining TTL, and
/// the lease id that lock and election keys end with.
fn normalise(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let remaining_ttl = fields.contains_key("grantedTTL");
            let normalised = fields.iter().map(|(name, field)| {
                let field = if NORMALISED.contains(&name.as_str()) || (remaining_ttl && name == "TTL") {
                    json!("<varies>")
                } else if name == "key" {
                    without_lease_suffix(field)
                } else {
                    normalise(field)
                };
                (name.clone(), field)
            });
            Value::Object(normalised.collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// A base64 key `NAME/<lease id in hex>` (a lock's or a candidate's) as `NAME/<lease>`.
fn without_lease_suffix(key: &Value) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    let Some(text) = key
        .as_str()
        .and_then(|key| engine.decode(key).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
    else {
        return key.clone();
    };
    match text.rsplit_once('/') {
        Some((name, id)) if id.len() >= 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            json!(format!("{name}/<lease>"))
        }
        _ => key.clone(),
    }
}

/// One step of the scenario: a path, a body, and whether only the status and the gRPC code
/// are compared (decoding errors: Go's texts and serde's differ).
struct Step {
    path: &'static str,
    body: String,
    codes_only: bool,
}

fn step(path: &'static str, body: Value) -> Step {
    Step {
        path,
        body: body.to_string(),
        codes_only: false,
    }
}

fn malformed(path: &'static str, body: &str) -> Step {
    Step {
        path,
        body: body.to_string(),
        codes_only: true,
    }
}

/// KV, txn, lease, lock, election and error steps; run twice (the token is read between).
fn scenario() -> Vec<Step> {
    vec![
        step("/v3/kv/put", json!({"key": b64("foo"), "value": b64("bar")})),
        step("/v3/kv/range", json!({"key": b64("foo")})),
        step(
            "/v3/kv/put",
            json!({"key": b64("foo2"), "value": b64("bar2"), "prev_kv": true}),
        ),
        step(
            "/v3/kv/put",
            json!({"key": b64("foo2"), "value": b64("bar3"), "prev_kv": true}),
        ),
        step(
            "/v3/kv/range",
            json!({"key": b64("foo"), "range_end": b64("fop"), "limit": 1, "sort_order": "DESCEND", "sort_target": "KEY"}),
        ),
        step(
            "/v3/kv/range",
            json!({"key": b64("f"), "range_end": b64("g"), "keys_only": true}),
        ),
        step(
            "/v3/kv/range",
            json!({"key": b64("f"), "range_end": b64("g"), "count_only": true}),
        ),
        step("/v3/kv/range", json!({"key": b64("foo"), "revision": "2"})),
        step(
            "/v3/kv/txn",
            json!({"compare": [{"target": "CREATE", "key": b64("foo"), "createRevision": "2"}],
                   "success": [{"requestPut": {"key": b64("foo"), "value": b64("baz")}}]}),
        ),
        step(
            "/v3/kv/txn",
            json!({"compare": [{"target": "VALUE", "result": "EQUAL", "key": b64("foo"), "value": b64("nope")}],
                   "success": [{"request_put": {"key": b64("foo"), "value": b64("never")}}],
                   "failure": [{"request_range": {"key": b64("foo")}},
                               {"request_delete_range": {"key": b64("foo2"), "prev_kv": true}}]}),
        ),
        step(
            "/v3/kv/txn",
            json!({"compare": [{"target": "MOD", "result": "LESS", "key": b64("foo"), "mod_revision": "100"}],
                   "success": [{"request_txn": {"success": [{"request_put": {"key": b64("n"), "value": b64("1")}}]}}]}),
        ),
        step("/v3/kv/deleterange", json!({"key": b64("missing")})),
        step("/v3/kv/deleterange", json!({"key": b64("n"), "prev_kv": true})),
        step("/v3/lease/grant", json!({"TTL": 60})),
        step("/v3/lease/grant", json!({"TTL": "-5"})),
        step(
            "/v3/kv/put",
            json!({"key": b64("leased"), "value": b64("v"), "lease": "999"}),
        ),
        step("/v3/kv/range", json!({})),
        step("/v3/kv/put", json!({"value": b64("v")})),
        step("/v3/kv/range", json!({"key": b64("foo"), "revision": "99"})),
        step("/v3/kv/compaction", json!({"revision": "3"})),
        step("/v3/kv/range", json!({"key": b64("foo"), "revision": "2"})),
        step("/v3/kv/compaction", json!({"revision": "2"})),
        step("/v3/kv/compaction", json!({"revision": "99"})),
        step("/v3/lease/revoke", json!({"ID": "999"})),
        step("/v3/lease/timetolive", json!({"ID": "999"})),
        step("/v3/election/leader", json!({"name": b64("nobody")})),
        step("/v3/cluster/member/list", json!({})),
        step("/v3/auth/authenticate", json!({"name": "root", "password": "x"})),
        step("/v3/auth/user/get", json!({"name": "nobody"})),
        step("/v3/auth/role/add", json!({"name": ""})),
        step("/v3/auth/enable", json!({})),
        step("/v3/auth/user/add", json!({"name": "root", "password": "pass"})),
        step("/v3/auth/role/add", json!({"name": "root"})),
        step("/v3/auth/user/grant", json!({"user": "root", "role": "root"})),
        step("/v3/auth/role/get", json!({"role": "root"})),
        step("/v3/auth/user/list", json!({})),
        malformed("/v3/kv/put", r#"{"key": "Zm9v""#),
        malformed("/v3/kv/put", r#"{"key": "!!"}"#),
        malformed("/v3/kv/put", r#"{"key": 5}"#),
        malformed("/v3/kv/range", r#"{"limit": "many"}"#),
    ]
}

/// Runs `steps` on both, failing with every difference listed.
fn compare(steps: &[Step], etcd: &Curl, concord: &Curl, differences: &mut Vec<String>) {
    for step in steps {
        let theirs = etcd.post(step.path, &step.body);
        let ours = concord.post(step.path, &step.body);
        let same = if step.codes_only {
            (theirs.status, &theirs.json["code"]) == (ours.status, &ours.json["code"])
        } else {
            theirs.status == ours.status && normalise(&theirs.json) == normalise(&ours.json)
        };
        if !same {
            differences.push(format!(
                "POST {} {}\n  etcd:    {} {}\n  concord: {} {}",
                step.path, step.body, theirs.status, theirs.text, ours.status, ours.text
            ));
        }
    }
}

#[test]
fn the_same_json_requests_get_the_same_answers_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd_server = Etcd::start(dir.path());
    let concord_server = Server::start(dir.path(), &[]);
    let etcd = Curl::new(&etcd_server.url);
    let concord = Curl::new(&concord_server.url());
    let mut differences = Vec::new();
    compare(&scenario(), &etcd, &concord, &mut differences);

    // With auth on: each side's own root token.
    compare(
        &[step("/v3/auth/enable", json!({}))],
        &etcd,
        &concord,
        &mut differences,
    );
    let token = |curl: &Curl| {
        curl.ok("/v3/auth/authenticate", r#"{"name": "root", "password": "pass"}"#)["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (etcd_root, concord_root) = (
        etcd.with_token(&token(&etcd)),
        concord.with_token(&token(&concord)),
    );
    let with_auth = [
        step("/v3/kv/put", json!({"key": b64("a"), "value": b64("1")})),
        step("/v3/auth/user/add", json!({"name": "u", "password": "p"})),
    ];
    compare(&with_auth, &etcd, &concord, &mut differences);
    compare(&with_auth[..1], &etcd_root, &concord_root, &mut differences);
    let denied = [step("/v3/kv/range", json!({"key": b64("a")}))];
    compare(
        &denied,
        &etcd.with_token("bogus"),
        &concord.with_token("bogus"),
        &mut differences,
    );
    compare(
        &[step("/v3/auth/disable", json!({}))],
        &etcd_root,
        &concord_root,
        &mut differences,
    );

    // A watch from history: the same lines.
    let body = json!({"create_request": {"key": b64("f"), "range_end": b64("g"), "start_revision": "3"}})
        .to_string();
    let (theirs, ours) = (
        etcd.stream("/v3/watch", &body),
        concord.stream("/v3/watch", &body),
    );
    for line in 0..2 {
        let (theirs, ours) = (normalise(&theirs.next()), normalise(&ours.next()));
        if theirs != ours {
            differences.push(format!(
                "watch line {line}\n  etcd:    {theirs}\n  concord: {ours}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

//! The Config service through concordctl: values refused with their position, schemas, a
//! compare-and-set conflict, history and rollback across an MVCC compaction, watches, and
//! status of who runs what.

use serde_json::Value;

use super::support::{Background, client, ctl_fails, ctl_ok, ctl_ok_with, revision};
use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_refused_with_their_position_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let put = |args: &[&str], value: &str| {
        let mut full = vec!["config", "put"];
        full.extend_from_slice(args);
        ctl_ok_with(&server, &full, Some(value))
    };
    assert_eq!(
        put(&["app", "web", "--format", "json"], r#"{"port": 80}"#),
        "app/web version 1\n"
    );
    let before = revision(&server);

    let refusals = [
        (
            vec!["app", "web"],
            "{\n  \"port\": 80,\n  \"host\" \"x\"\n}\n",
            "Error: config: invalid json at line 3 column 10: expected `:`\n",
        ),
        (
            vec!["app", "web", "--format", "yaml"],
            "port: 80\nhosts: [a, b\n",
            "Error: config: invalid yaml at line 3 column 1: ",
        ),
        (
            vec!["app", "web", "--format", "yaml"],
            "port: 80\nport: 81\n",
            "duplicate entry with key \"port\"",
        ),
        (
            vec!["app", "web", "--format", "toml"],
            "port = 80\nname = \n",
            "Error: config: invalid toml at line 2 column 8: ",
        ),
        (
            vec!["app", "web", "--format", "xml"],
            "<a/>",
            "Error: config: unknown format \"xml\" (json, yaml, toml or text)\n",
        ),
        (
            vec!["", "web"],
            "x",
            "a namespace name must be 1 to 256 bytes, without '/' or control characters",
        ),
        (
            vec!["app", "a/b"],
            "x",
            "a key name must be 1 to 256 bytes, without '/' or control characters",
        ),
    ];
    for (args, value, expected) in refusals {
        let mut full = vec!["config", "put"];
        full.extend_from_slice(&args);
        let err = ctl_fails(&server, &full, Some(value));
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let oversized = "x".repeat(2 << 20);
    let err = ctl_fails(&server, &["config", "put", "app", "big"], Some(&oversized));
    assert!(
        err.contains("too large") || err.contains("larger than max"),
        "{err}"
    );

    assert_eq!(revision(&server), before, "nothing was written");
    assert_eq!(
        ctl_ok(&server, &["config", "get", "app", "web"]),
        "{\"port\": 80}\n"
    );
    let unknown = ctl_fails(&server, &["config", "get", "nope", "web"], None);
    assert_eq!(unknown, "Error: config: namespace nope not found\n");
    let missing = ctl_fails(&server, &["config", "get", "app", "other"], None);
    assert_eq!(missing, "Error: config: key app/other not found\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_expected_versions_refuse_what_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let schema = r#"{"type": "object", "properties": {"port": {"type": "integer", "maximum": 65535}}, "required": ["port"]}"#;
    ctl_ok_with(&server, &["config", "schema", "svc", "-"], Some(schema));
    let shown: Value = serde_json::from_str(&ctl_ok(&server, &["config", "schema", "svc"])).unwrap();
    assert_eq!(shown["required"][0], "port");

    ctl_ok_with(
        &server,
        &["config", "put", "svc", "web", "--format", "yaml"],
        Some("port: 80\n"),
    );
    let too_big = ctl_fails(&server, &["config", "put", "svc", "web"], Some("port: 70000\n"));
    assert!(
        too_big
            .contains("breaks the namespace's schema at /port: 70000 is greater than the maximum of 65535"),
        "{too_big}"
    );
    let missing = ctl_fails(
        &server,
        &["config", "put", "svc", "web", "--format", "toml"],
        Some("host = \"x\"\n"),
    );
    assert!(
        missing.contains("breaks the namespace's schema at /: "),
        "{missing}"
    );
    let not_schema = ctl_fails(&server, &["config", "schema", "svc", "-"], Some(r#"{"type": 5}"#));
    assert!(not_schema.contains("not a valid JSON Schema"), "{not_schema}");
    let would_break = ctl_fails(
        &server,
        &["config", "schema", "svc", "-"],
        Some(r#"{"required": ["host"]}"#),
    );
    assert!(
        would_break.contains("the schema would make svc/web invalid"),
        "{would_break}"
    );

    // Compare-and-set on the expected version.
    ctl_ok_with(
        &server,
        &["config", "put", "svc", "web", "--if-version", "1"],
        Some("port: 81\n"),
    );
    let stale = ctl_fails(
        &server,
        &["config", "put", "svc", "web", "--if-version", "1"],
        Some("port: 82\n"),
    );
    assert_eq!(stale, "Error: config: svc/web is at version 2, not 1\n");
    let exists = ctl_fails(
        &server,
        &["config", "put", "svc", "web", "--if-version", "0"],
        Some("port: 83\n"),
    );
    assert_eq!(exists, "Error: config: svc/web is at version 2, not 0\n");
    assert_eq!(ctl_ok(&server, &["config", "get", "svc", "web"]), "port: 81\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rollback_and_watches_survive_an_mvcc_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut revisions = Vec::new();
    for (i, comment) in ["first", "second", "third"].iter().enumerate() {
        let value = format!("{{\"n\": {}}}", i + 1);
        ctl_ok_with(
            &server,
            &[
                "config",
                "put",
                "app",
                "k",
                "--format",
                "json",
                "--comment",
                comment,
            ],
            Some(&value),
        );
        revisions.push(revision(&server));
    }
    let namespace_watch = Background::concordctl(&server.url(), &["config", "watch", "app"]);
    // Compact the store's history past every version.
    server.ctl(&["compact", &revision(&server).to_string()]);

    let history: Value =
        serde_json::from_str(&ctl_ok(&server, &["-w", "json", "config", "history", "app", "k"])).unwrap();
    let versions: Vec<(u64, &str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["value"].as_str().unwrap(),
                v["comment"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            (1, "{\"n\": 1}", "first"),
            (2, "{\"n\": 2}", "second"),
            (3, "{\"n\": 3}", "third")
        ]
    );
    let table = ctl_ok(&server, &["-w", "table", "config", "history", "app", "k"]);
    assert!(table.contains("| VERSION | REVISION | TIME"), "{table}");
    assert_eq!(
        ctl_ok(&server, &["config", "get", "app", "k", "--version", "1"]),
        "{\"n\": 1}\n"
    );

    // Rollback to version 1 is version 4, with the audit trail intact.
    assert_eq!(
        ctl_ok(&server, &["config", "rollback", "app", "k", "1"]),
        "app/k version 4 (rollback to version 1)\n"
    );
    assert_eq!(ctl_ok(&server, &["config", "get", "app", "k"]), "{\"n\": 1}\n");
    let latest: Value =
        serde_json::from_str(&ctl_ok(&server, &["-w", "json", "config", "get", "app", "k"])).unwrap();
    assert_eq!(
        (latest["version"].as_u64(), latest["rollback_of"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(latest["comment"], "rollback to version 1");

    // A watch from a compacted revision replays the kept versions, then follows.
    let replay = Background::concordctl(
        &server.url(),
        &["config", "watch", "app", "k", "--from", &revisions[0].to_string()],
    );
    let out = replay.stdout_containing("app/k version 4").await;
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("app/k version")).collect();
    assert_eq!(
        headers,
        [
            "app/k version 1",
            "app/k version 2",
            "app/k version 3",
            "app/k version 4"
        ]
    );
    replay.kill();
    let live = namespace_watch.stdout_containing("app/k version 4").await;
    assert_eq!(live, "app/k version 4\n{\"n\": 1}\n");
    namespace_watch.kill();
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Limits {
    max: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_which_client_runs_which_version_and_who_rejected_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    ctl_ok_with(
        &server,
        &["config", "put", "app", "limits", "--format", "yaml"],
        Some("max: 1\n"),
    );
    let follower = client(&server).await;
    let options = concord_client::ConfigOptions {
        client_id: Some("web-1".into()),
        ..Default::default()
    };
    let mut live = follower
        .config_with::<Limits>("app", "limits", options)
        .await
        .unwrap();
    super::support::until("web-1 reports version 1", async || {
        ctl_ok(&server, &["config", "status", "app", "limits"]).contains("web-1 1 applied")
    })
    .await;
    // Valid YAML the client's type cannot hold: rejected, and said so.
    ctl_ok_with(&server, &["config", "put", "app", "limits"], Some("max: lots\n"));
    super::support::until("web-1 reports the rejection", async || {
        ctl_ok(&server, &["config", "status", "app", "limits"]).contains("web-1 2 rejected")
    })
    .await;
    let status = ctl_ok(&server, &["config", "status", "app", "limits"]);
    assert!(
        status.starts_with("app/limits latest version 2\nweb-1 2 rejected "),
        "{status}"
    );
    assert!(
        status.contains("invalid type: string \"lots\", expected u32"),
        "{status}"
    );
    assert_eq!(live.current().unwrap().version, 1, "the last good version stays");
    ctl_ok_with(&server, &["config", "put", "app", "limits"], Some("max: 3\n"));
    let applied = super::support::within("version 3", live.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((applied.version, applied.value.max), (3, 3));
    let json: Value = serde_json::from_str(&ctl_ok(
        &server,
        &["-w", "json", "config", "status", "app", "limits"],
    ))
    .unwrap();
    super::support::until("web-1 reports version 3", async || {
        let json: Value = serde_json::from_str(&ctl_ok(
            &server,
            &["-w", "json", "config", "status", "app", "limits"],
        ))
        .unwrap();
        json["clients"][0]["version"] == 3 && json["clients"][0]["applied"] == true
    })
    .await;
    assert_eq!(json["latest"], 3);
}

/// A program that kept a cache file starts from its last good config while no member can be
/// reached, and follows the cluster again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_file_starts_a_program_while_the_cluster_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = crate::cluster::harness::Cluster::start(dir.path(), 1);
    cluster.wait_for_leader(super::support::WAIT);
    let endpoint = cluster.client_url(0).to_string();
    let cache = dir.path().join("limits.json");
    let options = || concord_client::ConfigOptions {
        cache_file: Some(cache.clone()),
        ..Default::default()
    };
    let writer = concord_client::Client::connect([endpoint.clone()]).await.unwrap();
    writer
        .put_config("app", "limits", &serde_json::json!({"max": 7}))
        .await
        .unwrap();
    {
        let first = writer
            .config_with::<Limits>("app", "limits", options())
            .await
            .unwrap();
        assert_eq!(first.current().unwrap().value.max, 7);
        assert!(cache.exists(), "the applied version is cached");
    }

    cluster.kill9(0);
    let fast = concord_client::ClientOptions {
        connect_timeout: std::time::Duration::from_millis(200),
        request_timeout: std::time::Duration::from_millis(500),
        retries: 0,
        ..Default::default()
    };
    let offline = concord_client::Client::new([endpoint.clone()], fast).unwrap();
    let mut live = super::support::within(
        "a start from the cache",
        offline.config_with::<Limits>("app", "limits", options()),
    )
    .await
    .unwrap();
    assert_eq!(
        (live.current().unwrap().value.max, live.current().unwrap().version),
        (7, 1)
    );

    // Without a cache, the same start fails: nothing to start from.
    let uncached = offline.config::<Limits>("app", "limits").await;
    assert!(uncached.is_err());

    // The cluster comes back: the program follows it again.
    cluster.restart(0);
    cluster.wait_for_leader(super::support::WAIT);
    writer
        .put_config("app", "limits", &serde_json::json!({"max": 9}))
        .await
        .unwrap();
    let next = super::support::within("the next version after the outage", live.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.value.max, next.version), (9, 2));
}

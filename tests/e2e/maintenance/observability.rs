//! Metrics and health end to end: `/metrics` parsed by a Prometheus text parser, with etcd's
//! names and live values; `/health`, `/livez` and `/readyz` flipping with an alarm and with the
//! loss of the leader; `--listen-metrics-urls` and `--log-format json`.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use prometheus_parse::{Scrape, Value};

use crate::cluster::harness::{Cluster, free_ports};
use crate::harness::{Server, http_get};

/// Scrapes `/metrics` at `endpoint` and parses it.
fn scrape(endpoint: &str) -> Scrape {
    let (status, body) = http_get(endpoint, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The value of the sample `name` whose labels include `labels` (a histogram's count).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_etcds_names_and_health_follows_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_ports(1)[0];
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = Server::start(
        dir.path(),
        &[
            "--listen-metrics-urls",
            &format!("http://{metrics_addr}"),
            "--log-format",
            "json",
        ],
    );
    let mut client = etcd_client::Client::connect([server.url()], None).await.unwrap();
    for i in 0..10 {
        client.put(format!("m/{i}"), "v", None).await.unwrap();
    }
    let _ = client.get("missing", None).await.unwrap();

    for endpoint in [server.endpoint.as_str(), metrics_addr.as_str()] {
        let scraped = scrape(endpoint);
        let get = |name: &str| value(&scraped, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(get("etcd_server_has_leader"), 1.0);
        assert_eq!(get("etcd_server_is_leader"), 1.0);
        assert!(get("etcd_server_leader_changes_seen_total") >= 1.0);
        assert!(get("etcd_server_proposals_committed_total") >= 10.0);
        assert!(get("etcd_server_proposals_applied_total") >= 10.0);
        assert_eq!(get("etcd_server_proposals_pending"), 0.0);
        assert!(get("etcd_mvcc_db_total_size_in_bytes") > 0.0);
        assert_eq!(get("etcd_debugging_mvcc_keys_total"), 10.0);
        assert!(
            get("etcd_disk_wal_fsync_duration_seconds") >= 10.0,
            "fsyncs are timed"
        );
        assert!(get("etcd_disk_backend_commit_duration_seconds") >= 1.0);
        assert!(get("process_resident_memory_bytes") > 1e6);
        assert!(get("process_open_fds") > 0.0);
        let puts = value(
            &scraped,
            "grpc_server_handled_total",
            &[
                ("grpc_service", "etcdserverpb.KV"),
                ("grpc_method", "Put"),
                ("grpc_code", "OK"),
                ("grpc_type", "unary"),
            ],
        );
        assert_eq!(puts, Some(10.0));
        let started = value(&scraped, "grpc_server_started_total", &[("grpc_method", "Range")]);
        assert!(started >= Some(1.0));
    }
    // Concord's own: locks held through the Lock service, until unlocked.
    let locked = client.lock("job", None).await.unwrap();
    let scraped = scrape(&metrics_addr);
    assert_eq!(value(&scraped, "concord_locks_held", &[]), Some(1.0));
    assert_eq!(value(&scraped, "concord_lock_acquired_total", &[]), Some(1.0));
    assert_eq!(value(&scraped, "concord_lock_waiting", &[]), Some(0.0));
    client.unlock(locked.key()).await.unwrap();
    assert_eq!(
        value(&scrape(&metrics_addr), "concord_locks_held", &[]),
        Some(0.0)
    );

    // Each log line is a JSON object.
    let line = server.log_tail();
    let first = line.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "{first}"
    );

    // Healthy, live and ready on both ports.
    for endpoint in [server.endpoint.as_str(), metrics_addr.as_str()] {
        assert_eq!(
            http_get(endpoint, "/health"),
            Some((200, r#"{"health":"true"}"#.into()))
        );
        assert_eq!(http_get(endpoint, "/livez"), Some((200, "ok\n".into())));
        assert_eq!(http_get(endpoint, "/readyz"), Some((200, "ok\n".into())));
    }
    let (_, verbose) = http_get(&server.endpoint, "/readyz?verbose").unwrap();
    assert!(verbose.contains("[+]linearizable_read ok"), "{verbose}");

    // An alarm makes the member unhealthy, unless excluded.
    let member = client.status().await.unwrap().header().unwrap().member_id();
    let mut options = AlarmOptions::new();
    options.with_member(member);
    client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options))
        .await
        .unwrap();
    let (status, body) = http_get(&server.endpoint, "/health").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("ALARM NOSPACE"), "{body}");
    assert_eq!(
        http_get(&server.endpoint, "/health?exclude=NOSPACE").unwrap().0,
        200
    );
    assert_eq!(
        http_get(&server.endpoint, "/readyz").unwrap().0,
        200,
        "only CORRUPT makes a member unready"
    );
    let mut options = AlarmOptions::new();
    options.with_member(member);
    client
        .alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(options))
        .await
        .unwrap();
    let (status, body) = http_get(&server.endpoint, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("[-]data_corruption failed"), "{body}");
    assert_eq!(
        http_get(&server.endpoint, "/livez").unwrap().0,
        200,
        "still alive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_the_loss_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let mut client = cluster.client(leader).await;
    client.put("k", "v", None).await.unwrap();
    let survivor = (leader + 1) % 3;
    let endpoint = cluster
        .client_url(survivor)
        .trim_start_matches("http://")
        .to_string();
    let scraped = scrape(&endpoint);
    let rtt = scraped
        .samples
        .iter()
        .any(|s| s.metric == "etcd_network_peer_round_trip_time_seconds_count");
    let leader_scrape = scrape(cluster.client_url(leader).trim_start_matches("http://"));
    assert!(
        rtt || leader_scrape
            .samples
            .iter()
            .any(|s| s.metric == "etcd_network_peer_round_trip_time_seconds_count"
                && s.labels.get("To").is_some()),
        "peer round trips are timed"
    );
    assert_eq!(http_get(&endpoint, "/health").unwrap().0, 200);

    // With two of three members gone, the survivor has no leader: unhealthy, not ready, alive.
    for i in 0..3 {
        if i != survivor {
            cluster.kill9(i);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let no_leader = value(&scrape(&endpoint), "etcd_server_has_leader", &[]) == Some(0.0);
        let (status, body) = http_get(&endpoint, "/health").unwrap();
        if no_leader && status == 503 {
            assert!(body.contains(r#""health":"false""#), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still healthy: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(&endpoint, "/readyz").unwrap().0, 503);
    assert_eq!(http_get(&endpoint, "/livez").unwrap().0, 200);
    assert_eq!(
        http_get(&endpoint, "/health?serializable=true").unwrap().0,
        503,
        "no leader either way"
    );
}

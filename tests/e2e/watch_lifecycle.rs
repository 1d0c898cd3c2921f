//! Watch streams and watchers go away with their client: checked through `/metrics`, which
//! exposes etcd's watcher gauges.

use std::time::{Duration, Instant};

use etcd_client::WatchOptions;

use crate::client_kv::connect;
use crate::harness::Server;

fn gauge(server: &Server, name: &str) -> i64 {
    let (status, body) = server.http_get("/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
}

fn wait_for_gauge(server: &Server, name: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = gauge(server, name);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {got}, expected {want}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_released_when_the_client_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut client = connect(&server).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut stream = client
            .watch(format!("k{i}"), Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created());
        assert_eq!(
            created.watch_id(),
            0,
            "automatic ids start at 0 on each stream, as in etcd"
        );
        streams.push(stream);
    }
    wait_for_gauge(&server, "etcd_debugging_mvcc_watcher_total", 20);
    assert_eq!(gauge(&server, "etcd_debugging_mvcc_slow_watcher_total"), 0);
    assert_eq!(gauge(&server, "etcd_server_has_leader"), 1);

    // Cancel one explicitly, drop the rest with the connection.
    let mut cancelled = streams.pop().unwrap();
    cancelled.cancel(0).await.unwrap();
    let response = cancelled.message().await.unwrap().unwrap();
    assert!(response.canceled());
    wait_for_gauge(&server, "etcd_debugging_mvcc_watcher_total", 19);
    drop((streams, cancelled, client));
    wait_for_gauge(&server, "etcd_debugging_mvcc_watcher_total", 0);
    wait_for_gauge(&server, "etcd_debugging_mvcc_watch_stream_total", 0);
}

//! A client cannot keep a member from stopping. SIGTERM stops serving gracefully, which waits
//! for open requests to finish; a watch stream never finishes on its own, so a single open
//! watch kept the member running forever after SIGTERM (found while writing these tests).
//! etcd bounds its graceful stop and then closes what is still open.

use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::WatchOptions;

use super::{WAIT, assert_restarts_intact};
use crate::client_kv::connect;
use crate::harness::Server;

/// How long a member may take to exit after SIGTERM with a watch open.
const STOP_WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_member_with_an_open_watch() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("stop/key", "v", None).await.unwrap();
    let mut stream = c
        .watch("stop/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the watch is created in time")
        .unwrap()
        .unwrap();
    assert!(created.created());

    let pid = server.pid().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + STOP_WAIT;
    while server.is_running() {
        assert!(
            Instant::now() < deadline,
            "the member still runs {STOP_WAIT:?} after SIGTERM with a watch open\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);

    // It stopped cleanly: it starts again with its data.
    server.restart();
    let expected = vec![("stop/key".to_string(), "v".to_string())];
    assert_restarts_intact(&mut server, "stop/", &expected).await;
}

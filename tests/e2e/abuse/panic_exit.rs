//! A panic ends the member. Before, a panic in the state machine's apply (as a lease TTL of
//! `i64::MAX` once caused) killed only the task it happened in: the process stayed up as a
//! zombie that held its ports and answered nothing, so no supervisor restarted it. Now any
//! panic logs one error line and ends the process with status 101, and a restart applies the
//! committed entry. The panic is provoked with the test-only `apply` failpoint
//! (`CONCORD_FAILPOINTS=apply`, read by debug builds only).

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use super::assert_restarts_intact;
use crate::harness::{Server, lone_member_flags};

/// The exit status of a member that stopped because it could not go on (a panic's).
const PANIC_STATUS: i32 = 101;
/// How long the member may take to exit after the panic.
const EXIT_WAIT: Duration = Duration::from_secs(10);
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_apply_ends_the_member_and_a_restart_applies_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Not waiting for /health: the member is meant to die on its first write.
    let failpoint = vec![("CONCORD_FAILPOINTS".to_string(), "apply".to_string())];
    let mut armed =
        Server::spawn_with_env(data_dir.clone(), lone_member_flags(), failpoint, false).listening();

    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut c = Client::connect([armed.url()], Some(options))
        .await
        .expect("connect to the armed member");
    let put = c.put("crash/key", "committed", None).await;
    assert!(
        put.is_err(),
        "a put answered by a member whose apply panics: {put:?}"
    );

    let asked = Instant::now();
    let status = armed.wait_exit(EXIT_WAIT);
    let status = status.unwrap_or_else(|| {
        panic!(
            "the member still ran {EXIT_WAIT:?} after the panic:\n{}",
            armed.log_tail()
        )
    });
    println!(
        "the member exited with {status} {:?} after the put failed",
        asked.elapsed()
    );
    assert_eq!(status.code(), Some(PANIC_STATUS), "{}", armed.log_tail());
    for line in ["panicked", "stopping this member"] {
        assert!(
            !armed.log_lines_containing(line).is_empty(),
            "{line}: {}",
            armed.log_tail()
        );
    }
    drop(armed);

    // Without the failpoint, the member starts, applies the committed put and takes writes.
    let mut server = Server::spawn(data_dir, lone_member_flags(), true).listening();
    let expected = vec![("crash/key".to_string(), "committed".to_string())];
    let mut c = crate::client_kv::connect(&server).await;
    assert_eq!(
        super::pairs_under(&mut c, "crash/").await,
        expected,
        "{}",
        server.log_tail()
    );
    c.put("crash/after", "written", None).await.unwrap();
    let expected = vec![
        ("crash/after".to_string(), "written".to_string()),
        ("crash/key".to_string(), "committed".to_string()),
    ];
    assert_restarts_intact(&mut server, "crash/", &expected).await;
}

//! Shared by the service tests: `concordctl` run to completion, a client, bounded waits.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use concord_client::Client;

pub use crate::background::{Etcdctl as Background, WAIT};
use crate::harness::Server;

/// Fast Raft timing: leases may be as short as 1 s.
pub const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

/// Polls `condition` every 20 ms until it holds, within [`WAIT`].
pub async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A client of `server`.
pub async fn client(server: &Server) -> Client {
    Client::connect([server.url()]).await.expect("connect to concord")
}

/// Runs `concordctl --endpoints <endpoints> <args>` with `stdin`, to completion.
pub fn concordctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_concordctl"))
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("concordctl runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().expect("concordctl ends")
}

/// `concordctl` that must succeed: its stdout.
pub fn ctl_ok(server: &Server, args: &[&str]) -> String {
    ctl_ok_with(server, args, None)
}

/// `concordctl` with `stdin` that must succeed: its stdout.
pub fn ctl_ok_with(server: &Server, args: &[&str], stdin: Option<&str>) -> String {
    let out = concordctl(&server.url(), args, stdin);
    assert!(
        out.status.success(),
        "concordctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `concordctl` (with `stdin`) that must fail: its stderr, which must say `Error: `.
pub fn ctl_fails(server: &Server, args: &[&str], stdin: Option<&str>) -> String {
    let out = concordctl(&server.url(), args, stdin);
    assert!(
        !out.status.success(),
        "concordctl {args:?} should fail but printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("Error: "), "{stderr}");
    stderr
}

/// The store's revision now (from `etcdctl endpoint status`).
pub fn revision(server: &Server) -> i64 {
    let status = server.ctl(&["endpoint", "status", "-w", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&status).unwrap();
    parsed[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

//! A panic ends the member. Before, a panic in the state machine's apply (as a lease TTL of
//! `i64::MAX` once caused) killed only the task it happened in: the process stayed up as a
//! zombie that held its ports and answered nothing, so no supervisor restarted it. Now any
//! panic logs one error line and ends the process with status 101, and a restart applies the
//! committed entry. The panic is provoked with the test-only `apply` failpoint
//! (`CONCORD_FAILPOINTS=apply`, read by debug builds only).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use super::assert_restarts_intact;
use crate::harness::{Server, lone_member_flags};

/// The exit status of a member that stopped because it could not go on (a panic's).
const PANIC_STATUS: i32 = 101;
/// How long the member may take to exit after the panic.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long the member may take to start serving.
const START_WAIT: Duration = Duration::from_secs(30);

/// A member started with a failpoint armed; its stderr is read by a thread that reports the
/// client address and returns every line when the process closes it.
struct Armed {
    child: Child,
    addr: mpsc::Receiver<String>,
    log: Option<JoinHandle<Vec<String>>>,
}

impl Armed {
    fn spawn(data_dir: &Path, failpoints: &str) -> Armed {
        let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(lone_member_flags())
            .env("CONCORD_FAILPOINTS", failpoints)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn concord");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, addr) = mpsc::channel();
        let log = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("CONCORD_TEST_LOG").is_some() {
                    eprintln!("[concord armed] {line}");
                }
                if line.contains("serving client requests")
                    && let Some(addr) = line.split("addr=").nth(1)
                {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                }
                lines.push(line);
            }
            lines
        });
        Armed {
            child,
            addr,
            log: Some(log),
        }
    }

    /// Waits until it serves clients; its `127.0.0.1:PORT`.
    fn endpoint(&mut self) -> String {
        match self.addr.recv_timeout(START_WAIT) {
            Ok(addr) => addr,
            Err(_) => panic!(
                "the armed member did not serve clients:\n{}",
                self.finish().1.join("\n")
            ),
        }
    }

    /// Waits (boundedly) for the process to exit; its status and every line it logged.
    fn finish(&mut self) -> (Option<ExitStatus>, Vec<String>) {
        let deadline = Instant::now() + EXIT_WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let lines = self.log.take().map(|t| t.join().unwrap()).unwrap_or_default();
        (status, lines)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_apply_ends_the_member_and_a_restart_applies_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut armed = Armed::spawn(&data_dir, "apply");
    let endpoint = armed.endpoint();

    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut c = Client::connect([format!("http://{endpoint}")], Some(options))
        .await
        .expect("connect to the armed member");
    let put = c.put("crash/key", "committed", None).await;
    assert!(
        put.is_err(),
        "a put answered by a member whose apply panics: {put:?}"
    );

    let asked = Instant::now();
    let (status, log) = armed.finish();
    let log = log.join("\n");
    let status =
        status.unwrap_or_else(|| panic!("the member still ran {EXIT_WAIT:?} after the panic:\n{log}"));
    println!(
        "the member exited with {status} {:?} after the put failed",
        asked.elapsed()
    );
    assert_eq!(status.code(), Some(PANIC_STATUS), "{log}");
    assert!(log.contains("panicked"), "{log}");
    assert!(log.contains("stopping this member"), "{log}");

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

//! Shared by the recipe tests: fast Raft timing (a 1 s minimum lease TTL), a background
//! `etcdctl` that can be signalled, keepalive tasks, and error unpacking.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::harness::Server;

/// How long any single expected response or output may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// How long a waiter is watched to make sure it is still waiting.
pub const STILL_WAITING: Duration = Duration::from_millis(500);

/// A lease with a 1 s TTL that is not renewed must be gone, and whatever it held handed on,
/// this long after it was granted or last renewed (the TTL plus 1.5 s for the expiry check,
/// the revoke's commit and a loaded debug build).
pub const EXPIRY_LIMIT: Duration = Duration::from_millis(2500);

/// Raft timing that makes the minimum lease TTL 1 s instead of 2 s (etcd's rule: 1.5 election
/// timeouts), so crashed holders release their locks sooner.
pub const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// A new connection to `server` (each contender gets its own, like separate processes).
pub async fn connect(server: &Server) -> Client {
    Client::connect([server.url()], None)
        .await
        .expect("connect to concord")
}

/// The gRPC status inside a client error.
pub fn status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("a gRPC status expected, got {other:?}"),
    }
}

/// A lease of `ttl` seconds, renewed every `every` by a background task until it is aborted.
/// Returns the lease ID and the task.
pub async fn kept_alive(c: &mut Client, ttl: i64, every: Duration) -> (i64, tokio::task::JoinHandle<()>) {
    let id = c.lease_grant(ttl, None).await.unwrap().id();
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    let task = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match responses.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                _ => return,
            }
            tokio::time::sleep(every).await;
        }
    });
    (id, task)
}

/// The keys under `prefix`, oldest first.
pub async fn keys_under(c: &mut Client, prefix: &str) -> Vec<String> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
    c.get(prefix, Some(options))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

/// Polls until the keys under `prefix` are `want`, failing after [`WAIT`].
pub async fn wait_keys(c: &mut Client, prefix: &str, want: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = keys_under(c, prefix).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "keys under {prefix:?}: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A background `etcdctl` (`lock`, `elect`) whose output is collected as it comes and which
/// can be signalled like a user's Ctrl-C.
pub struct Etcdctl {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Copies everything `from` yields into a shared buffer, on a thread that ends with the pipe.
fn collect(mut from: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buffer, reader)
}

impl Etcdctl {
    /// Starts `etcdctl --endpoints=<server> <args>`.
    pub fn spawn(server: &Server, args: &[&str]) -> Etcdctl {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl is installed");
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        Etcdctl {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until stdout has `n` complete lines and returns it; fails after [`WAIT`].
    pub fn lines(&self, n: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.stdout();
            if out.matches('\n').count() >= n {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl printed {out:?} (stderr {:?}), expected {n} lines",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asserts it is still running and has printed nothing, for [`STILL_WAITING`].
    pub fn still_waiting(&mut self) {
        std::thread::sleep(STILL_WAITING);
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "etcdctl exited: {:?} {:?}",
            self.stdout(),
            self.stderr()
        );
        assert_eq!(self.stdout(), "", "still waiting, so nothing printed yet");
    }

    /// Sends `signal` (`TERM`, `INT`, ...) and waits for it to exit: `(status, stdout, stderr)`.
    pub fn signal(self, signal: &str) -> (ExitStatus, String, String) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.exit()
    }

    /// Waits for it to exit on its own: `(status, stdout, stderr)`; fails after [`WAIT`].
    pub fn exit(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for reader in self.readers.drain(..) {
                    reader.join().unwrap();
                }
                return (status, self.stdout(), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl did not exit; stdout {:?}, stderr {:?}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs it: no chance to unlock or resign.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcdctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

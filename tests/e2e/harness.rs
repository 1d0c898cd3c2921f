//! Starts the real `concord` binary on ephemeral ports and drives it like a user would.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a server may take to start and elect itself.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many of a server's last stderr lines are kept for failure messages.
const LOG_TAIL_LINES: usize = 40;

/// How many stderr lines of one run are kept whole for [`Server::log_contains`] (later ones
/// only reach the tail).
const LOG_KEEP_LINES: usize = 100_000;

/// The flags of a lone member on ephemeral ports, every flag but `--data-dir`. A lone member
/// needs no peers: it listens anywhere and keeps the default advertised peer URL (and with it
/// etcd's default member ID).
pub fn lone_member_flags() -> Vec<String> {
    [
        "--listen-client-urls",
        "http://127.0.0.1:0",
        "--advertise-client-urls",
        "http://127.0.0.1:0",
        "--listen-peer-urls",
        "http://127.0.0.1:0",
        "--log-level",
        "info",
    ]
    .map(String::from)
    .to_vec()
}

/// `GET path` from `endpoint` (`127.0.0.1:PORT`) over plain HTTP/1.1: the status and body, or
/// `None` if nothing answered.
pub fn http_get(endpoint: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(endpoint).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// Polls `done` every 50 ms until it holds; fails the test, naming `what`, after `within`.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `concord` process with its own data directory.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT` of the client listener.
    pub endpoint: String,
    data_dir: PathBuf,
    /// Every flag but `--data-dir`, as passed at launch (reused by [`Server::restart`]).
    args: Vec<String>,
    /// Environment variables set at launch (reused by [`Server::restart`]).
    env: Vec<(String, String)>,
    /// Whether (re)starting waits for `/health` (a lone member elects itself; a cluster member
    /// cannot be healthy until a quorum is up).
    await_health: bool,
    log_tail: Arc<Mutex<VecDeque<String>>>,
    /// Every line of this run's stderr (up to [`LOG_KEEP_LINES`]).
    log_all: Arc<Mutex<Vec<String>>>,
    /// Set once the process's stderr has been read to its end.
    log_done: Arc<AtomicBool>,
}

/// A `concord` process that was spawned but has not reported its client address yet.
pub struct Spawned {
    /// `None` once handed over to a [`Server`]; killed on drop otherwise.
    child: Option<Child>,
    data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    await_health: bool,
    listening: mpsc::Receiver<Result<String, ()>>,
    log_tail: Arc<Mutex<VecDeque<String>>>,
    log_all: Arc<Mutex<Vec<String>>>,
    log_done: Arc<AtomicBool>,
}

impl Server {
    /// Starts a server on a new data directory inside `dir`.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Server {
        let data_dir = dir.join("data");
        Self::start_on(data_dir, extra_args.iter().map(|s| s.to_string()).collect())
    }

    /// Starts a lone member on `data_dir` exactly (one `concord snapshot restore` made, say).
    pub fn start_on_data_dir(data_dir: PathBuf, extra_args: &[&str]) -> Server {
        Self::start_on(data_dir, extra_args.iter().map(|s| s.to_string()).collect())
    }

    fn start_on(data_dir: PathBuf, extra_args: Vec<String>) -> Server {
        let mut args = lone_member_flags();
        args.extend(extra_args);
        Self::spawn(data_dir, args, true).listening()
    }

    /// Spawns `concord --data-dir <data_dir> <args...>` (the caller names every other flag,
    /// client URLs included) and returns at once, so several members can boot together; call
    /// [`Spawned::listening`] to wait for its client listener (and, with `await_health`, for
    /// `/health`).
    pub fn spawn(data_dir: PathBuf, args: Vec<String>, await_health: bool) -> Spawned {
        Self::spawn_with_env(data_dir, args, Vec::new(), await_health)
    }

    /// [`Server::spawn`] with environment variables (a test-only failpoint, say).
    pub fn spawn_with_env(
        data_dir: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        await_health: bool,
    ) -> Spawned {
        let label = args
            .iter()
            .position(|a| a == "--name")
            .and_then(|i| args.get(i + 1))
            .map(|name| format!("concord {name}"))
            .unwrap_or_else(|| "concord".to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn concord");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let log_tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let tail = log_tail.clone();
        let log_all: Arc<Mutex<Vec<String>>> = Arc::default();
        let all = log_all.clone();
        let log_done: Arc<AtomicBool> = Arc::default();
        let done = log_done.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("CONCORD_TEST_LOG").is_some() {
                    eprintln!("[{label}] {line}");
                }
                // `addr=IP:PORT` in text logs, `"addr":"IP:PORT"` in JSON ones.
                if !sent
                    && line.contains("serving client requests")
                    && let Some(addr) = line
                        .split("addr=")
                        .nth(1)
                        .or_else(|| line.split(r#""addr":""#).nth(1))
                {
                    let addr = addr
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap_or("");
                    let _ = tx.send(Ok(addr.to_string()));
                    sent = true;
                }
                {
                    let mut all = all.lock().unwrap();
                    if all.len() < LOG_KEEP_LINES {
                        all.push(line.clone());
                    }
                }
                let mut tail = tail.lock().unwrap();
                if tail.len() == LOG_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            done.store(true, Ordering::SeqCst);
            // stderr closed: the process exited (or closed it) before it ever listened.
            if !sent {
                let _ = tx.send(Err(()));
            }
        });
        Spawned {
            child: Some(child),
            data_dir,
            args,
            env,
            await_health,
            listening: rx,
            log_tail,
            log_all,
            log_done,
        }
    }

    /// The last lines the server wrote to stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        join_tail(&self.log_tail)
    }

    /// The lines of this run's stderr (since the last start or restart) that contain `needle`.
    pub fn log_lines_containing(&self, needle: &str) -> Vec<String> {
        self.log_all
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for the process to exit on its own, then until its log has been
    /// read to the end; its exit status, or `None` if it still runs (it is killed then).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                self.kill9();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read_by = Instant::now() + Duration::from_secs(5);
        while !self.log_done.load(Ordering::SeqCst) && Instant::now() < read_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        status
    }

    /// Blocks until `GET /health` answers `{"health":"true"}`.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Raised alarms are the tests' business, not a reason to wait.
            if let Some((200, body)) = self.http_get("/health?exclude=NOSPACE&exclude=CORRUPT") {
                assert!(
                    body.contains(r#""health":"true""#),
                    "unexpected health body {body}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "concord at {} never became healthy",
                self.endpoint
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain HTTP/1.1 GET on the client port: `(status, body)`, or `None` if it failed.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.endpoint, path)
    }

    /// Size of the member's state database file (`member/db.redb`), in bytes.
    pub fn db_size(&self) -> u64 {
        std::fs::metadata(self.data_dir.join("member").join("db.redb"))
            .expect("the member's database exists")
            .len()
    }

    /// The server's data directory (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's process id (for reading `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`, for clients that want a URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// Runs `etcdctl` against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_with_stdin(args, None)
    }

    /// Runs `etcdctl` with `stdin` fed in.
    pub fn etcdctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl is installed (apt-get install etcd-client)");
        {
            let mut input = child.stdin.take().expect("stdin is piped");
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).expect("write etcdctl stdin");
            }
        }
        child.wait_with_output().expect("etcdctl runs")
    }

    /// Runs `etcdctl`, asserts success and returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs `etcdctl`, asserts failure and returns its stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            !out.status.success(),
            "etcdctl {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 output")
    }

    /// SIGKILLs the process (no chance to clean up).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERMs the process and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "concord did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory with the same flags (a new port when
    /// it was started on port 0, the same URLs when they were given explicitly).
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|why| panic!("{why}"));
    }

    /// [`Server::restart`], or why not when the new process exits before it listens; this
    /// server then stays stopped ([`Server::is_running`] is false).
    pub fn try_restart(&mut self) -> Result<(), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let next = Server::spawn_with_env(
            self.data_dir.clone(),
            self.args.clone(),
            self.env.clone(),
            self.await_health,
        )
        .try_listening()?;
        *self = next;
        Ok(())
    }
}

impl Spawned {
    /// Waits until the server logs its client address; then, for a lone server, until it is
    /// healthy. Panics with the server's last log lines if it exits first.
    pub fn listening(self) -> Server {
        self.try_listening().unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Spawned::listening`], or why not (with the server's last log lines) when it exits or
    /// stays silent first: a server armed to crash may crash before it listens.
    pub fn try_listening(mut self) -> Result<Server, String> {
        let endpoint = match self.listening.recv_timeout(START_TIMEOUT) {
            Ok(Ok(addr)) => addr,
            outcome => {
                let status = self.child.take().and_then(|mut child| {
                    let _ = child.kill();
                    child.wait().ok()
                });
                // The reader thread may still be draining the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let why = match outcome {
                    Err(_) => format!("did not start listening within {START_TIMEOUT:?}"),
                    Ok(_) => "exited before listening".to_string(),
                };
                // A panic's message comes before its backtrace, which can fill the tail.
                let telling: Vec<String> = self
                    .log_all
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|line| line.contains("panicked at") || line.contains(" ERROR "))
                    .take(20)
                    .cloned()
                    .collect();
                return Err(format!(
                    "concord {:?} {why} (exit: {status:?}); its errors and panics:\n{}\nits log ends:\n{}",
                    self.args,
                    telling.join("\n"),
                    join_tail(&self.log_tail)
                ));
            }
        };
        let server = Server {
            child: self.child.take().expect("not handed over yet"),
            endpoint,
            data_dir: std::mem::take(&mut self.data_dir),
            args: std::mem::take(&mut self.args),
            env: std::mem::take(&mut self.env),
            await_health: self.await_health,
            log_tail: self.log_tail.clone(),
            log_all: self.log_all.clone(),
            log_done: self.log_done.clone(),
        };
        if server.await_health {
            server.wait_healthy();
        }
        Ok(server)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn join_tail(tail: &Mutex<VecDeque<String>>) -> String {
    tail.lock()
        .unwrap()
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Starts the real `concord` binary on ephemeral ports and drives it like a user would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to start and elect itself.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `concord` process with its own data directory.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT` of the client listener.
    pub endpoint: String,
    data_dir: PathBuf,
    extra_args: Vec<String>,
}

impl Server {
    /// Starts a server on a new data directory inside `dir`.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Server {
        let data_dir = dir.join("data");
        Self::start_on(data_dir, extra_args.iter().map(|s| s.to_string()).collect())
    }

    fn start_on(data_dir: PathBuf, extra_args: Vec<String>) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .args(["--advertise-client-urls", "http://127.0.0.1:0"])
            .args(["--log-level", "info"])
            .args(&extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn concord");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("CONCORD_TEST_LOG").is_some() {
                    eprintln!("[concord] {line}");
                }
                if !sent
                    && line.contains("serving client requests")
                    && let Some(addr) = line.split("addr=").nth(1)
                {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                    sent = true;
                }
            }
        });
        let endpoint = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("concord did not start listening within {START_TIMEOUT:?} (exit: {status:?})");
            }
        };
        let server = Server {
            child,
            endpoint,
            data_dir,
            extra_args,
        };
        server.wait_healthy();
        server
    }

    /// Blocks until `GET /health` answers `{"health":"true"}`.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some((200, body)) = self.http_get("/health") {
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
        let mut stream = TcpStream::connect(&self.endpoint).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.endpoint
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((status, body))
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

    /// Starts the server again on the same data directory (new port).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let next = Server::start_on(self.data_dir.clone(), self.extra_args.clone());
        *self = next;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

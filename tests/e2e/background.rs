//! Background `etcdctl` (and `concordctl`) processes for the e2e tests: output collected as it comes, stdin fed a
//! line at a time, signals sent as a user would.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::Server;

/// How long any wait on a background etcdctl may take.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long a command that should be blocked is watched for not finishing.
pub const STILL_WAITING: Duration = Duration::from_millis(500);

/// A background `etcdctl` (`watch`, `lock`, `elect`, ...) whose output is collected as it
/// comes, which can be fed lines and signalled like a user's Ctrl-C.
pub struct Etcdctl {
    child: Child,
    stdin: Option<ChildStdin>,
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
    /// Starts `etcdctl --endpoints=<server> <args>` with piped stdin, stdout and stderr.
    pub fn spawn(server: &Server, args: &[&str]) -> Etcdctl {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint))
            .args(args);
        Self::start(command)
    }

    /// Starts `concordctl --endpoints <endpoints> <args>` the same way: Concord's own CLI runs
    /// in the background (a registration, a watch, a subscription) exactly as etcdctl does.
    pub fn concordctl(endpoints: &str, args: &[&str]) -> Etcdctl {
        let mut command = Command::new(env!("CARGO_BIN_EXE_concordctl"));
        command.arg("--endpoints").arg(endpoints).args(args);
        Self::start(command)
    }

    fn start(mut command: Command) -> Etcdctl {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the command is installed");
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        Etcdctl {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) without waiting for anything.
    pub fn send(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success());
    }

    /// Writes one line to its stdin (interactive mode).
    pub fn line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until `done(output so far)` holds or [`WAIT`] passed, and returns the output.
    async fn wait_for(buffer: &Mutex<Vec<u8>>, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
            if done(&out) || Instant::now() > deadline {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until stdout is at least as long as `expected` (or [`WAIT`] passed) and returns
    /// it. Callers end their writes with one the command must print last, so anything missing,
    /// extra or out of order shows up as a difference.
    pub async fn stdout_like(&self, expected: &str) -> String {
        Self::wait_for(&self.stdout, |out| out.len() >= expected.len()).await
    }

    /// As [`Self::stdout_like`], for stderr.
    pub async fn stderr_like(&self, expected: &str) -> String {
        Self::wait_for(&self.stderr, |out| out.len() >= expected.len()).await
    }

    /// Waits until stdout contains `needle` and returns it; fails after [`WAIT`].
    pub async fn stdout_containing(&self, needle: &str) -> String {
        let out = Self::wait_for(&self.stdout, |out| out.contains(needle)).await;
        assert!(
            out.contains(needle),
            "{needle:?} not printed; stdout {out:?}, stderr {:?}",
            self.stderr()
        );
        out
    }

    /// Waits until stderr contains `needle` and returns it; fails after [`WAIT`].
    pub async fn stderr_containing(&self, needle: &str) -> String {
        let err = Self::wait_for(&self.stderr, |err| err.contains(needle)).await;
        assert!(err.contains(needle), "{needle:?} not printed to stderr: {err:?}");
        err
    }

    /// Waits until stdout has `n` complete lines (or [`WAIT`] passed) and returns it.
    pub async fn stdout_lines(&self, n: usize) -> String {
        Self::wait_for(&self.stdout, |out| out.matches('\n').count() >= n).await
    }

    /// Kills it (it watches forever otherwise) and returns `(stdout, stderr)`.
    pub fn kill(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
        (self.stdout(), self.stderr())
    }

    /// Waits for the reader threads, which end when the exited process's pipes close.
    fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
    }

    /// Closes stdin and waits for it to exit on its own: `(status, stdout, stderr)`.
    pub async fn exit(mut self) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(exited) = self.exited_by(deadline) {
                return exited;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `(status, stdout, stderr)` once it has exited (its output read to the end); None while it
    /// runs. Fails the test if it still runs past `deadline`.
    fn exited_by(&mut self, deadline: Instant) -> Option<(ExitStatus, String, String)> {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.drain();
            return Some((status, self.stdout(), self.stderr()));
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl did not exit; stdout {:?}, stderr {:?}",
            self.stdout(),
            self.stderr()
        );
        None
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
        self.wait_exit()
    }
    /// Waits (blocking) for it to exit on its own: `(status, stdout, stderr)`; fails after [`WAIT`].
    pub fn wait_exit(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(exited) = self.exited_by(deadline) {
                return exited;
            }
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

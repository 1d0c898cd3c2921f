//! The HTTP/JSON gateway driven as its users drive it: with `curl`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::harness::Server;

/// A lone member (with `extra` flags) on a data directory of its own, and curl on it.
pub fn start(extra: &[&str]) -> (tempfile::TempDir, Server, Curl) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), extra);
    let curl = Curl::new(&server.url());
    (dir, server, curl)
}

/// How long a streamed line may take to arrive.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP answer: the status and the body, parsed when it is JSON.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body as sent.
    pub text: String,
    /// The body as JSON (`Null` if it is not).
    pub json: Value,
}

impl Answer {
    /// The `message` of an error answer.
    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or_default()
    }
}

/// `curl` against one base URL (`http://127.0.0.1:PORT`), with extra arguments (a token
/// header, TLS files) on every call.
#[derive(Clone, Debug)]
pub struct Curl {
    base: String,
    extra: Vec<String>,
}

impl Curl {
    /// curl on `base`.
    pub fn new(base: &str) -> Curl {
        Curl {
            base: base.to_string(),
            extra: Vec::new(),
        }
    }

    /// The same, sending `Authorization: token` with every request.
    pub fn with_token(&self, token: &str) -> Curl {
        self.with_args(&["-H", &format!("Authorization: {token}")])
    }

    /// The same, with more curl arguments on every call.
    pub fn with_args(&self, args: &[&str]) -> Curl {
        let mut more = self.clone();
        more.extra.extend(args.iter().map(|arg| arg.to_string()));
        more
    }

    /// `POST path` with `body`.
    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.request("POST", path, body)
    }

    /// `POST path` with `body`, which must succeed; its JSON.
    pub fn ok(&self, path: &str, body: &str) -> Value {
        let answer = self.post(path, body);
        assert_eq!(answer.status, 200, "POST {path} {body}: {answer:?}");
        answer.json
    }

    /// `METHOD path` with `body` (empty for none).
    pub fn request(&self, method: &str, path: &str, body: &str) -> Answer {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "-X", method, "-w", "\n%{http_code}"])
            .args(&self.extra)
            .arg(format!("{}{path}", self.base));
        if !body.is_empty() {
            command.args(["--data-binary", "@-"]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl runs (apt-get install curl)");
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let (text, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {method} {path}: no status in {out:?}, stderr {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        Answer {
            status,
            text: text.to_string(),
            json: serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }

    /// `POST path` with `body`, reading the answer as it streams (`curl -N`); the stream
    /// closes when the returned value is dropped.
    pub fn stream(&self, path: &str, body: &str) -> Lines {
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "-X", "POST", "--data-binary", "@-"])
            .args(&self.extra)
            .arg(format!("{}{path}", self.base))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl runs");
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { child, lines }
    }
}

/// A streamed answer, line by line.
pub struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    /// The next line as JSON; fails the test if none comes within the timeout.
    pub fn next(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("a streamed line within the timeout");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON line, got {line:?}"))
    }

    /// The next line's `result`.
    pub fn result(&self) -> Value {
        let line = self.next();
        assert!(line.get("result").is_some(), "a result line, got {line}");
        line["result"].clone()
    }

    /// Every `result` until the server ends the stream.
    pub fn results_to_the_end(&self) -> Vec<Value> {
        let mut results = Vec::new();
        loop {
            match self.lines.recv_timeout(LINE_TIMEOUT) {
                Ok(line) => {
                    let line: Value = serde_json::from_str(&line).expect("a JSON line");
                    assert!(line.get("result").is_some(), "a result line, got {line}");
                    results.push(line["result"].clone());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return results,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the stream did not end"),
            }
        }
    }

    /// Whether the stream ended (curl exited after the server closed it) within `within`.
    pub fn ends_within(&mut self, within: Duration) -> bool {
        match self.lines.recv_timeout(within) {
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Ok(line) => panic!("expected the end of the stream, got {line}"),
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` in base64, as the gateway's JSON carries bytes.
pub fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Base64 `value` decoded to text.
pub fn text(value: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap_or_default())
        .expect("base64");
    String::from_utf8(bytes).expect("UTF-8")
}

/// A JSON 64-bit integer (a string, in the gateway's mapping) as a number; 0 when absent.
pub fn int(value: &Value) -> i64 {
    match value {
        Value::String(text) => text.parse().expect("a decimal integer"),
        Value::Null => 0,
        other => other.as_i64().expect("an integer"),
    }
}

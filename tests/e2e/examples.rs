//! Every example in `examples/` runs through once (`--bounded`) against a real server and
//! prints what it promises. The README's test command (`scripts/test.sh`) builds the examples
//! as programs (`cargo build --examples`) before the tests run; `cargo test` alone builds them
//! only as test harnesses.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Server;

/// How long an example may run.
const EXAMPLE_LIMIT: Duration = Duration::from_secs(60);

/// `target/<profile>/examples/<name>`, next to this test binary's `deps/`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile.join("examples").join(name);
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    assert!(
        path.exists() && modified(&path) >= modified(&source),
        "{} is not built or older than its source: run `cargo build --examples` (the README's \
         test command builds them)",
        path.display()
    );
    path
}

/// Runs example `name` against `server` with `--bounded`; its stdout.
fn run(server: &Server, name: &str) -> String {
    let mut child = Command::new(example(name))
        .arg(server.url())
        .arg("--bounded")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + EXAMPLE_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("example {name} ran longer than {EXAMPLE_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "example {name} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_examples_run_and_do_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    let out = run(&server, "register_service");
    assert!(
        out.starts_with("registered services/echo/echo-1 at 127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("called echo-1: pong\n"), "{out}");
    assert!(out.ends_with("echo-1 left; 0 echo instances remain\n"), "{out}");

    let out = run(&server, "config_hot_reload");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "version 1: 2 workers", "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("version 2 rejected, still on the last good one: invalid type")),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"version 3: 4 workers"), "{out}");
    // It reported the rejection (and perhaps, before it exited, version 3 over it).
    let status = server.ctl(&[
        "get",
        "config/reports/demo/settings/",
        "--prefix",
        "--print-value-only",
    ]);
    assert!(
        status.contains(r#"{"version":2,"applied":false,"error":"invalid type"#)
            || status.contains(r#"{"version":3,"applied":true}"#),
        "the example reported what it runs: {status}"
    );

    let out = run(&server, "pubsub");
    let payloads: Vec<&str> = out.lines().map(|l| l.split_once(": ").unwrap().1).collect();
    assert_eq!(
        payloads,
        ["event 1", "event 2", "event 3", "event 4", "event 5"],
        "{out}"
    );

    let out = run(&server, "lock_job");
    for worker in 1..=3 {
        assert!(
            out.contains(&format!(
                "worker {worker} holds the lock\nworker {worker} wrote its result: true\n"
            )),
            "{out}"
        );
    }
    assert!(
        out.ends_with("\n") && out.lines().last().unwrap().starts_with("last run by worker "),
        "{out}"
    );

    let out = run(&server, "worker_election");
    let leads: Vec<&str> = out.lines().filter(|l| l.ends_with(" leads")).collect();
    assert!(leads.len() >= 3, "three rounds at least: {out}");
    // Leads never overlap: each "leads" is followed by the same worker's "resigns" before the
    // next "leads".
    let mut leading: Option<&str> = None;
    for line in out.lines() {
        if let Some(worker) = line.strip_suffix(" leads") {
            assert_eq!(leading, None, "two leaders at once: {out}");
            leading = Some(worker);
        } else if let Some(worker) = line.strip_suffix(" resigns") {
            assert_eq!(leading, Some(worker), "{out}");
            leading = None;
        }
    }
    // A round that was running when the loops stopped was cancelled, not overlapped.
}

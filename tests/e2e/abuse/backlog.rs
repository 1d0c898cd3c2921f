//! Connection storms (issue 11, defect 7): the client listener's accept backlog is the
//! system's (`net.core.somaxconn`), as etcd's, not the 128 that std and tokio use, so a burst
//! of connects queues instead of overflowing (each overflow costs a client a one-second SYN
//! retry).

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Server;

/// The backlog `ss` reports for the socket listening on `port` (its Send-Q).
fn listen_backlog(port: &str) -> u32 {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("nothing listens on {port}: {text}"));
    // State Recv-Q Send-Q Local Peer
    line.split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_client_listener_queues_a_connection_storm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let port = server.endpoint.rsplit(':').next().unwrap().to_string();
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        listen_backlog(&port),
        somaxconn,
        "the accept backlog is the system's"
    );

    // 32 threads connect 1,500 times at once and hold the connections: none may wait for a
    // SYN retry (a second) because the queue overflowed.
    if open_files_limit() < 4096 {
        eprintln!("skipping the storm: too few file descriptors allowed");
        return;
    }
    let endpoint = server.endpoint.clone();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut slowest = Duration::ZERO;
                for _ in 0..47 {
                    let started = Instant::now();
                    held.push(TcpStream::connect(&endpoint).unwrap());
                    slowest = slowest.max(started.elapsed());
                }
                (slowest, held)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let slowest = results.iter().map(|(s, _)| *s).max().unwrap();
    assert!(slowest < Duration::from_millis(900), "a connect took {slowest:?}");
    drop(results);
    assert!(server.http_get("/health").is_some_and(|(code, _)| code == 200));
}

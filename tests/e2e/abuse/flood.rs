//! Memory floods on the client and peer ports. Every connection's bytes first pass a filter
//! that looks at the first HTTP/2 header block (to repair etcdctl 3.4's `:authority`). Before
//! it was bounded, it collected a header block whole, however many CONTINUATION frames it took,
//! and every frame whole, however long its header said it was: one connection sending
//! CONTINUATION frames grew the member by gigabytes, and each connection announcing a 16 MiB
//! frame held 16 MiB. Now the filter holds at most 64 KiB per connection and hands anything
//! else to h2, which refuses it; the member's resident memory stays flat and it keeps serving.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{assert_restarts_intact, peer_addr};
use crate::client_kv::connect;
use crate::harness::Server;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
/// The largest length a frame header can declare (2^24 - 1 bytes, just under 16 MiB).
const MAX_DECLARED: usize = (1 << 24) - 1;

/// How much one CONTINUATION flood sends at most.
const FLOOD_BYTES: usize = 200 << 20;
/// How many connections at once each announce a 16 MiB DATA frame and send it.
const BIG_FRAME_CONNECTIONS: usize = 24;
/// How far the member's resident memory may grow during a flood, in KiB (the floods would
/// take it hundreds of MiB, or GiB, past this when the filter held what it was sent).
const RSS_GROWTH_LIMIT_KIB: u64 = 200 * 1024;
/// How long one write may block before the flood counts the server as no longer reading.
const STALL: Duration = Duration::from_secs(5);
/// How long a flood may run in all.
const FLOOD_TIME: Duration = Duration::from_secs(60);

/// A frame header (RFC 9113, section 4.1).
fn frame_header(length: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let [_, l0, l1, l2] = u32::try_from(length).unwrap().to_be_bytes();
    let [s0, s1, s2, s3] = stream.to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

/// The preface and an empty SETTINGS frame: what a client sends first.
fn opening() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame_header(0, SETTINGS, 0, 0));
    bytes
}

/// The opening, then a HEADERS frame on stream 1 that does not end its header block.
fn open_header_block() -> Vec<u8> {
    let mut bytes = opening();
    // :method POST, :scheme http, :path / (static table entries 3, 6, 4).
    let fields = [0x83, 0x86, 0x84];
    bytes.extend(frame_header(fields.len(), HEADERS, 0, 1));
    bytes.extend(fields);
    bytes
}

/// 64 CONTINUATION frames on stream 1 (about 1 MiB), none ending the header block, each full
/// of well-formed literal fields `x: aaa...`.
fn continuation_frames() -> Vec<u8> {
    // A literal field without indexing, new name "x", 120-byte value: 124 bytes.
    let mut field = vec![0x00, 0x01, b'x', 120];
    field.extend([b'a'; 120]);
    let payload: Vec<u8> = field.repeat(132);
    let mut bytes = Vec::new();
    for _ in 0..64 {
        bytes.extend(frame_header(payload.len(), CONTINUATION, 0, 1));
        bytes.extend(&payload);
    }
    bytes
}

/// How a flooding connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The server closed or reset the connection.
    Closed(io::ErrorKind),
    /// A write blocked for [`STALL`]: the server stopped reading.
    Stalled,
    /// Everything was sent and the server kept the connection open.
    AllSent,
}

/// What one flooding connection did.
#[derive(Debug)]
struct Flood {
    sent: usize,
    ended: Ended,
}

/// Sends `first`, then `unit` again and again until `total` bytes are sent, the server closes
/// the connection or stops reading, or [`FLOOD_TIME`] is up. With `hold`, a connection that
/// sent everything is kept open for that long (or until the server closes it).
fn flood(addr: &str, first: &[u8], unit: &[u8], total: usize, hold: Duration) -> Flood {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_write_timeout(Some(STALL)).unwrap();
    let deadline = Instant::now() + FLOOD_TIME;
    let mut sent = 0;
    let mut next: &[u8] = first;
    while sent < total && Instant::now() < deadline {
        let chunk = &next[..next.len().min(total - sent)];
        match stream.write(chunk) {
            Ok(0) => {
                return Flood {
                    sent,
                    ended: Ended::Closed(io::ErrorKind::WriteZero),
                };
            }
            Ok(n) => {
                sent += n;
                next = &chunk[n..];
                if next.is_empty() {
                    next = unit;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Flood {
                    sent,
                    ended: Ended::Stalled,
                };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Flood {
                    sent,
                    ended: Ended::Closed(e.kind()),
                };
            }
        }
    }
    // Everything sent: wait (boundedly) for the server to close the connection.
    stream
        .set_read_timeout(Some(hold.max(Duration::from_millis(1))))
        .unwrap();
    let mut sink = [0u8; 4096];
    let held = Instant::now() + hold;
    while Instant::now() < held {
        match stream.read(&mut sink) {
            Ok(0) => {
                return Flood {
                    sent,
                    ended: Ended::Closed(io::ErrorKind::UnexpectedEof),
                };
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
            Err(e) => {
                return Flood {
                    sent,
                    ended: Ended::Closed(e.kind()),
                };
            }
        }
    }
    Flood {
        sent,
        ended: Ended::AllSent,
    }
}

/// The resident memory of process `pid`, in KiB (`VmRSS` in `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Runs `work` while sampling process `pid`'s resident memory; returns what `work` returned,
/// the memory before it started and the most seen while it ran (KiB).
fn peak_rss_during<T>(pid: u32, work: impl FnOnce() -> T) -> (T, u64, u64) {
    let baseline = rss_kib(pid).expect("the member's /proc status");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = baseline;
            loop {
                let finished = done.load(Ordering::Acquire);
                if let Some(rss) = rss_kib(pid) {
                    peak = peak.max(rss);
                }
                if finished {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let out = work();
        done.store(true, Ordering::Release);
        (out, baseline, sampler.join().unwrap())
    })
}

/// Which of a member's ports a flood goes to.
#[derive(Clone, Copy, Debug)]
enum Port {
    Client,
    Peer,
}

/// Which flood.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// One connection: a HEADERS frame without END_HEADERS, then CONTINUATION frames up to
    /// [`FLOOD_BYTES`].
    Continuation,
    /// [`BIG_FRAME_CONNECTIONS`] connections, each announcing a DATA frame of
    /// [`MAX_DECLARED`] bytes and sending all of it but the last byte, then holding on.
    BigFrames,
}

/// Starts a member, floods `port` with `attack` while watching its memory, then checks that it
/// stayed within [`RSS_GROWTH_LIMIT_KIB`], still serves, and restarts with its data.
async fn member_survives(port: Port, attack: Attack) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("flood/before", "kept", None).await.unwrap();
    let addr = match port {
        Port::Client => server.endpoint.clone(),
        Port::Peer => peer_addr(&server),
    };

    let started = Instant::now();
    let (floods, baseline, peak) = peak_rss_during(server.pid(), || match attack {
        Attack::Continuation => {
            vec![flood(
                &addr,
                &open_header_block(),
                &continuation_frames(),
                FLOOD_BYTES,
                Duration::from_secs(1),
            )]
        }
        Attack::BigFrames => {
            let mut first = opening();
            first.extend(frame_header(MAX_DECLARED, DATA, 0, 1));
            let total = first.len() + MAX_DECLARED - 1;
            let unit = vec![0u8; 1 << 20];
            std::thread::scope(|s| {
                let senders: Vec<_> = (0..BIG_FRAME_CONNECTIONS)
                    .map(|_| s.spawn(|| flood(&addr, &first, &unit, total, Duration::from_secs(2))))
                    .collect();
                senders.into_iter().map(|t| t.join().unwrap()).collect()
            })
        }
    });
    let sent: usize = floods.iter().map(|f| f.sent).sum();
    println!(
        "{attack:?} on the {port:?} port: {} MiB sent in {:?}, RSS {} MiB -> peak {} MiB, ended {:?}",
        sent >> 20,
        started.elapsed(),
        baseline / 1024,
        peak / 1024,
        floods.iter().map(|f| &f.ended).collect::<Vec<_>>()
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "{attack:?} on the {port:?} port grew the member from {baseline} KiB to {peak} KiB\n{}",
        server.log_tail()
    );
    assert!(server.is_running(), "the member exited:\n{}", server.log_tail());

    // Still serving, on a new connection.
    let mut c = connect(&server).await;
    c.put("flood/after", "written", None)
        .await
        .unwrap_or_else(|e| panic!("put after the flood: {e}\n{}", server.log_tail()));
    let got = c.get("flood/after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"written");
    assert!(
        server.log_lines_containing("panicked").is_empty(),
        "{}",
        server.log_tail()
    );

    let expected =
        [("flood/after", "written"), ("flood/before", "kept")].map(|(k, v)| (k.to_string(), v.to_string()));
    assert_restarts_intact(&mut server, "flood/", &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_on_the_client_port() {
    member_survives(Port::Client, Attack::Continuation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_data_frames_on_the_client_port() {
    member_survives(Port::Client, Attack::BigFrames).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_on_the_peer_port() {
    member_survives(Port::Peer, Attack::Continuation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_data_frames_on_the_peer_port() {
    member_survives(Port::Peer, Attack::BigFrames).await;
}

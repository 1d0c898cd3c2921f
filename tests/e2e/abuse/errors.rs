//! Unclear errors: requests etcd answers with a specific code and text, which clients choose
//! their error types by, and that Concord answered misleadingly, slowly or not at all.
//!
//! - A request over the gRPC limit got OUT_OF_RANGE (which etcd clients read as "compacted");
//!   etcd's transport answers RESOURCE_EXHAUSTED `grpc: received message larger than max`.
//! - gzip-compressed requests (which etcd accepts) were refused.
//! - A watch from a negative revision watched from now; etcd cancels it as compacted.
//! - `member add` of a voter that cannot start left the member without quorum until the
//!   request timed out; etcd refuses it at once as `not enough started members`.
//! - A taken listen address ended the process with an error that did not name it.

use std::fs::File;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::{PutRequest, RangeRequest};
use etcd_client::{WatchOptions, WatchResponse, WatchStream};
use serde_json::Value;
use tonic::codec::CompressionEncoding;

use super::{WAIT, assert_restarts_intact, pairs_under, revision, status};
use crate::client_kv::connect;
use crate::harness::{Server, lone_member_flags};

/// `--max-request-bytes` by default (1.5 MiB).
const MAX_REQUEST_BYTES: usize = 1_572_864;

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_etcds_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("size/kept", "v", None).await.unwrap();
    let before = revision(&mut c).await;

    // Past the gRPC limit (--max-request-bytes + 512 KiB): refused by the transport.
    let err = status(c.put("size/huge", vec![b'x'; 3 << 20], None).await.unwrap_err());
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .starts_with("grpc: received message larger than max ("),
        "{err:?}"
    );
    // Past --max-request-bytes only: refused by the server, with etcd's own error.
    let big = vec![b'x'; MAX_REQUEST_BYTES * 6 / 5];
    let err = status(c.put("size/big", big, None).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::InvalidArgument, "etcdserver: request is too large")
    );

    assert_eq!(
        revision(&mut c).await,
        before,
        "a refused request changed the store"
    );
    let expected = owned(&[("size/kept", "v")]);
    assert_eq!(pairs_under(&mut c, "size/").await, expected);
    assert_restarts_intact(&mut server, "size/", &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_requests_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel).send_compressed(CompressionEncoding::Gzip);
    // Large and repetitive, so it is obviously worth compressing.
    let value = b"compressible ".repeat(10_000);
    kv.put(PutRequest {
        key: b"gzip/key".to_vec(),
        value: value.clone(),
        ..Default::default()
    })
    .await
    .expect("a gzip-compressed Put");
    let range = kv
        .range(RangeRequest {
            key: b"gzip/key".to_vec(),
            ..Default::default()
        })
        .await
        .expect("a gzip-compressed Range")
        .into_inner();
    assert_eq!(range.kvs.len(), 1);
    assert_eq!(range.kvs[0].value, value);

    let expected = vec![("gzip/key".to_string(), String::from_utf8(value).unwrap())];
    assert_restarts_intact(&mut server, "gzip/", &expected).await;
}

/// The next response on a watch stream, failing after [`WAIT`].
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch response in time")
        .unwrap()
        .expect("watch stream open")
}

/// A watch from `start` on `key`: its created response, and the stream.
async fn created(c: &mut etcd_client::Client, key: &str, start: i64) -> (WatchResponse, WatchStream) {
    let mut stream = c
        .watch(key, Some(WatchOptions::new().with_start_revision(start)))
        .await
        .unwrap();
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    (created, stream)
}

/// Opens a watch on `key` from `start`, which must be created and then canceled as
/// compacted, without events; the compact revision it was canceled with.
async fn canceled_as_compacted(c: &mut etcd_client::Client, key: &str, start: i64) -> i64 {
    let (created, mut stream) = created(c, key, start).await;
    let canceled = next(&mut stream).await;
    assert!(canceled.canceled(), "{canceled:?}");
    assert_eq!(canceled.watch_id(), created.watch_id());
    assert!(canceled.events().is_empty(), "{canceled:?}");
    canceled.compact_revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_negative_revision_is_canceled_as_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    for i in 0..4 {
        c.put("watched/key", format!("v{i}"), None).await.unwrap();
    }

    // Never compacted: etcd's compact revision is -1, and -5 is below it.
    assert_eq!(canceled_as_compacted(&mut c, "watched/key", -5).await, -1);

    // Compacted at R: canceled with R.
    let compacted = revision(&mut c).await - 1;
    c.compact(compacted, None).await.unwrap();
    assert_eq!(canceled_as_compacted(&mut c, "watched/key", -5).await, compacted);

    // From 0 ("from now"): not canceled, and sees the next put.
    let (created, mut stream) = created(&mut c, "watched/key", 0).await;
    let put = c.put("watched/key", "new", None).await.unwrap();
    let event = next(&mut stream).await;
    assert!(!event.canceled() && event.compact_revision() == 0, "{event:?}");
    assert_eq!(event.watch_id(), created.watch_id());
    let kv = event.events()[0].kv().unwrap();
    assert_eq!(
        (kv.value(), kv.mod_revision()),
        (&b"new"[..], put.header().unwrap().revision())
    );
    // An open watch stream keeps SIGTERM from stopping the member (see
    // `shutdown::sigterm_stops_a_member_with_an_open_watch`): close it first.
    drop(stream);

    let expected = owned(&[("watched/key", "new")]);
    assert_restarts_intact(&mut server, "watched/", &expected).await;
}

/// The member IDs `etcdctl member list` shows.
fn member_ids(server: &Server) -> Vec<u64> {
    let listed = server.ctl(&["member", "list", "-w", "json"]);
    let json: Value = serde_json::from_str(listed.trim()).unwrap();
    json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_voter_without_quorum_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let members = member_ids(&server);
    assert_eq!(members.len(), 1);

    let asked = Instant::now();
    let err = server.ctl_err(&["member", "add", "m2", "--peer-urls=http://127.0.0.1:1"]);
    let took = asked.elapsed();
    assert!(
        err.contains("etcdserver: re-configuration failed due to not enough started members"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "member add took {took:?} to fail");
    assert_eq!(member_ids(&server), members);
    c.put("members/after-voter", "v", None).await.unwrap();

    // A learner does not count towards quorum: it is added, and removed again.
    let added = server.ctl(&[
        "member",
        "add",
        "m2",
        "--peer-urls=http://127.0.0.1:1",
        "--learner",
        "-w",
        "json",
    ]);
    let added: Value = serde_json::from_str(added.trim()).unwrap();
    let learner = added["member"]["ID"].as_u64().expect("the learner's ID");
    assert_eq!(member_ids(&server).len(), 2);
    c.put("members/with-learner", "v", None).await.unwrap();
    server.ctl(&["member", "remove", &format!("{learner:x}")]);
    assert_eq!(member_ids(&server), members);
    c.put("members/after-learner", "v", None).await.unwrap();

    let expected = owned(&[
        ("members/after-learner", "v"),
        ("members/after-voter", "v"),
        ("members/with-learner", "v"),
    ]);
    assert_restarts_intact(&mut server, "members/", &expected).await;
    assert_eq!(member_ids(&server), members);
}

/// Starts `concord` with `flags` on a fresh data directory, expecting it to exit on its own;
/// its exit status and stderr.
fn exits_with(dir: &std::path::Path, flags: &[String]) -> (std::process::ExitStatus, String) {
    let log_path = dir.join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn concord");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    let status = status.unwrap_or_else(|| panic!("concord {flags:?} kept running; its log:\n{log}"));
    (status, log)
}

/// Replaces the value of `flag` in `flags`.
fn with_flag(mut flags: Vec<String>, flag: &str, value: String) -> Vec<String> {
    let at = flags.iter().position(|f| f == flag).unwrap();
    flags[at + 1] = value;
    flags
}

#[test]
fn a_taken_client_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let flags = with_flag(
        lone_member_flags(),
        "--listen-client-urls",
        format!("http://{addr}"),
    );
    let (status, log) = exits_with(dir.path(), &flags);
    assert!(!status.success(), "{status}: {log}");
    assert!(log.contains(&addr), "the error does not name {addr}:\n{log}");
}

#[test]
fn a_taken_peer_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let flags = with_flag(
        lone_member_flags(),
        "--listen-peer-urls",
        format!("http://{addr}"),
    );
    let (status, log) = exits_with(dir.path(), &flags);
    assert!(!status.success(), "{status}: {log}");
    assert!(log.contains(&addr), "the error does not name {addr}:\n{log}");
}

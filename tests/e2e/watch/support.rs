//! Shared by the watch tests: a raw Watch stream over our own proto client, a background
//! `etcdctl` whose output is read with a deadline, and the server's watcher gauges.

use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

pub use concord_recipes::kv::prefix_end;

pub use crate::background::{Etcdctl, WAIT};
use crate::harness::Server;

/// A new HTTP/2 connection to `server`: streams on different connections do not share
/// flow-control windows, so a stalled one cannot hold up the others.
pub async fn connection(server: &Server) -> Channel {
    Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .expect("connect to concord")
}

/// A create request for `key` (and `range_end`, etcd's convention: empty = the key alone,
/// `"\0"` = every key from `key` on).
pub fn create(key: &[u8], range_end: &[u8]) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    }
}

/// Whether a response is a progress notification: no events and not a control response.
pub fn is_progress(r: &WatchResponse) -> bool {
    r.events.is_empty() && !r.created && !r.canceled && r.compact_revision == 0
}

/// The response header's revision.
pub fn revision(r: &WatchResponse) -> i64 {
    r.header.as_ref().expect("every response has a header").revision
}

/// One bidirectional Watch stream, driven request by request.
pub struct RawWatch {
    /// Where create, cancel and progress requests go.
    pub requests: RequestSender,
    /// The server's responses, in the order it sent them.
    pub responses: Streaming<WatchResponse>,
}

/// The request half of a [`RawWatch`], cloneable so a reader task can own the responses.
#[derive(Clone)]
pub struct RequestSender(mpsc::Sender<WatchRequest>);

impl RequestSender {
    async fn send(&self, request: RequestUnion) {
        self.0
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("watch stream is open");
    }

    pub async fn create(&self, request: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(request)).await;
    }

    pub async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await;
    }

    pub async fn request_progress(&self) {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await;
    }
}

impl RawWatch {
    /// Opens a Watch stream on `channel`.
    pub async fn open(channel: &Channel) -> RawWatch {
        let (tx, rx) = mpsc::channel(64);
        // tonic's default 4 MiB receive limit on purpose: the server cuts catch-up windows into
        // responses of about --max-request-bytes at revision boundaries, so a client with
        // default limits must get every response (etcd itself can exceed it here).
        let mut client = WatchClient::new(channel.clone());
        let responses = client
            .watch(ReceiverStream::new(rx))
            .await
            .expect("open Watch stream")
            .into_inner();
        RawWatch {
            requests: RequestSender(tx),
            responses,
        }
    }

    /// The next response, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(status)) => panic!("watch stream failed: {status}"),
            Err(_) => panic!("no watch response within {WAIT:?}"),
        }
    }

    /// Sends `request` and returns its `created` response, asserting it is one.
    pub async fn created(&mut self, request: WatchCreateRequest) -> WatchResponse {
        self.requests.create(request).await;
        let response = self.next().await;
        assert!(
            response.created && !response.canceled && response.events.is_empty(),
            "expected a created response, got {response:?}"
        );
        response
    }

    /// Asks for progress and returns every response that arrives before the progress
    /// response: the server answers once every watch of the stream has been sent all its
    /// events up to the current revision, so these are all of them.
    pub async fn until_progress(&mut self) -> (Vec<WatchResponse>, WatchResponse) {
        self.requests.request_progress().await;
        let mut before = Vec::new();
        loop {
            let response = self.next().await;
            if response.watch_id == -1 && is_progress(&response) {
                return (before, response);
            }
            before.push(response);
        }
    }
}

/// Reads a gauge from `/metrics`.
pub fn gauge(server: &Server, name: &str) -> i64 {
    let (status, body) = server.http_get("/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
}

/// Waits until `/metrics` reports `name` == `want`.
pub async fn wait_for_gauge(server: &Server, name: &str, want: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = gauge(server, name);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

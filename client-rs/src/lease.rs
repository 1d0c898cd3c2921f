//! Lease keep-alives on one LeaseKeepAlive stream that every session of a client shares,
//! pipelined: each keep-alive is sent as soon as it is asked for, and answers are handed to
//! whoever waits for that lease, in order. So the keep-alives of a thousand sessions never
//! queue behind each other's round trips.
//!
//! A keep-alive abandoned half-way (timed out, cancelled) leaves its place in its lease's
//! queue, so its late answer is dropped rather than read as the next one's. When the stream
//! breaks, every waiter gets the error and the next keep-alive opens a new stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

use crate::endpoints::Conn;
use crate::endpoints::MAX_RESPONSE_BYTES;

/// Who waits for an answer about each lease, oldest first.
type Waiters = Arc<Mutex<HashMap<i64, VecDeque<oneshot::Sender<Result<i64, Status>>>>>>;

/// The shared keep-alive stream, opened on first use and after any failure.
#[derive(Default)]
pub(crate) struct KeepAlives {
    stream: tokio::sync::Mutex<Option<Shared>>,
}

/// An open stream: where requests go, who waits, and on which channel.
struct Shared {
    index: usize,
    generation: u64,
    requests: mpsc::UnboundedSender<LeaseKeepAliveRequest>,
    waiters: Waiters,
    /// Set once the answers stopped (before the waiters are failed).
    ended: Arc<AtomicBool>,
}

impl KeepAlives {
    /// Renews lease `id` once over `conn`: the TTL it now has (0: the lease is gone).
    pub(crate) async fn renew(&self, conn: Conn, id: i64) -> Result<i64, Status> {
        let answer = {
            let mut slot = self.stream.lock().await;
            let reusable = slot.as_ref().is_some_and(|s| {
                s.index == conn.index && s.generation == conn.generation && !s.ended.load(Ordering::SeqCst)
            });
            if !reusable {
                *slot = Some(open(conn).await?);
            }
            let Some(shared) = slot.as_ref() else {
                return Err(Status::internal("keep-alive stream missing"));
            };
            let (tx, rx) = oneshot::channel();
            lock(&shared.waiters).entry(id).or_default().push_back(tx);
            // A stream that ended after the check above has failed its waiters already.
            if shared.ended.load(Ordering::SeqCst)
                || shared.requests.send(LeaseKeepAliveRequest { id }).is_err()
            {
                *slot = None;
                return Err(Status::unavailable("the keep-alive stream is closed"));
            }
            rx
        };
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the keep-alive stream ended")))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens a stream on `conn` and the task that hands its answers out.
async fn open(conn: Conn) -> Result<Shared, Status> {
    let (requests, outbound) = mpsc::unbounded_channel();
    let responses = LeaseClient::new(conn.channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .lease_keep_alive(UnboundedReceiverStream::new(outbound))
        .await?
        .into_inner();
    let waiters = Waiters::default();
    let ended = Arc::new(AtomicBool::new(false));
    tokio::spawn(hand_out(responses, waiters.clone(), ended.clone()));
    Ok(Shared {
        index: conn.index,
        generation: conn.generation,
        requests,
        waiters,
        ended,
    })
}

/// Gives each answer to the oldest waiter for its lease; when the stream ends, fails everyone.
async fn hand_out(
    mut responses: tonic::Streaming<LeaseKeepAliveResponse>,
    waiters: Waiters,
    ended_flag: Arc<AtomicBool>,
) {
    let ended = loop {
        match responses.message().await {
            Ok(Some(answer)) => {
                let waiter = lock(&waiters).get_mut(&answer.id).and_then(VecDeque::pop_front);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(answer.ttl)); // gone if it gave up: dropped
                }
            }
            Ok(None) => break Status::unavailable("the server closed the keep-alive stream"),
            Err(status) => break status,
        }
    };
    ended_flag.store(true, Ordering::SeqCst);
    for (_, queue) in lock(&waiters).drain() {
        for waiter in queue {
            let _ = waiter.send(Err(ended.clone()));
        }
    }
}

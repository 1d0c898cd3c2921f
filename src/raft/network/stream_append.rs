//! `RaftPeer.StreamAppend`, leader side: openraft's AppendEntries requests to one follower go
//! out on one gRPC stream, each as soon as openraft makes it, and the answers come back in
//! order. With one call per request (openraft's default), a request waits for the answer to the
//! one before: after each write, the entry-less request that tells the follower the new commit
//! index held up the next write's entries for a whole round trip.
//!
//! A follower that leaves a request unanswered for the call's time to live is reported
//! unreachable; an idle stream (nothing asked) waits as long as it must.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_proto::raftpb::JsonMessage;
use futures::{Stream, StreamExt};
use openraft::base::BoxStream;
use openraft::errors::{NetworkError, RPCError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tonic::Streaming;

use super::faults::{self, Fate};
use super::{PeerRpc, TypeConfig, append_message, io, observe_round_trip, rpc_error};

/// What openraft reads back: one result per request, in order.
pub type Results<'s> = BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// Opens the stream to member `target` through `client` and sends it what `input` brings.
///
/// The first request is taken before the call is made: openraft backs off from an unreachable
/// follower while it makes a request, so a follower that cannot be connected to must not be
/// called before that.
pub async fn open<S>(
    mut client: PeerRpc,
    target: u64,
    url: String,
    mut input: S,
    option: RPCOption,
) -> Result<Results<'static>, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let Some(first) = input.next().await else {
        return Ok(Box::pin(futures::stream::empty()));
    };
    let input = futures::stream::once(async move { first }).chain(input);
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let broken: Arc<Mutex<Option<String>>> = Arc::default();
    let messages = {
        let (sent, broken, to) = (sent.clone(), broken.clone(), url.clone());
        // A request a test fault loses ends the stream, as a broken connection would.
        let input = input.then(move |rpc| {
            let to = to.clone();
            async move { (faults::outbound(&to).await, rpc) }
        });
        input.scan((), move |(), (fate, rpc)| {
            let message = match append_message(&rpc) {
                Ok(_) if fate == Fate::Lost => {
                    if let Ok(mut broken) = broken.lock() {
                        *broken = Some(format!("the link to member {target:x} is cut (test fault)"));
                    }
                    None
                }
                Ok(message) => {
                    if let Ok(mut sent) = sent.lock() {
                        sent.push_back(Instant::now());
                    }
                    Some(message)
                }
                Err(err) => {
                    if let Ok(mut broken) = broken.lock() {
                        *broken = Some(format!("cannot encode entries for member {target:x}: {err}"));
                    }
                    None
                }
            };
            futures::future::ready(message)
        })
    };
    let ttl = option.hard_ttl();
    let responses = match tokio::time::timeout(ttl, client.stream_append(messages)).await {
        Ok(call) => call.map_err(|status| rpc_error(&status))?.into_inner(),
        Err(_) => {
            let why = format!("member {target:x} did not take the replication stream within {ttl:?}");
            return Err(RPCError::Unreachable(Unreachable::new(&io(why))));
        }
    };
    let answers = Answers {
        url,
        responses,
        sent,
        broken,
        ttl,
        target,
    };
    Ok(Box::pin(futures::stream::unfold(
        Some(answers),
        |answers| async move {
            let mut answers = answers?;
            let result = answers.next().await?;
            let go_on = result.is_ok();
            Some((result, go_on.then_some(answers)))
        },
    )))
}

/// The follower's side of the stream, with what is needed to time its answers.
struct Answers {
    /// The follower's peer URL.
    url: String,
    responses: Streaming<JsonMessage>,
    /// When each request not yet answered was sent, oldest first.
    sent: Arc<Mutex<VecDeque<Instant>>>,
    /// Why the requests stopped early, if they did.
    broken: Arc<Mutex<Option<String>>>,
    ttl: Duration,
    target: u64,
}

impl Answers {
    /// The next answer; `None` once the follower has ended the stream.
    async fn next(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        loop {
            match tokio::time::timeout(self.ttl, self.responses.message()).await {
                Ok(Ok(Some(answer))) => {
                    if faults::inbound(&self.url) == Fate::Lost {
                        let why = format!("an answer from member {:x} was lost (test fault)", self.target);
                        return Some(Err(RPCError::Unreachable(Unreachable::new(&io(why)))));
                    }
                    self.answered();
                    return Some(decode(&answer));
                }
                Ok(Ok(None)) => {
                    let broken = self.broken.lock().ok().and_then(|mut b| b.take());
                    return broken.map(|why| Err(RPCError::Network(NetworkError::new(&io(why)))));
                }
                Ok(Err(status)) => return Some(Err(rpc_error(&status))),
                Err(_idle_or_late) => {
                    let oldest = self.sent.lock().ok().and_then(|sent| sent.front().copied());
                    if oldest.is_some_and(|sent| sent.elapsed() >= self.ttl) {
                        let why = format!(
                            "member {:x} left an append unanswered for {:?}",
                            self.target, self.ttl
                        );
                        return Some(Err(RPCError::Unreachable(Unreachable::new(&io(why)))));
                    }
                }
            }
        }
    }

    /// Records the round trip of the oldest request, which this answer is for.
    fn answered(&self) {
        if let Some(sent) = self.sent.lock().ok().and_then(|mut sent| sent.pop_front()) {
            observe_round_trip(self.target, sent);
        }
    }
}

/// Decodes one answer: the JSON of openraft's `StreamAppendResult`.
fn decode(answer: &JsonMessage) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
    serde_json::from_slice(&answer.json)
        .map_err(|e| RPCError::Network(NetworkError::new(&io(format!("bad answer from peer: {e}")))))
}

//! `RaftPeer.StreamAppend`, follower side: a leader's AppendEntries requests arrive on one
//! stream and go to openraft's pipelined [`Raft::stream_append`], which hands each to the core
//! as it comes and answers them in order. A request that cannot be decoded, or a broken inbound
//! stream, ends the stream with that error after the answers to everything before it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use concord_proto::raftpb::{AppendEntriesMessage, JsonMessage};
use futures::{Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;
use tonic::{Status, Streaming};

use super::{Raft, TypeConfig, append_request};

/// The answers sent back on a `StreamAppend` call.
pub type Answers = Pin<Box<dyn Stream<Item = Result<JsonMessage, Status>> + Send + 'static>>;

/// Feeds the requests of `inbound`, sent by member `sender`, to `raft` and returns its answers.
pub fn serve(raft: &Raft, inbound: Streaming<AppendEntriesMessage>, sender: u64) -> Answers {
    let failure: Arc<Mutex<Option<Status>>> = Arc::default();
    let requests = requests(inbound, sender, failure.clone());
    let answers = raft.stream_append(requests).map(|answer| match answer {
        Ok(result) => serde_json::to_vec(&result)
            .map(|json| JsonMessage { json })
            .map_err(|e| Status::internal(e.to_string())),
        Err(fatal) => Err(Status::unavailable(format!("raft stopped: {fatal}"))),
    });
    // After the last answer: why the inbound stream ended early, if it did.
    let failed = futures::stream::once(async move { failure.lock().ok().and_then(|mut f| f.take()) })
        .filter_map(|failure| async move { failure.map(Err) });
    Box::pin(answers.chain(failed))
}

/// The decoded requests of `inbound`; the first failure ends them and is left in `failure`.
fn requests(
    inbound: Streaming<AppendEntriesMessage>,
    sender: u64,
    failure: Arc<Mutex<Option<Status>>>,
) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static {
    futures::stream::unfold(inbound, move |mut inbound| {
        let failure = failure.clone();
        async move {
            let decoded = match inbound.message().await {
                Ok(Some(message)) => append_request(&message, sender),
                Ok(None) => return None,
                Err(status) => Err(status),
            };
            match decoded {
                Ok(request) => Some((request, inbound)),
                Err(status) => {
                    if let Ok(mut failure) = failure.lock() {
                        *failure = Some(status);
                    }
                    None
                }
            }
        }
    })
}

//! One watch on its own bidirectional Watch stream, as the recipes' [`WatchStream`].
//!
//! A stream per watch keeps the mapping trivial (every response is this watch's) and lets a
//! dropped [`WatchStream`] end the watch on the server at once: dropping it resets the HTTP/2
//! stream, and the server removes the watcher.

use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use concord_proto::mvccpb::Event;
use concord_proto::rpctypes;
use concord_recipes::{Error, WatchBatch, WatchStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::endpoints::MAX_RESPONSE_BYTES;

/// An open watch: the request side (kept open, since closing it ends the stream on the
/// server) and the responses.
struct Open {
    _requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

/// Opens a Watch stream on `channel`, sends `create`, and waits for the server to confirm it.
/// A refused or compacted watch is an error here; afterwards errors end the stream.
pub(crate) async fn open(channel: Channel, create: WatchCreateRequest) -> Result<WatchStream, Status> {
    let (requests, outbound) = mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    };
    requests
        .send(create)
        .await
        .map_err(|_| Status::internal("watch request channel closed"))?;
    let mut client = WatchClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let mut responses = client.watch(ReceiverStream::new(outbound)).await?.into_inner();
    // The first response confirms (or refuses) the watch.
    let first = responses
        .message()
        .await?
        .ok_or_else(|| Status::unavailable("the server closed the watch stream before answering"))?;
    if first.compact_revision > 0 {
        return Err(compacted());
    }
    if first.canceled {
        return Err(Status::failed_precondition(reason(&first)));
    }
    let open = Open {
        _requests: requests,
        responses,
    };
    // Only a `created` response confirms; anything else is already part of the watch.
    let unread = (!first.created).then_some(first);
    Ok(Box::pin(batches(open, unread)))
}

/// The batches of an open watch, until its first error.
fn batches(
    open: Open,
    unread: Option<WatchResponse>,
) -> impl futures::Stream<Item = concord_recipes::error::Result<WatchBatch>> + Send + 'static {
    let state = (open, unread, Vec::<Event>::new());
    futures::stream::unfold(Some(state), |state| async move {
        let (mut open, mut unread, mut pending) = state?;
        loop {
            let next = match unread.take() {
                Some(response) => Ok(Some(response)),
                None => open.responses.message().await,
            };
            let response = match next {
                Ok(Some(response)) => response,
                Ok(None) => {
                    let ended = Error::WatchEnded("the server closed the watch stream".into());
                    return Some((Err(ended), None));
                }
                Err(status) => return Some((Err(Error::Store(status)), None)),
            };
            if response.compact_revision > 0 {
                return Some((Err(Error::Store(compacted())), None));
            }
            if response.canceled {
                return Some((Err(Error::WatchEnded(reason(&response))), None));
            }
            pending.extend(response.events);
            if response.fragment {
                continue; // the rest of this revision's events follow
            }
            let batch = WatchBatch {
                revision: response.header.map_or(0, |h| h.revision),
                events: std::mem::take(&mut pending),
            };
            return Some((Ok(batch), Some((open, None, pending))));
        }
    })
}

/// The status of a compacted watch, as the server's in-process watches report it.
fn compacted() -> Status {
    rpctypes::COMPACTED.status()
}

fn reason(response: &WatchResponse) -> String {
    if response.cancel_reason.is_empty() {
        "watch canceled by the server".to_string()
    } else {
        response.cancel_reason.clone()
    }
}

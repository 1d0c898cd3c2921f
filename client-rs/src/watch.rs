//! One watch on its own bidirectional Watch stream, as the recipes' [`WatchStream`].
//!
//! A stream per watch keeps the mapping trivial (every response is this watch's) and lets a
//! dropped [`WatchStream`] end the watch on the server at once: dropping it resets the HTTP/2
//! stream, and the server removes the watcher.

use crate::credentials::AuthChannel as Channel;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use concord_proto::mvccpb::Event;
use concord_proto::rpctypes;
use concord_recipes::{Error, WatchBatch, WatchStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

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
        return Err(compacted(first.compact_revision));
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

/// Every change under a prefix, as a stream that outlives its Watch streams: see
/// [`Client::watch_prefix`](crate::Client::watch_prefix).
#[must_use = "a watch does nothing unless polled"]
pub struct PrefixWatch {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = crate::Result<WatchBatch>> + Send>>,
}

impl std::fmt::Debug for PrefixWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixWatch").finish_non_exhaustive()
    }
}

impl futures::Stream for PrefixWatch {
    type Item = crate::Result<WatchBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl crate::Client {
    /// Every change to the keys under `prefix` from revision `from` on (0: from now), one
    /// batch per revision or more, in order. The watch reopens itself from the revision after
    /// the last batch it yielded whenever its stream breaks (an endpoint died, the cluster was
    /// unreachable), with a capped, jittered backoff, for as long as it takes, so it neither
    /// misses nor repeats a change. It ends only with an error retrying cannot fix: the
    /// history from the resume point was compacted ([`ErrorKind::Compacted`](crate::ErrorKind)),
    /// or the server refused the watch.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use futures::StreamExt;
    ///
    /// let mut jobs = client.watch_prefix("jobs/", 0).await?;
    /// while let Some(batch) = jobs.next().await {
    ///     for event in batch?.events {
    ///         println!("{:?}", event.kv.map(|kv| String::from_utf8_lossy(&kv.key).into_owned()));
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch_prefix(&self, prefix: impl Into<Vec<u8>>, from: i64) -> crate::Result<PrefixWatch> {
        use concord_recipes::Kv;
        use concord_recipes::follow::{Follow, Step};

        let prefix = prefix.into();
        let start = if from > 0 {
            from
        } else {
            let now = self
                .range(concord_proto::etcdserverpb::RangeRequest {
                    key: prefix.clone(),
                    count_only: true,
                    ..Default::default()
                })
                .await?;
            now.header.map_or(0, |h| h.revision) + 1
        };
        let options = self.options().clone();
        let range_end = concord_recipes::kv::prefix_end(&prefix);
        let follow = Follow::new(self.clone(), prefix, range_end, start)
            .with_backoff(move |n| options.jittered_backoff(n))
            .reopening_forever();
        let stream = futures::stream::unfold(Some(follow), |follow| async move {
            let mut follow = follow?;
            match follow.next().await {
                Ok(Step::Batch(batch)) => Some((Ok(batch), Some(follow))),
                Ok(Step::Compacted) => {
                    let status = rpctypes::COMPACTED.status();
                    Some((Err(crate::Error::Status(status)), None))
                }
                Err(err) => Some((Err(err.into()), None)),
            }
        });
        Ok(PrefixWatch {
            stream: Box::pin(stream),
        })
    }
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
                return Some((Err(Error::Store(compacted(response.compact_revision))), None));
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

/// The metadata key of a compacted watch's status that carries the compact revision.
pub(crate) const COMPACT_REVISION: &str = "concord-compact-revision";

/// The status of a watch compacted at `compact_revision`, as the server's in-process watches
/// report it, with the revision in its metadata for [`ErrorKind::Compacted`](crate::ErrorKind).
fn compacted(compact_revision: i64) -> Status {
    let mut status = rpctypes::COMPACTED.status();
    if let Ok(value) = compact_revision.to_string().parse() {
        status.metadata_mut().insert(COMPACT_REVISION, value);
    }
    status
}

fn reason(response: &WatchResponse) -> String {
    if response.cancel_reason.is_empty() {
        "watch canceled by the server".to_string()
    } else {
        response.cancel_reason.clone()
    }
}

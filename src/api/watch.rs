//! etcd's `Watch` service: one task per bidirectional stream, many watches per stream.
//!
//! The task reads requests (create, cancel, progress) and sends control responses itself;
//! events reach the same bounded channel from the [`WatchHub`]. `created` is sent before a
//! watcher is registered and `canceled` after it is removed, so neither can overtake events;
//! a progress response waits until every watcher of the stream has caught up, so it never
//! reports a revision whose events are still to come.
//!
//! While auth is on, a create needs read permission on the watched range (a refused one is
//! answered `created` and `canceled` with etcd's reason), and a watcher whose user later loses
//! it is canceled with `etcdserver: permission denied` by apply itself, before any later event
//! (see `WatchHub::cancel_where`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::watch_server::Watch;
use concord_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::auth::{AuthError, Caller, Need};
use crate::watch::hub::STREAM_CAPACITY;
use crate::watch::{Sink, StreamId, WatchHub, WatchOptions};

/// The Watch service over the shared [`Api`].
#[derive(Clone)]
pub struct WatchService {
    api: Arc<Api>,
    progress_interval: Duration,
}

impl WatchService {
    /// A Watch service; watchers that ask for progress notifications get one every
    /// `progress_interval` without events.
    pub fn new(api: Arc<Api>, progress_interval: Duration) -> Self {
        Self {
            api,
            progress_interval,
        }
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// etcd's conventions for a create request: an empty key is `"\0"`, the smallest key. `owner`
/// created it.
pub(crate) fn options(create: &WatchCreateRequest, owner: Caller) -> WatchOptions {
    let key = if create.key.is_empty() {
        vec![0]
    } else {
        create.key.clone()
    };
    WatchOptions {
        key,
        range_end: create.range_end.clone(),
        no_put: create.filters.contains(&(FilterType::Noput as i32)),
        no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: create.prev_kv,
        progress_notify: create.progress_notify,
        fragment: create.fragment,
        owner,
    }
}

/// How often a deferred progress request checks whether its stream has caught up.
const PROGRESS_RETRY: Duration = Duration::from_millis(10);

/// One stream's request loop.
struct StreamTask {
    api: Arc<Api>,
    hub: Arc<WatchHub>,
    stream: StreamId,
    sink: Sink,
    /// Who opened the stream (or why its token was refused).
    caller: Result<Caller, AuthError>,
    /// A progress request waits for a watcher of the stream that is still catching up.
    progress_deferred: bool,
}

impl StreamTask {
    /// Handles one request; false when the client is gone.
    async fn handle(&mut self, request: WatchRequest) -> bool {
        let response = match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => return self.create(&create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if !self.hub.cancel(self.stream, cancel.watch_id) {
                    return true; // etcd answers nothing for an unknown watch id
                }
                WatchResponse {
                    header: header(self.hub.current_revision()),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..Default::default()
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Requests made while one is deferred are answered together, as in etcd.
                self.progress_deferred = true;
                return self.answer_progress().await;
            }
            None => return true,
        };
        self.sink.send(response.into()).await.is_ok()
    }

    /// Sends the progress response a request is waiting for, if every watcher of the stream
    /// has caught up (see [`WatchHub::progress_revision`]); false when the client is gone.
    async fn answer_progress(&mut self) -> bool {
        let Some(revision) = self.hub.progress_revision(self.stream) else {
            return true; // retried every PROGRESS_RETRY
        };
        self.progress_deferred = false;
        let response = WatchResponse {
            header: header(revision),
            // Not tied to one watch: the client hands it to every watcher of the stream.
            watch_id: -1,
            ..Default::default()
        };
        self.sink.send(response.into()).await.is_ok()
    }

    /// The stream's caller, if it may read `key`..`range_end` now.
    fn permitted(&self, key: &[u8], range_end: &[u8]) -> Result<Caller, AuthError> {
        let caller = self.caller.as_ref().map_err(|err| *err)?;
        self.api.auth().authorize(caller, &[Need::Read(key, range_end)])?;
        Ok(caller.clone())
    }

    /// Answers a create request that is refused: `created` and `canceled` at once.
    async fn refuse(&self, reason: String) -> bool {
        let refused = WatchResponse {
            header: header(self.hub.current_revision()),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        self.sink.send(refused.into()).await.is_ok()
    }

    async fn create(&mut self, create: &WatchCreateRequest) -> bool {
        let owner = match self.permitted(&create.key, &create.range_end) {
            Ok(owner) => owner,
            Err(err) => return self.refuse(err.to_string()).await,
        };
        let (id, current) = match self.hub.reserve(self.stream, create.watch_id) {
            Ok(reserved) => reserved,
            Err(reason) => return self.refuse(reason.to_string()).await,
        };
        let created = WatchResponse {
            header: header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if self.sink.send(created.into()).await.is_err() {
            return false;
        }
        let start = self.hub.start_revision(create.start_revision, current);
        self.hub
            .register(self.stream, id, options(create, owner), start, self.sink.clone());
        true
    }

    async fn run(mut self, mut inbound: Streaming<WatchRequest>, progress_interval: Duration) {
        let mut ticker = tokio::time::interval(progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        let mut retry = tokio::time::interval(PROGRESS_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Like etcd, a client that closes its sending side keeps its watches: the stream ends
        // when the client goes (the HTTP gateway's watch sends its requests, then only reads).
        let mut sending = true;
        loop {
            tokio::select! {
                message = inbound.message(), if sending => match message {
                    Ok(Some(request)) => {
                        if !self.handle(request).await {
                            break;
                        }
                    }
                    Ok(None) => sending = false,
                    Err(_) => break,
                },
                _ = ticker.tick() => self.hub.progress_tick(self.stream),
                _ = retry.tick(), if self.progress_deferred => {
                    if !self.answer_progress().await {
                        break;
                    }
                }
                () = self.sink.closed() => break,
            }
        }
        self.hub.remove_stream(self.stream);
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Streams of one connection share a key, so the hub wakes them together.
        let remote = request.remote_addr().or_else(|| {
            request
                .extensions()
                .get::<crate::net::tls::TlsPeer>()
                .and_then(|peer| peer.remote_addr)
        });
        let connection = remote.map_or(0, |addr| {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(addr)
        });
        let caller = self.api.auth().caller(&request);
        let inbound = request.into_inner();
        let hub = self.api.node().hub.clone();
        let (sink, responses) = mpsc::channel(STREAM_CAPACITY);
        let task = StreamTask {
            api: self.api.clone(),
            stream: hub.new_stream(connection),
            hub,
            sink,
            caller,
            progress_deferred: false,
        };
        tokio::spawn(task.run(inbound, self.progress_interval));
        let api = self.api.clone();
        let outbound = ReceiverStream::new(responses)
            .flat_map(futures::stream::iter)
            .map(move |mut response| {
                api.fill_header(&mut response.header);
                Ok(response)
            });
        Ok(Response::new(Box::pin(outbound)))
    }
}

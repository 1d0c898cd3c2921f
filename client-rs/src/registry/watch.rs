//! [`ServiceWatch`]: a service's membership as a stream that outlives its gRPC stream.
//!
//! It opens the server's Registry.Watch from the revision after the last one it reported.
//! When the stream breaks (an endpoint died, the cluster was unreachable for a while) it opens
//! a new one, on the next endpoint if need be, after a capped backoff, for as long as it takes.
//! The server's first answer on a new stream is the whole membership; the watch compares it
//! with what it knew and reports only the difference, so a disconnect never shows as instances
//! leaving. It ends only on an error that retrying cannot fix (a bad service name, permission
//! denied), with that error.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use concord_proto::concord::registry::v1 as pb;
use concord_recipes::registry::{self as recipe, Instance, MembershipChange, MembershipView};
use futures::Stream;

use super::from_proto;
use crate::client::Client;
use crate::endpoints::{OpenStream, is_transient, registry};
use crate::error::Result;

/// A service's membership at one revision, and how it got there from the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// The revision this membership is as of.
    pub revision: i64,
    /// Every instance, by ID. Shared with the watch: cheap to keep, copied only if kept
    /// while the watch moves on.
    pub instances: Arc<BTreeMap<String, Instance>>,
    /// The changes since the previous membership. The first membership lists every instance
    /// as [`Added`](MembershipChange::Added).
    pub changes: Vec<MembershipChange>,
}

/// A service's memberships, as a stream: see [`Client::watch_service`].
pub struct ServiceWatch {
    stream: Pin<Box<dyn Stream<Item = Result<Membership>> + Send>>,
}

impl ServiceWatch {
    pub(crate) fn new(client: Client, service: String) -> Self {
        let follower = Follower {
            client,
            service,
            view: MembershipView::default(),
            next_revision: 0,
            stream: None,
            failures: 0,
            started: false,
        };
        let stream = futures::stream::unfold(Some(follower), |follower| async move {
            let mut follower = follower?;
            match follower.next().await {
                Ok(membership) => Some((Ok(membership), Some(follower))),
                Err(err) => Some((Err(err), None)),
            }
        });
        Self {
            stream: Box::pin(stream),
        }
    }
}

impl Stream for ServiceWatch {
    type Item = Result<Membership>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// The state behind a [`ServiceWatch`].
struct Follower {
    client: Client,
    service: String,
    /// The membership as last reported.
    view: MembershipView,
    /// Where a new stream starts (0 before the first answer: now).
    next_revision: i64,
    stream: Option<OpenStream<pb::WatchResponse>>,
    /// Failures in a row, for the backoff.
    failures: usize,
    /// Whether the first membership was reported.
    started: bool,
}

impl Follower {
    async fn next(&mut self) -> Result<Membership> {
        loop {
            let stream = match self.stream.as_mut() {
                Some(stream) => stream,
                None => {
                    let request = pb::WatchRequest {
                        service: self.service.clone(),
                        start_revision: self.next_revision,
                        ..Default::default()
                    };
                    match self
                        .client
                        .transport()
                        .open_stream(|channel| {
                            let request = request.clone();
                            async move { registry(channel).watch(request).await }
                        })
                        .await
                    {
                        Ok(stream) => self.stream.insert(stream),
                        Err(status) if is_transient(&status) => {
                            self.pause(&status).await;
                            continue;
                        }
                        Err(status) => return Err(status.into()),
                    }
                }
            };
            let status = match stream.responses.message().await {
                Ok(Some(response)) => {
                    self.failures = 0;
                    if let Some(membership) = self.apply(response)? {
                        return Ok(membership);
                    }
                    continue;
                }
                Ok(None) => tonic::Status::unavailable("the server ended the registry watch"),
                Err(status) => status,
            };
            if !is_transient(&status) {
                return Err(status.into());
            }
            if let Some(broken) = self.stream.take() {
                self.client.transport().stream_broke(&broken, &status);
            }
            self.pause(&status).await;
        }
    }

    /// Waits before reopening a broken stream: the client's retry backoff, capped.
    async fn pause(&mut self, status: &tonic::Status) {
        tracing::debug!(service = %self.service, error = %status, "registry watch broke; reopening");
        let pause = self.client.options().backoff(self.failures);
        self.failures += 1;
        tokio::time::sleep(pause).await;
    }

    /// Applies one answer; the membership to report, if it changed anything (the first
    /// answer is always reported).
    fn apply(&mut self, response: pb::WatchResponse) -> Result<Option<Membership>> {
        let revision = response.header.map_or(0, |h| h.revision);
        let instances = match response.reset {
            true => Some(
                response
                    .instances
                    .into_iter()
                    .map(from_proto)
                    .collect::<Result<_>>()?,
            ),
            false => None,
        };
        let mut changes = Vec::with_capacity(response.changes.len());
        for change in response.changes {
            let Some(instance) = change.instance else { continue };
            changes.push(match pb::change::Type::try_from(change.r#type) {
                Ok(pb::change::Type::Removed) => MembershipChange::Removed { id: instance.id },
                Ok(pb::change::Type::Added) => MembershipChange::Added(from_proto(instance)?),
                _ => MembershipChange::Updated(from_proto(instance)?),
            });
        }
        let changes = self.view.apply(recipe::Membership {
            revision,
            instances,
            changes,
        });
        self.next_revision = revision + 1;
        if changes.is_empty() && self.started {
            return Ok(None);
        }
        self.started = true;
        Ok(Some(Membership {
            revision,
            instances: self.view.instances(),
            changes,
        }))
    }
}

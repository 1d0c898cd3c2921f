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
use crate::endpoints::registry;
use crate::error::Result;
use crate::resuming::Resuming;

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
#[must_use = "a service watch does nothing unless polled"]
pub struct ServiceWatch {
    stream: Pin<Box<dyn Stream<Item = Result<Membership>> + Send>>,
}

impl ServiceWatch {
    pub(crate) fn new(client: Client, service: String) -> Self {
        let follower = Follower {
            stream: Resuming::new(client, format!("service {service}")),
            service,
            view: MembershipView::default(),
            next_revision: 0,
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

impl std::fmt::Debug for ServiceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceWatch").finish_non_exhaustive()
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
    stream: Resuming<pb::WatchResponse>,
    service: String,
    /// The membership as last reported.
    view: MembershipView,
    /// Where a new stream starts (0 before the first answer: now).
    next_revision: i64,
    /// Whether the first membership was reported.
    started: bool,
}

impl Follower {
    async fn next(&mut self) -> Result<Membership> {
        loop {
            let request = pb::WatchRequest {
                service: self.service.clone(),
                start_revision: self.next_revision,
                ..Default::default()
            };
            let response = self
                .stream
                .next(|channel| {
                    let request = request.clone();
                    async move { registry(channel).watch(request).await }
                })
                .await?;
            if let Some(membership) = self.apply(response)? {
                return Ok(membership);
            }
        }
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

//! Publish/subscribe through the server's `concord.pubsub.v1.PubSub` service.
//!
//! A message's revision is its sequence number: unique and increasing in publication order.
//! A [`Subscription`] remembers the revision of the last message it yielded; when its stream
//! breaks (an endpoint died, the cluster was unreachable for a while) it subscribes again from
//! the next revision, on the next endpoint if need be, after a capped backoff, so it delivers
//! every message once, in order, without gaps or duplicates. It ends only on an error that
//! retrying cannot fix: a start below the topic's retention (`OUT_OF_RANGE`, naming the oldest
//! revision still kept), history compacted away, permission denied.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_proto::concord::pubsub::v1 as pb;
use concord_proto::etcdserverpb::RangeRequest;
use futures::Stream;

use crate::client::Client;
use crate::endpoints::{Idempotence, pubsub};
use crate::error::Result;
use crate::resuming::Resuming;
use concord_recipes::Kv;

/// The key prefix of the server's topics (topic `t` keeps its messages under `pubsub/t/`).
pub const TOPICS_PREFIX: &str = "pubsub/";

/// One published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its revision: resume after it from `revision + 1`.
    pub revision: i64,
    /// What was published.
    pub payload: Vec<u8>,
}

/// How long a topic keeps its messages; `None` is no limit of that kind.
pub use concord_recipes::pubsub::Retention;

/// A topic's retention and what it keeps: see [`Client::topic_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    /// The topic's retention.
    pub retention: Retention,
    /// Subscribing from this revision replays every message still kept (0: none was removed).
    pub oldest_revision: i64,
    /// How many messages the topic keeps now.
    pub kept: i64,
}

impl Client {
    /// Publishes `payload` on `topic` (non-empty, without '/'); returns the message's revision.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// let revision = client.publish("orders", r#"{"id": 7}"#).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<i64> {
        let request = pb::PublishRequest {
            topic: topic.to_string(),
            payload: payload.into(),
        };
        let response = self
            .call_unary(Idempotence::Write, request, |channel, request| async move {
                pubsub(channel).publish(request).await
            })
            .await?;
        Ok(response.revision)
    }

    /// The messages published on `topic` from now on, as a stream that resumes by itself.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use futures::StreamExt;
    ///
    /// let mut orders = client.subscribe("orders").await?;
    /// while let Some(message) = orders.next().await {
    ///     let message = message?;
    ///     println!("{}: {}", message.revision, String::from_utf8_lossy(&message.payload));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        // Pin "from now on" to a revision, so an outage before the first message loses none.
        let now = Kv::range(
            self,
            RangeRequest {
                key: format!("{TOPICS_PREFIX}{topic}").into_bytes(),
                count_only: true,
                ..Default::default()
            },
        )
        .await?
        .header
        .map_or(0, |h| h.revision);
        self.subscribe_from(topic, now + 1).await
    }

    /// The messages published on `topic` at revision `from` or later, then every new one, as a
    /// stream that resumes by itself. Fails at once when `from` is below the topic's retention
    /// (`OUT_OF_RANGE`, naming the oldest revision still kept).
    pub async fn subscribe_from(&self, topic: &str, from: i64) -> Result<Subscription> {
        let mut follower = Follower {
            stream: Resuming::new(self.clone(), format!("topic {topic}")),
            topic: topic.to_string(),
            next_revision: from,
            ready: VecDeque::new(),
        };
        // Open it now, so a bad topic or start is an error here rather than on the stream.
        follower.open().await?;
        let stream = futures::stream::unfold(Some(follower), |follower| async move {
            let mut follower = follower?;
            match follower.next().await {
                Ok(message) => Some((Ok(message), Some(follower))),
                Err(err) => Some((Err(err), None)),
            }
        });
        Ok(Subscription {
            stream: Box::pin(stream),
        })
    }

    /// Sets how long `topic` keeps its messages, and trims it to that at once. A limit of zero
    /// is refused (leave it out for none).
    pub async fn set_retention(&self, topic: &str, retention: Retention) -> Result<()> {
        if retention.max_messages == Some(0) || retention.max_age.is_some_and(|age| age.as_secs() == 0) {
            return Err(crate::Error::InvalidArgument(
                "pubsub: a retention keeps at least one message and one second; leave a limit out for none"
                    .into(),
            ));
        }
        let request = pb::SetRetentionRequest {
            topic: topic.to_string(),
            retention: Some(pb::Retention {
                max_age_seconds: retention.max_age.map_or(0, |age| age.as_secs() as i64),
                max_messages: retention.max_messages.map_or(0, |max| max as i64),
            }),
        };
        self.call_unary(Idempotence::Idempotent, request, |channel, request| async move {
            pubsub(channel).set_retention(request).await
        })
        .await?;
        Ok(())
    }

    /// `topic`'s retention, the oldest revision it still keeps and how many messages.
    pub async fn topic_status(&self, topic: &str) -> Result<TopicStatus> {
        let request = pb::TopicStatusRequest {
            topic: topic.to_string(),
        };
        let status = self
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                pubsub(channel).topic_status(request).await
            })
            .await?;
        let retention = status.retention.unwrap_or_default();
        Ok(TopicStatus {
            retention: Retention {
                max_age: (retention.max_age_seconds > 0)
                    .then(|| Duration::from_secs(retention.max_age_seconds as u64)),
                max_messages: (retention.max_messages > 0).then_some(retention.max_messages as u64),
            },
            oldest_revision: status.oldest_revision,
            kept: status.kept,
        })
    }
}

/// A topic's messages, in revision order: see [`Client::subscribe`].
#[must_use = "a subscription does nothing unless polled"]
pub struct Subscription {
    stream: Pin<Box<dyn Stream<Item = Result<Message>> + Send>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// The state behind a [`Subscription`].
struct Follower {
    stream: Resuming<pb::SubscribeResponse>,
    topic: String,
    /// The first revision not yielded yet.
    next_revision: i64,
    ready: VecDeque<Message>,
}

impl Follower {
    fn request(&self) -> pb::SubscribeRequest {
        pb::SubscribeRequest {
            topic: self.topic.clone(),
            start_revision: self.next_revision,
        }
    }

    async fn open(&mut self) -> Result<()> {
        let request = self.request();
        self.stream
            .open(|channel| {
                let request = request.clone();
                async move { pubsub(channel).subscribe(request).await }
            })
            .await
    }

    async fn next(&mut self) -> Result<Message> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                self.next_revision = message.revision + 1;
                return Ok(message);
            }
            let request = self.request();
            let response = self
                .stream
                .next(|channel| {
                    let request = request.clone();
                    async move { pubsub(channel).subscribe(request).await }
                })
                .await?;
            self.ready.extend(response.messages.into_iter().map(|m| Message {
                revision: m.revision,
                payload: m.payload,
            }));
        }
    }
}

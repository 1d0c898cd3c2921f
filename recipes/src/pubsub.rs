//! Publish/subscribe over revision-ordered keys: a [`Topic`]'s messages are keys under
//! `topic/`, and a message's create revision is its sequence number.
//!
//! The store's revisions are totally ordered and a watch from revision `r` replays every
//! change from `r` on, in order, before going live. So a subscriber that remembers the last
//! revision it processed and resubscribes from the next one receives every later message once,
//! in order, with no gap, however long it was away, as long as the store still has that
//! history. When the store has compacted it away, the subscription fails with the store's
//! "required revision has been compacted" error instead of silently skipping messages.
//!
//! Retention is by lease: a message published with a lease is deleted when the lease ends.
//! A deletion only removes the key; a subscriber replaying from before it still receives the
//! message while the history is not compacted (retention bounds the live keys, compaction
//! bounds the replay).

use std::collections::VecDeque;
use std::pin::Pin;

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{RangeRequest, WatchCreateRequest};
use concord_proto::mvccpb::KeyValue;
use concord_proto::mvccpb::event::EventType;
use futures::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::kv::{Kv, WatchStream, prefix_end};
use crate::queue::{put_unique, revision_of};

/// One published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The revision that published it: its sequence number within the store, unique and
    /// increasing in publication order. Resume after it from `revision + 1`.
    pub revision: i64,
    /// Its key, under `topic/`.
    pub key: Vec<u8>,
    /// What was published.
    pub payload: Vec<u8>,
}

impl Message {
    fn from_kv(kv: KeyValue) -> Self {
        Self {
            revision: kv.create_revision,
            key: kv.key,
            payload: kv.value,
        }
    }
}

/// A subscription's messages in revision order; it ends after its first error.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<Message>> + Send>>;

/// A topic: a log of messages under the prefix `name/`.
#[derive(Clone)]
pub struct Topic<K: Kv> {
    kv: K,
    prefix: Vec<u8>,
}

impl<K: Kv> Topic<K> {
    /// The topic `name` (its messages are the keys under `name/`).
    pub fn new(kv: K, name: impl Into<Vec<u8>>) -> Self {
        let mut prefix = name.into();
        prefix.push(b'/');
        Self { kv, prefix }
    }

    /// Publishes `payload`; returns its revision. With `retention_lease`, the message is
    /// attached to that lease and deleted when it ends.
    pub async fn publish(&self, payload: impl Into<Vec<u8>>, retention_lease: Option<i64>) -> Result<i64> {
        let lease = retention_lease.unwrap_or(0);
        let (_, published) = put_unique(&self.kv, &self.prefix, payload.into(), lease, vec![]).await?;
        Ok(revision_of(&published))
    }

    /// The messages published at revision `from_revision` or later, in revision order, then
    /// every message published from now on. `from_revision` 0 means only those published after
    /// this call.
    ///
    /// The stream fails with [`Error::Store`] (code `OutOfRange`, etcd's "required revision has
    /// been compacted") if the store no longer has the history from `from_revision`, and with
    /// [`Error::WatchEnded`] if the store ends the watch.
    pub async fn subscribe(&self, from_revision: i64) -> Result<Subscription> {
        if from_revision < 0 {
            return Err(Error::InvalidArgument(format!(
                "pubsub: negative revision {from_revision}"
            )));
        }
        let watch = self
            .kv
            .watch(WatchCreateRequest {
                key: self.prefix.clone(),
                range_end: prefix_end(&self.prefix),
                start_revision: from_revision,
                ..Default::default()
            })
            .await
            .map_err(|err| compacted(err, &self.prefix, from_revision))?;
        let state = Feed {
            watch: Some(watch),
            pending: VecDeque::new(),
            prefix: self.prefix.clone(),
            from_revision,
        };
        Ok(Box::pin(futures::stream::unfold(state, Feed::next)))
    }

    /// The messages still stored (published and not yet expired), oldest first.
    pub async fn retained(&self) -> Result<Vec<Message>> {
        let read = self
            .kv
            .range(RangeRequest {
                key: self.prefix.clone(),
                range_end: prefix_end(&self.prefix),
                sort_order: SortOrder::Ascend as i32,
                sort_target: SortTarget::Create as i32,
                ..Default::default()
            })
            .await?;
        Ok(read.kvs.into_iter().map(Message::from_kv).collect())
    }
}

/// A subscription's state: the watch (`None` once it failed) and the messages of the last
/// batch not yet yielded.
struct Feed {
    watch: Option<WatchStream>,
    pending: VecDeque<Message>,
    prefix: Vec<u8>,
    from_revision: i64,
}

impl Feed {
    async fn next(mut self) -> Option<(Result<Message>, Self)> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Some((Ok(message), self));
            }
            let watch = self.watch.as_mut()?;
            let error = match watch.next().await {
                Some(Ok(batch)) => {
                    // A message is a key's creation; its deletion (retention) is not news.
                    let created = batch.events.into_iter().filter_map(|event| {
                        let kv = event.kv.filter(|kv| kv.create_revision == kv.mod_revision)?;
                        (event.r#type == EventType::Put as i32).then(|| Message::from_kv(kv))
                    });
                    self.pending.extend(created);
                    continue;
                }
                Some(Err(err)) => compacted(err, &self.prefix, self.from_revision),
                None => Error::WatchEnded(format!("topic {}", topic_name(&self.prefix))),
            };
            self.watch = None;
            return Some((Err(error), self));
        }
    }
}

/// The store's compaction error, saying which topic and revision it was about; other errors
/// unchanged.
fn compacted(err: Error, prefix: &[u8], from_revision: i64) -> Error {
    match err {
        Error::Store(status) if status.code() == tonic::Code::OutOfRange => {
            Error::Store(tonic::Status::out_of_range(format!(
                "{} (topic {}, from revision {from_revision})",
                status.message(),
                topic_name(prefix)
            )))
        }
        other => other,
    }
}

/// The topic's name, for messages.
fn topic_name(prefix: &[u8]) -> String {
    String::from_utf8_lossy(prefix.strip_suffix(b"/").unwrap_or(prefix)).into_owned()
}

#[cfg(test)]
mod tests;

//! Publish/subscribe over revision-ordered keys: a [`Topic`]'s messages are keys under
//! `topic/`, and a message's create revision is its sequence number.
//!
//! The store's revisions are totally ordered and a watch from revision `r` replays every
//! change from `r` on, in order, before going live. So a subscriber that remembers the last
//! revision it processed and resubscribes from the next one receives every later message once,
//! in order, with no gap, however long it was away, as long as the topic still keeps that
//! history. When the store has compacted it away, the subscription fails with the store's
//! "required revision has been compacted" error instead of silently skipping messages.
//!
//! **Retention.** A topic may keep only its newest N messages, or only those younger than an
//! age (or both), so a topic nobody consumes does not grow without bound. The retention and the
//! topic's *floor* (the revision after the newest message removed) are the JSON value of the
//! key `topic` itself, beside the messages. Removal takes the oldest messages first, in one txn
//! that also raises the floor, so the kept messages are always every message from the floor on.
//! A subscription that starts below the floor would replay removed messages from the history;
//! it fails instead with [`Error::OutOfRange`], naming the floor. Publishing trims the topic
//! when it is over its retention, and so does subscribing from a revision.
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{Compare, RangeRequest, TxnRequest, WatchCreateRequest};
use concord_proto::mvccpb::KeyValue;
use concord_proto::mvccpb::event::EventType;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kv::{Kv, WatchStream, delete_op, prefix_end, put_op};
use crate::queue::{put_unique, revision_of, unix_nanos};

/// How many messages one trimming txn removes at most (below etcd's default `--max-txn-ops`).
const TRIM_BATCH: usize = 100;

/// How long a topic keeps its messages; `None` is no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Messages published longer ago than this are removed (by the publisher's clock).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub max_age: Option<Duration>,
    /// Only the newest this many messages are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u64>,
}

/// A topic's retention and floor, the value of the key named after the topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct TopicState {
    #[serde(default)]
    retention: Retention,
    /// The revision after the newest message removed by retention (0: none was).
    #[serde(default)]
    floor: i64,
}

/// What [`Topic::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    /// The topic's retention.
    pub retention: Retention,
    /// The revision after the newest message removed by retention (0: none was): subscribing
    /// from it replays every message still kept.
    pub floor: i64,
    /// How many messages the topic keeps now.
    pub kept: i64,
}

/// `max_age` as whole seconds in the topic's JSON.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(age: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match age {
            Some(age) => s.serialize_u64(age.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

/// Checks a topic name: non-empty and without '/' (so no topic's messages are under another's
/// prefix).
pub fn check_topic_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "pubsub: a topic name must be non-empty and without '/': {name:?}"
        )));
    }
    Ok(())
}

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
            key: kv.key.into(),
            payload: kv.value.into(),
        }
    }
}

/// A subscription's messages in revision order; it ends after its first error.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<Message>> + Send>>;

/// A topic: a log of messages under the prefix `name/`, its state at the key `name`.
#[derive(Clone)]
pub struct Topic<K: Kv> {
    kv: K,
    /// The topic's name, for messages.
    name: String,
    /// The key holding the topic's retention and floor.
    state_key: Vec<u8>,
    /// `name/`, under which the messages are.
    prefix: Vec<u8>,
}

impl<K: Kv> Topic<K> {
    /// The topic `name` (its messages are the keys under `name/`).
    pub fn new(kv: K, name: impl Into<Vec<u8>>) -> Self {
        let state_key = name.into();
        let name = String::from_utf8_lossy(&state_key).into_owned();
        let mut prefix = state_key.clone();
        prefix.push(b'/');
        Self {
            kv,
            name,
            state_key,
            prefix,
        }
    }

    /// The topic `name` kept under `root` (its messages are the keys under `<root><name>/`),
    /// named `name` in errors.
    pub fn under(kv: K, root: &str, name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::new(kv, format!("{root}{name}"))
        }
    }

    /// Publishes `payload`; returns its revision. Trims the topic afterwards if it is over its
    /// retention.
    pub async fn publish(&self, payload: impl Into<Vec<u8>>) -> Result<i64> {
        let (_, published) = put_unique(&self.kv, &self.prefix, payload.into(), 0, vec![]).await?;
        let (state, _) = self.state(true).await?;
        if state.retention != Retention::default() {
            self.trim_at(unix_nanos()).await?;
        }
        Ok(revision_of(&published))
    }

    /// Sets the topic's retention and trims it to that at once.
    pub async fn set_retention(&self, retention: Retention) -> Result<()> {
        if retention.max_messages == Some(0) || retention.max_age == Some(Duration::ZERO) {
            return Err(Error::InvalidArgument(
                "pubsub: a retention keeps at least one message and one second; leave a limit \
                 out for none"
                    .into(),
            ));
        }
        loop {
            let (state, mod_revision) = self.state(false).await?;
            let updated = TopicState { retention, ..state };
            if self.replace_state(mod_revision, &updated, vec![]).await? {
                break;
            }
        }
        self.trim_at(unix_nanos()).await?;
        Ok(())
    }

    /// The topic's retention, floor and number of messages kept (after trimming it).
    pub async fn status(&self) -> Result<TopicStatus> {
        let floor = self.trim_at(unix_nanos()).await?;
        let (state, _) = self.state(false).await?;
        let count = self
            .kv
            .range(RangeRequest {
                key: self.prefix.clone(),
                range_end: prefix_end(&self.prefix),
                count_only: true,
                ..Default::default()
            })
            .await?
            .count;
        Ok(TopicStatus {
            retention: state.retention,
            floor,
            kept: count,
        })
    }

    /// The messages published at revision `from_revision` or later, in revision order, then
    /// every message published from now on. `from_revision` 0 means only those published after
    /// this call.
    ///
    /// Fails with [`Error::OutOfRange`] if retention removed messages at or after
    /// `from_revision` (the error names the oldest revision still kept). The stream fails with
    /// [`Error::Store`] (code `OutOfRange`, etcd's "required revision has been compacted") if
    /// the store no longer has the history from `from_revision`, and with
    /// [`Error::WatchEnded`] if the store ends the watch.
    pub async fn subscribe(&self, from_revision: i64) -> Result<Subscription> {
        if from_revision < 0 {
            return Err(Error::InvalidArgument(format!(
                "pubsub: negative revision {from_revision}"
            )));
        }
        if from_revision > 0 {
            let floor = self.trim_at(unix_nanos()).await?;
            if from_revision < floor {
                return Err(Error::OutOfRange(format!(
                    "pubsub: revision {from_revision} of topic {} is below its retention: the \
                     oldest revision still kept is {floor}",
                    self.name
                )));
            }
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
            .map_err(|err| compacted(err, &self.name, from_revision))?;
        let state = Feed {
            watch: Some(watch),
            pending: VecDeque::new(),
            name: self.name.clone(),
            from_revision,
        };
        Ok(Box::pin(futures::stream::unfold(state, Feed::next)))
    }

    /// The messages still stored (published and not yet removed), oldest first.
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

    /// The topic's state and the mod revision of its key (0: no state stored yet).
    /// `serializable` reads this member's copy, which is enough to decide whether to trim.
    async fn state(&self, serializable: bool) -> Result<(TopicState, i64)> {
        let read = self
            .kv
            .range(RangeRequest {
                key: self.state_key.clone(),
                serializable,
                ..Default::default()
            })
            .await?;
        let Some(kv) = read.kvs.into_iter().next() else {
            return Ok((TopicState::default(), 0));
        };
        let state = serde_json::from_slice(&kv.value).map_err(|err| {
            Error::InvalidArgument(format!(
                "pubsub: the key {} does not hold a topic's state: {err}",
                String::from_utf8_lossy(&self.state_key)
            ))
        })?;
        Ok((state, kv.mod_revision))
    }

    /// Writes `state` (and runs `also`) if the state key is still at `mod_revision`.
    async fn replace_state(
        &self,
        mod_revision: i64,
        state: &TopicState,
        also: Vec<concord_proto::etcdserverpb::RequestOp>,
    ) -> Result<bool> {
        let value = serde_json::to_vec(state)
            .map_err(|err| Error::InvalidArgument(format!("pubsub: topic state: {err}")))?;
        let mut success = vec![put_op(self.state_key.clone(), value, 0)];
        success.extend(also);
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: self.state_key.clone(),
                target_union: Some(TargetUnion::ModRevision(mod_revision)),
                ..Default::default()
            }],
            success,
            failure: vec![],
        };
        Ok(self.kv.txn(txn).await?.succeeded)
    }

    /// Removes what the retention no longer keeps, as of `now` (nanoseconds since the Unix
    /// epoch), oldest first; returns the floor.
    pub(crate) async fn trim_at(&self, now: u128) -> Result<i64> {
        loop {
            let (state, mod_revision) = self.state(false).await?;
            let Retention {
                max_age,
                max_messages,
            } = state.retention;
            if max_age.is_none() && max_messages.is_none() {
                return Ok(state.floor);
            }
            let oldest = self
                .kv
                .range(RangeRequest {
                    key: self.prefix.clone(),
                    range_end: prefix_end(&self.prefix),
                    sort_order: SortOrder::Ascend as i32,
                    sort_target: SortTarget::Create as i32,
                    limit: TRIM_BATCH as i64,
                    keys_only: true,
                    ..Default::default()
                })
                .await?;
            let over = max_messages.map_or(0, |max| (oldest.count as u64).saturating_sub(max)) as usize;
            let cutoff = max_age.map(|age| now.saturating_sub(age.as_nanos()));
            let removed: Vec<&KeyValue> = oldest
                .kvs
                .iter()
                .enumerate()
                .take_while(|(i, kv)| {
                    *i < over || cutoff.is_some_and(|cutoff| published_at(&self.prefix, kv) < cutoff)
                })
                .map(|(_, kv)| kv)
                .collect();
            let Some(newest_removed) = removed.last() else {
                return Ok(state.floor);
            };
            let floor = newest_removed.create_revision + 1;
            let deletes = removed.iter().map(|kv| delete_op(kv.key.clone())).collect();
            let updated = TopicState { floor, ..state };
            if self.replace_state(mod_revision, &updated, deletes).await? && removed.len() < TRIM_BATCH {
                return Ok(floor);
            }
        }
    }
}

/// When a message was published, from its key (nanoseconds since the Unix epoch; 0 if the key
/// is not one of [`put_unique`]'s).
fn published_at(prefix: &[u8], kv: &KeyValue) -> u128 {
    kv.key
        .strip_prefix(prefix)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// A subscription's state: the watch (`None` once it failed) and the messages of the last
/// batch not yet yielded.
struct Feed {
    watch: Option<WatchStream>,
    pending: VecDeque<Message>,
    name: String,
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
                Some(Err(err)) => compacted(err, &self.name, self.from_revision),
                None => Error::WatchEnded(format!("topic {}", self.name)),
            };
            self.watch = None;
            return Some((Err(error), self));
        }
    }
}

/// The store's compaction error, saying which topic and revision it was about; other errors
/// unchanged.
fn compacted(err: Error, name: &str, from_revision: i64) -> Error {
    match err {
        Error::Store(status) if status.code() == tonic::Code::OutOfRange => {
            Error::Store(tonic::Status::out_of_range(format!(
                "{} (topic {name}, from revision {from_revision})",
                status.message(),
            )))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;

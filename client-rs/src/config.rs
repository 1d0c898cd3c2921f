//! Typed configuration in one key, as JSON: [`Client::config`] follows it, [`Client::put_config`]
//! and [`Client::put_config_if`] write it.
//!
//! A value's *version* is the key's mod revision, so versions grow with every write, across
//! keys, and a compare-and-swap on a version is a compare on the mod revision.

use std::collections::VecDeque;

use concord_proto::etcdserverpb::{Compare, RangeRequest, TxnRequest, compare};
use concord_proto::mvccpb::{KeyValue, event::EventType};
use concord_recipes::Kv;
use concord_recipes::kv::{create_revision_is, get_op, put_op, range_result};
use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::{Error, Result};
use concord_recipes::follow::{Follow, Step};

/// A decoded value and its version (the key's mod revision when it was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The key's mod revision.
    pub version: i64,
}

impl Client {
    /// Follows the JSON value of `key` as a `T`: [`ConfigWatch::current`] is the value now,
    /// [`ConfigWatch::changed`] waits for the next version. The watch survives endpoint
    /// failures and misses no version; a version that fails to decode is reported as an
    /// [`Error::Decode`] and the watch carries on.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Limits { max_connections: u32 }
    ///
    /// let mut limits = client.config::<Limits>("config/limits").await?;
    /// loop {
    ///     match limits.changed().await {
    ///         Ok(Some(new)) => println!("v{}: {}", new.version, new.value.max_connections),
    ///         Ok(None) => println!("limits removed"),
    ///         Err(err) => eprintln!("bad limits: {err}"), // a Decode error: keep going
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn config<T: DeserializeOwned>(&self, key: impl Into<String>) -> Result<ConfigWatch<T>> {
        let key = key.into();
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let response = self.range(request).await?;
        let revision = response.header.map_or(0, |h| h.revision);
        let follow = Follow::new(self.clone(), key.as_bytes().to_vec(), Vec::new(), revision + 1)
            .with_backoff(self.backoff());
        let mut watch = ConfigWatch {
            client: self.clone(),
            key,
            follow,
            current: None,
            version: 0,
            queued: VecDeque::new(),
        };
        if let Some(kv) = response.kvs.first() {
            match watch.decode(kv) {
                Ok(value) => watch.current = Some(value),
                // Reported by the first `changed`, so the watch can still start.
                Err(err) => watch.queued.push_back(Err(err)),
            }
            watch.version = kv.mod_revision;
        }
        Ok(watch)
    }

    /// Writes `value` as JSON at `key`; its new version.
    pub async fn put_config<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<i64> {
        let txn = TxnRequest {
            success: vec![put_op(key, encode(key, value)?, 0)],
            ..Default::default()
        };
        Ok(self.txn(txn).await?.header.map_or(0, |h| h.revision))
    }

    /// Writes `value` as JSON at `key` if the key is at `version` (0: if it does not exist);
    /// its new version, or [`Error::VersionMismatch`] with the version found.
    pub async fn put_config_if<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        version: i64,
    ) -> Result<i64> {
        let compare = if version == 0 {
            create_revision_is(key, 0)
        } else {
            Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(compare::TargetUnion::ModRevision(version)),
                ..Default::default()
            }
        };
        let txn = TxnRequest {
            compare: vec![compare],
            success: vec![put_op(key, encode(key, value)?, 0)],
            failure: vec![get_op(key)],
        };
        let response = self.txn(txn).await?;
        if !response.succeeded {
            let current = range_result(&response, 0).first().map_or(0, |kv| kv.mod_revision);
            return Err(Error::VersionMismatch {
                key: key.to_string(),
                expected: version,
                current,
            });
        }
        Ok(response.header.map_or(0, |h| h.revision))
    }
}

/// A typed value followed from one key: see [`Client::config`].
pub struct ConfigWatch<T> {
    client: Client,
    key: String,
    follow: Follow<Client>,
    /// The last version that decoded, unless the key was deleted since.
    current: Option<Versioned<T>>,
    /// The key's mod revision as last seen (0: it does not exist).
    version: i64,
    /// What `changed` reports next: a new value (`None`: deleted), or a decode error.
    queued: VecDeque<Result<Option<Versioned<T>>>>,
}

impl<T: DeserializeOwned> ConfigWatch<T> {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The newest version that decoded; `None` if the key does not exist (or was deleted),
    /// or no version of it has decoded yet.
    pub fn current(&self) -> Option<&Versioned<T>> {
        self.current.as_ref()
    }

    /// Waits for the next version and returns it (also as [`current`](Self::current) from
    /// now on): `Some` for a new value, `None` if the key was deleted. Every version comes
    /// once, in order; after a compaction only the newest is known.
    ///
    /// Errors: [`Error::Decode`] for a version that does not decode (`current` keeps the
    /// last good one; call again for the next version); any other error means the watch could
    /// not be resumed for now, and calling again tries again from where it stopped.
    pub async fn changed(&mut self) -> Result<Option<&Versioned<T>>> {
        loop {
            if let Some(next) = self.queued.pop_front() {
                self.current = next?;
                return Ok(self.current.as_ref());
            }
            match self.follow.next().await? {
                Step::Batch(batch) => {
                    for event in batch.events {
                        let Some(kv) = event.kv else { continue };
                        self.version = kv.mod_revision;
                        if event.r#type == EventType::Delete as i32 {
                            self.version = 0;
                            self.queued.push_back(Ok(None));
                        } else {
                            let decoded = self.decode(&kv).map(Some);
                            self.queued.push_back(decoded);
                        }
                    }
                }
                Step::Compacted => self.catch_up().await?,
            }
        }
    }

    /// Turns the watch into a stream of what [`changed`](Self::changed) returns, starting with
    /// the next version. The stream ends after an error other than [`Error::Decode`].
    pub fn into_stream(self) -> impl Stream<Item = Result<Option<Versioned<T>>>> + Send + 'static
    where
        T: Clone + Send + 'static,
    {
        futures::stream::unfold(Some(self), |watch| async move {
            let mut watch = watch?;
            match watch.changed().await {
                Ok(next) => {
                    let next = next.cloned();
                    Some((Ok(next), Some(watch)))
                }
                Err(err @ Error::Decode { .. }) => Some((Err(err), Some(watch))),
                Err(err) => Some((Err(err), None)),
            }
        })
    }

    /// After a compaction: reads the key again and queues its value if it is a new version.
    async fn catch_up(&mut self) -> Result<()> {
        let request = RangeRequest {
            key: self.key.as_bytes().to_vec(),
            ..Default::default()
        };
        let response = self.client.range(request).await?;
        let revision = response.header.map_or(0, |h| h.revision);
        let now = response.kvs.first().map_or(0, |kv| kv.mod_revision);
        if now != self.version {
            self.version = now;
            match response.kvs.first() {
                None => self.queued.push_back(Ok(None)),
                Some(kv) => {
                    let decoded = self.decode(kv).map(Some);
                    self.queued.push_back(decoded);
                }
            }
        }
        self.follow.restart_at(revision + 1);
        Ok(())
    }

    fn decode(&self, kv: &KeyValue) -> Result<Versioned<T>> {
        match serde_json::from_slice(&kv.value) {
            Ok(value) => Ok(Versioned {
                value,
                version: kv.mod_revision,
            }),
            Err(source) => Err(Error::Decode {
                key: self.key.clone(),
                version: kv.mod_revision,
                source,
            }),
        }
    }
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| Error::Encode {
        key: key.to_string(),
        source,
    })
}

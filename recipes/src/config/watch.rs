//! Following a namespace or a key of the config center: [`ConfigCenter::watch`] replays the
//! kept version records from a revision, then follows new ones; a compacted gap is read again
//! from the records, which are live keys.

use concord_proto::etcdserverpb::RangeRequest;
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::mvccpb::event::EventType;

use super::{ConfigCenter, Version, check_name, prefix_range, record};
use crate::error::{Error, Result};
use crate::follow::{Follow, Step};
use crate::kv::{Kv, prefix_end};

impl<K: Kv> ConfigCenter<K> {
    /// Follows `namespace` (every key) or one key of it: every version written at revision
    /// `from` or later (0: from now), in revision order, then every new one. The versions come
    /// from the kept records, so a start the store's history no longer has still works as long
    /// as the versions are kept.
    pub async fn watch(&self, namespace: &str, key: Option<&str>, from: i64) -> Result<ConfigWatch<K>> {
        if from < 0 {
            return Err(Error::InvalidArgument(format!(
                "config: negative revision {from}"
            )));
        }
        match key {
            Some(key) => {
                self.value_key(namespace, key)?;
            }
            None => check_name("namespace", namespace)?,
        }
        self.namespace(namespace).await?;
        let prefix = self.versions_prefix(namespace, key);
        let mut replay = RangeRequest {
            min_create_revision: from.max(1),
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            ..prefix_range(&prefix)
        };
        if from == 0 {
            replay.count_only = true;
        }
        let read = self.kv.range(replay).await?;
        let revision = read.header.as_ref().map_or(0, |h| h.revision);
        let ready = read.kvs.iter().map(record).collect::<Result<_>>()?;
        let follow = Follow::new(
            self.kv.clone(),
            prefix.clone().into_bytes(),
            prefix_end(prefix.as_bytes()),
            revision + 1,
        );
        Ok(ConfigWatch {
            center: self.clone(),
            namespace: namespace.to_string(),
            key: key.map(str::to_string),
            follow,
            ready,
        })
    }

    /// The revision version `version` of `namespace`/`key` was written at, to watch from it;
    /// [`Error::OutOfRange`] if it is no longer kept.
    pub async fn revision_of(&self, namespace: &str, key: &str, version: u64) -> Result<i64> {
        match self.get(namespace, key, version).await {
            Ok(found) => Ok(found.revision),
            Err(Error::NotFound(message)) if message.contains("is not kept") => {
                Err(Error::OutOfRange(message))
            }
            Err(err) => Err(err),
        }
    }
}

/// A config watch: see [`ConfigCenter::watch`].
pub struct ConfigWatch<K: Kv> {
    center: ConfigCenter<K>,
    namespace: String,
    key: Option<String>,
    follow: Follow<K>,
    /// Versions read and not yet yielded, oldest first.
    ready: std::collections::VecDeque<Version>,
}

impl<K: Kv> ConfigWatch<K> {
    /// The next version, waiting for one.
    pub async fn next(&mut self) -> Result<Version> {
        loop {
            if let Some(version) = self.ready.pop_front() {
                return Ok(version);
            }
            match self.follow.next().await? {
                Step::Batch(batch) => {
                    for event in batch.events {
                        let Some(kv) = event.kv else { continue };
                        // A record's creation is a version; deleting old ones is not news.
                        if event.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision {
                            self.ready.push_back(record(&kv)?);
                        }
                    }
                }
                Step::Compacted => {
                    // The records are live keys: read what was missed from them instead.
                    let from = self.follow.next_revision();
                    let again = self
                        .center
                        .watch(&self.namespace, self.key.as_deref(), from)
                        .await?;
                    self.follow = again.follow;
                    self.ready.extend(again.ready);
                }
            }
        }
    }
}

//! A config center on plain keys: namespaces of keys whose values are parsed (JSON, YAML, TOML
//! or text) and checked against the namespace's JSON Schema before they are stored, with every
//! version kept apart from the store's MVCC history, rollback, ordered watches, and reports of
//! which client runs which version.
//!
//! Layout under the prefix (`config/` by default), all plain keys an `etcdctl` user can read:
//!
//! - `values/<ns>/<key>`: the current value, as written (confd and `etcdctl watch` read it);
//! - `heads/<ns>/<key>`: the latest version number and format (JSON);
//! - `versions/<ns>/<key>/<version, 20 digits>`: one [`Version`] record (JSON) per version,
//!   the newest `keep` of them. They are live keys, so compacting the store's history does not
//!   lose them; the record's revision is its key's create revision;
//! - `namespaces/<ns>`: the namespace (JSON, with its schema if it has one);
//! - `reports/<ns>/<key>/<client>`: what a client runs (JSON), on the client's lease.
//!
//! A put reads the head and the namespace, checks, then writes value, head and record in one
//! txn that compares the head's and the namespace's mod revisions, so two puts never take the
//! same version and a schema set meanwhile is never bypassed.

mod format;
mod watch;

use std::time::{SystemTime, UNIX_EPOCH};

use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};
use concord_proto::mvccpb::KeyValue;
pub use format::{Format, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use watch::ConfigWatch;

use crate::error::{Error, Result};
use crate::kv::{Kv, get_op, prefix_end, put_op, range_op, range_result};

/// Where the config center keeps its keys unless told otherwise.
pub const DEFAULT_PREFIX: &str = "config/";

/// How many versions per key are kept unless told otherwise.
pub const DEFAULT_KEEP: u64 = 100;

/// The longest namespace or key name.
const MAX_NAME: usize = 256;

/// How many times a put retries when another write to the same key raced it.
const PUT_ATTEMPTS: usize = 8;

/// One version of a config key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// The namespace.
    pub namespace: String,
    /// The key within the namespace.
    pub key: String,
    /// 1, 2, 3 ... per key.
    pub version: u64,
    /// The store revision that wrote it (filled in from the record's key).
    #[serde(skip)]
    pub revision: i64,
    /// Its format.
    pub format: Format,
    /// The value as written.
    pub value: String,
    /// Who wrote it.
    #[serde(default)]
    pub author: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
    /// When, in milliseconds since the Unix epoch (the writing member's clock).
    pub time_ms: u64,
    /// The version it restores, for a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// A write: see [`ConfigCenter::put`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Put {
    /// The value.
    pub value: String,
    /// Its format; `None`: the key's current one (text for a new key).
    pub format: Option<Format>,
    /// Write only if the key is at this version (0: only if it has none yet).
    pub if_version: Option<u64>,
    /// Who writes it.
    pub author: String,
    /// Why.
    pub comment: String,
}

/// What a client reported running: see [`ConfigCenter::report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The client's ID.
    #[serde(skip)]
    pub client: String,
    /// The version it applied or rejected.
    pub version: u64,
    /// Whether it applied it (false: rejected).
    pub applied: bool,
    /// Why it rejected it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// A key's latest version and the reports about it: see [`ConfigCenter::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The latest version (0: none).
    pub latest: u64,
    /// What each reporting client runs, by client ID.
    pub reports: Vec<Report>,
}

/// The head of a key: its latest version and format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Head {
    version: u64,
    format: Format,
}

/// A namespace's own record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Namespace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<Value>,
}

/// A config center under one prefix.
#[derive(Clone)]
pub struct ConfigCenter<K: Kv> {
    kv: K,
    prefix: String,
    keep: u64,
}

impl<K: Kv> ConfigCenter<K> {
    /// The config center under [`DEFAULT_PREFIX`], keeping [`DEFAULT_KEEP`] versions per key.
    pub fn new(kv: K) -> Self {
        Self {
            kv,
            prefix: DEFAULT_PREFIX.to_string(),
            keep: DEFAULT_KEEP,
        }
    }

    /// Keeps the newest `keep` versions of each key (at least 1).
    #[must_use]
    pub fn keeping(mut self, keep: u64) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// The key holding the current value of `namespace`/`key`.
    pub fn value_key(&self, namespace: &str, key: &str) -> Result<String> {
        check_name("namespace", namespace)?;
        check_name("key", key)?;
        Ok(format!("{}values/{namespace}/{key}", self.prefix))
    }

    fn head_key(&self, namespace: &str, key: &str) -> String {
        format!("{}heads/{namespace}/{key}", self.prefix)
    }

    fn namespace_key(&self, namespace: &str) -> String {
        format!("{}namespaces/{namespace}", self.prefix)
    }

    /// `versions/<ns>/` or `versions/<ns>/<key>/`.
    fn versions_prefix(&self, namespace: &str, key: Option<&str>) -> String {
        match key {
            Some(key) => format!("{}versions/{namespace}/{key}/", self.prefix),
            None => format!("{}versions/{namespace}/", self.prefix),
        }
    }

    fn version_key(&self, namespace: &str, key: &str, version: u64) -> String {
        format!("{}{version:020}", self.versions_prefix(namespace, Some(key)))
    }

    fn reports_prefix(&self, namespace: &str, key: &str) -> String {
        format!("{}reports/{namespace}/{key}/", self.prefix)
    }

    /// Writes a new version of `namespace`/`key` (creating the namespace if need be); returns
    /// it. Refused, with nothing stored, if the value does not parse in its format, breaks the
    /// namespace's schema, or the key is not at `if_version`.
    pub async fn put(&self, namespace: &str, key: &str, put: Put) -> Result<Version> {
        self.write(namespace, key, put, None).await
    }

    /// Writes version `version`'s value again, as a new version (the history keeps both).
    pub async fn rollback(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
        author: &str,
        comment: &str,
    ) -> Result<Version> {
        let old = self.get(namespace, key, version).await?;
        let comment = if comment.is_empty() {
            format!("rollback to version {version}")
        } else {
            comment.to_string()
        };
        let put = Put {
            value: old.value,
            format: Some(old.format),
            if_version: None,
            author: author.to_string(),
            comment,
        };
        self.write(namespace, key, put, Some(version)).await
    }

    async fn write(&self, namespace: &str, key: &str, put: Put, rollback_of: Option<u64>) -> Result<Version> {
        let value_key = self.value_key(namespace, key)?;
        let head_key = self.head_key(namespace, key);
        let namespace_key = self.namespace_key(namespace);
        for _ in 0..PUT_ATTEMPTS {
            // The head and the namespace, in one read.
            let read = self
                .kv
                .txn(TxnRequest {
                    success: vec![get_op(head_key.clone()), get_op(namespace_key.clone())],
                    ..Default::default()
                })
                .await?;
            let head_kv = range_result(&read, 0).first().cloned();
            let namespace_kv = range_result(&read, 1).first().cloned();
            let head: Head = decode_opt(head_kv.as_ref(), &head_key)?.unwrap_or_default();
            let ns: Namespace = decode_opt(namespace_kv.as_ref(), &namespace_key)?.unwrap_or_default();
            if let Some(expected) = put.if_version
                && expected != head.version
            {
                return Err(Error::Conflict(format!(
                    "config: {namespace}/{key} is at version {}, not {expected}",
                    head.version
                )));
            }
            let format = put.format.unwrap_or(head.format);
            let parsed = format.parse(&put.value)?;
            if let Some(schema) = &ns.schema {
                Schema::compile(schema)?.check(&parsed)?;
            }
            let record = Version {
                namespace: namespace.to_string(),
                key: key.to_string(),
                version: head.version + 1,
                revision: 0,
                format,
                value: put.value.clone(),
                author: put.author.clone(),
                comment: put.comment.clone(),
                time_ms: now_ms(),
                rollback_of,
            };
            let new_head = Head {
                version: record.version,
                format,
            };
            let mut success = vec![
                put_op(value_key.clone(), put.value.clone(), 0),
                put_op(head_key.clone(), encode(&new_head)?, 0),
                put_op(
                    self.version_key(namespace, key, record.version),
                    encode(&record)?,
                    0,
                ),
            ];
            if namespace_kv.is_none() {
                success.push(put_op(namespace_key.clone(), encode(&ns)?, 0));
            }
            if record.version > self.keep {
                // Every version older than the newest `keep`.
                let oldest_kept = record.version - self.keep + 1;
                success.push(RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: self.version_key(namespace, key, 0).into_bytes(),
                        range_end: self.version_key(namespace, key, oldest_kept).into_bytes(),
                        ..Default::default()
                    })),
                });
            }
            let txn = TxnRequest {
                compare: vec![
                    mod_revision_is(&head_key, head_kv.as_ref()),
                    mod_revision_is(&namespace_key, namespace_kv.as_ref()),
                ],
                success,
                failure: vec![],
            };
            let written = self.kv.txn(txn).await?;
            if written.succeeded {
                return Ok(Version {
                    revision: written.header.map_or(0, |h| h.revision),
                    ..record
                });
            }
            // Another write got in between: with an expected version, that is a conflict.
            if let Some(expected) = put.if_version {
                return Err(Error::Conflict(format!(
                    "config: {namespace}/{key} changed from version {expected} while being written"
                )));
            }
        }
        Err(Error::Conflict(format!(
            "config: {namespace}/{key} kept changing while being written"
        )))
    }

    /// Version `version` of `namespace`/`key` (0: the latest).
    pub async fn get(&self, namespace: &str, key: &str, version: u64) -> Result<Version> {
        self.value_key(namespace, key)?;
        let prefix = self.versions_prefix(namespace, Some(key));
        let request = if version == 0 {
            RangeRequest {
                key: prefix.clone().into_bytes(),
                range_end: prefix_end(prefix.as_bytes()),
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Key as i32,
                limit: 1,
                ..Default::default()
            }
        } else {
            RangeRequest {
                key: self.version_key(namespace, key, version).into_bytes(),
                ..Default::default()
            }
        };
        let read = self.kv.range(request).await?;
        if let Some(kv) = read.kvs.first() {
            return record(kv);
        }
        // Say what is missing: the namespace, the key, or only that version.
        let (oldest, latest) = self.kept_range(namespace, key).await?;
        if latest == 0 {
            self.namespace(namespace).await?;
            return Err(Error::NotFound(format!(
                "config: key {namespace}/{key} not found"
            )));
        }
        Err(Error::NotFound(format!(
            "config: version {version} of {namespace}/{key} is not kept (versions {oldest} to {latest} are)"
        )))
    }

    /// The oldest and newest version kept of `namespace`/`key` ((0, 0): none).
    async fn kept_range(&self, namespace: &str, key: &str) -> Result<(u64, u64)> {
        let prefix = self.versions_prefix(namespace, Some(key));
        let mut ends = [0u64; 2];
        for (end, order) in ends.iter_mut().zip([SortOrder::Ascend, SortOrder::Descend]) {
            let read = self
                .kv
                .range(RangeRequest {
                    key: prefix.clone().into_bytes(),
                    range_end: prefix_end(prefix.as_bytes()),
                    sort_order: order as i32,
                    sort_target: SortTarget::Key as i32,
                    limit: 1,
                    keys_only: true,
                    ..Default::default()
                })
                .await?;
            *end = read
                .kvs
                .first()
                .and_then(|kv| kv.key.strip_prefix(prefix.as_bytes()))
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok())
                .unwrap_or(0);
        }
        Ok((ends[0], ends[1]))
    }

    /// Every kept version of `namespace`/`key`, oldest first.
    pub async fn history(&self, namespace: &str, key: &str) -> Result<Vec<Version>> {
        self.value_key(namespace, key)?;
        let prefix = self.versions_prefix(namespace, Some(key));
        let read = self
            .kv
            .range(RangeRequest {
                key: prefix.clone().into_bytes(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            })
            .await?;
        if read.kvs.is_empty() {
            self.namespace(namespace).await?;
            return Err(Error::NotFound(format!(
                "config: key {namespace}/{key} not found"
            )));
        }
        read.kvs.iter().map(record).collect()
    }

    /// The namespace's record; [`Error::NotFound`] if it does not exist.
    async fn namespace(&self, namespace: &str) -> Result<(Namespace, KeyValue)> {
        check_name("namespace", namespace)?;
        let key = self.namespace_key(namespace);
        let read = self
            .kv
            .range(RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            })
            .await?;
        let kv = read
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound(format!("config: namespace {namespace} not found")))?;
        Ok((decode(&kv.value, &key)?, kv))
    }

    /// The namespace's JSON Schema, if it has one; [`Error::NotFound`] for an unknown namespace.
    pub async fn schema(&self, namespace: &str) -> Result<Option<Value>> {
        Ok(self.namespace(namespace).await?.0.schema)
    }

    /// Sets (or with `None` removes) the namespace's JSON Schema, creating the namespace if need
    /// be. Refused if it is not a JSON Schema, or if a key's current value breaks it (the error
    /// names the key): a schema never makes stored config invalid.
    pub async fn set_schema(&self, namespace: &str, schema: Option<Value>) -> Result<()> {
        check_name("namespace", namespace)?;
        let compiled = schema.as_ref().map(Schema::compile).transpose()?;
        let namespace_key = self.namespace_key(namespace);
        for _ in 0..PUT_ATTEMPTS {
            let existing = match self.namespace(namespace).await {
                Ok((_, kv)) => Some(kv),
                Err(Error::NotFound(_)) => None,
                Err(err) => return Err(err),
            };
            // Every key's current value must pass, read at one revision.
            let heads_prefix = format!("{}heads/{namespace}/", self.prefix);
            let values_prefix = format!("{}values/{namespace}/", self.prefix);
            let read = self
                .kv
                .txn(TxnRequest {
                    success: vec![
                        range_op(prefix_range(&heads_prefix)),
                        range_op(prefix_range(&values_prefix)),
                    ],
                    ..Default::default()
                })
                .await?;
            if let Some(compiled) = &compiled {
                let values = range_result(&read, 1);
                for head_kv in range_result(&read, 0) {
                    let head: Head = decode(&head_kv.value, "a config head")?;
                    let name = String::from_utf8_lossy(&head_kv.key[heads_prefix.len()..]).into_owned();
                    let value_key = format!("{values_prefix}{name}");
                    let Some(value) = values.iter().find(|kv| kv.key == value_key.as_bytes()) else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&value.value);
                    compiled.check(&head.format.parse(&text)?).map_err(|err| {
                        Error::InvalidArgument(format!(
                            "config: the schema would make {namespace}/{name} invalid: {err}"
                        ))
                    })?;
                }
            }
            let record = Namespace {
                schema: schema.clone(),
            };
            let txn = TxnRequest {
                compare: vec![
                    mod_revision_is(&namespace_key, existing.as_ref()),
                    // No key changed since they were checked.
                    Compare {
                        result: CompareResult::Less as i32,
                        target: CompareTarget::Mod as i32,
                        key: heads_prefix.clone().into_bytes(),
                        range_end: prefix_end(heads_prefix.as_bytes()),
                        target_union: Some(TargetUnion::ModRevision(
                            read.header.as_ref().map_or(0, |h| h.revision) + 1,
                        )),
                    },
                ],
                success: vec![put_op(namespace_key.clone(), encode(&record)?, 0)],
                failure: vec![],
            };
            if self.kv.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(Error::Conflict(format!(
            "config: namespace {namespace} kept changing while its schema was being set"
        )))
    }

    /// Records that `client` applied (or rejected, with `error`) `version` of
    /// `namespace`/`key`, on `lease` so the report goes when the client does.
    pub async fn report(&self, namespace: &str, key: &str, report: &Report, lease: i64) -> Result<()> {
        self.value_key(namespace, key)?;
        check_name("client", &report.client)?;
        let key = format!("{}{}", self.reports_prefix(namespace, key), report.client);
        self.kv
            .txn(TxnRequest {
                success: vec![put_op(key, encode(report)?, lease)],
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// The latest version of `namespace`/`key` and what each reporting client runs.
    pub async fn status(&self, namespace: &str, key: &str) -> Result<Status> {
        let (_, latest) = self.kept_range(namespace, key).await?;
        if latest == 0 {
            self.namespace(namespace).await?;
            return Err(Error::NotFound(format!(
                "config: key {namespace}/{key} not found"
            )));
        }
        let prefix = self.reports_prefix(namespace, key);
        let read = self.kv.range(prefix_range(&prefix)).await?;
        let reports = read
            .kvs
            .iter()
            .filter_map(|kv| {
                let mut report: Report = serde_json::from_slice(&kv.value).ok()?;
                report.client = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                Some(report)
            })
            .collect();
        Ok(Status { latest, reports })
    }
}

/// A [`Version`] from its record.
fn record(kv: &KeyValue) -> Result<Version> {
    let mut version: Version = decode(&kv.value, &String::from_utf8_lossy(&kv.key))?;
    version.revision = kv.create_revision;
    Ok(version)
}

/// Names of namespaces, keys and clients: non-empty, at most 256 bytes, no '/' and no control
/// characters.
fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('/') || name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "config: a {what} name must be 1 to {MAX_NAME} bytes, without '/' or control characters: {name:?}"
        )));
    }
    Ok(())
}

/// The compare "`key`'s mod revision is what was read" (0 for a key that was absent).
fn mod_revision_is(key: &str, read: Option<&KeyValue>) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::ModRevision(read.map_or(0, |kv| kv.mod_revision))),
        ..Default::default()
    }
}

fn prefix_range(prefix: &str) -> RangeRequest {
    RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        ..Default::default()
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|err| Error::InvalidArgument(format!("config: encoding: {err}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], key: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|err| {
        Error::InvalidArgument(format!(
            "config: {key} does not hold what the config center wrote: {err}"
        ))
    })
}

fn decode_opt<T: for<'de> Deserialize<'de>>(kv: Option<&KeyValue>, key: &str) -> Result<Option<T>> {
    kv.map(|kv| decode(&kv.value, key)).transpose()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests;

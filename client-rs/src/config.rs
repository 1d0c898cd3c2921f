//! Typed configuration through the server's `concord.config.v1.Config` service:
//! [`Client::config`] follows a key as a typed value, [`Client::put_config`] and friends write
//! it.
//!
//! A key's versions are numbered 1, 2, 3 ... by the server, which parses every value in its
//! format (JSON, YAML, TOML, text) and checks it against the namespace's schema before storing
//! it. The client decodes each version into the caller's type. A version that does not decode
//! keeps the last good one, is logged, and is reported to the server as rejected, so
//! `concordctl config status` shows who runs what and who refused what.

mod cache;
mod follow;

use std::path::PathBuf;
use std::sync::Arc;

use concord_proto::concord::config::v1 as pb;
use concord_recipes::config::Format;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::client::Client;
use crate::endpoints::{Idempotence, config, is_transient};
use crate::error::{Error, Result};

/// A decoded config value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The key's version (1, 2, 3 ...).
    pub version: u64,
    /// The store revision that wrote it.
    pub revision: i64,
}

/// A version the client could not decode into its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The version.
    pub version: u64,
    /// Why it was rejected.
    pub error: String,
}

/// How [`Client::put_config_text`] writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigWrite {
    /// json, yaml, toml or text; empty: the key's current format (text for a new key).
    pub format: String,
    /// Write only if the key is at this version (0: only if it has none yet).
    pub if_version: Option<u64>,
    /// Why, for the history.
    pub comment: String,
}

impl ConfigWrite {
    /// A write in `format`, unconditional, without a comment.
    pub fn format(format: &str) -> Self {
        Self {
            format: format.to_string(),
            ..Self::default()
        }
    }
}

/// How [`Client::config_with`] follows a key.
#[derive(Debug, Clone, Default)]
pub struct ConfigOptions {
    /// A file that keeps the last good version: written after each applied version, and read
    /// at start when no member can be reached, so the program starts with its last good config.
    pub cache_file: Option<PathBuf>,
    /// The ID this client reports under (default: `<host>-<pid>`).
    pub client_id: Option<String>,
}

impl Client {
    /// Writes `value` as JSON to `namespace`/`key`; its new version.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// let version = client.put_config("billing", "limits", &serde_json::json!({"max": 10})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_config<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        key: &str,
        value: &T,
    ) -> Result<u64> {
        let text = encode(key, value)?;
        let write = ConfigWrite::format("json");
        self.put_config_text(namespace, key, &text, write).await
    }

    /// Writes `value` as JSON if the key is at `version` (0: if it has none yet); its new
    /// version, or [`Error::VersionMismatch`] with the version found.
    pub async fn put_config_if<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        key: &str,
        value: &T,
        version: u64,
    ) -> Result<u64> {
        let text = encode(key, value)?;
        let write = ConfigWrite {
            if_version: Some(version),
            ..ConfigWrite::format("json")
        };
        match self.put_config_text(namespace, key, &text, write).await {
            Err(Error::Status(status)) if status.code() == tonic::Code::FailedPrecondition => {
                let current = match self.config_version(namespace, key, 0).await {
                    Ok(found) => found.version,
                    Err(_) => 0,
                };
                Err(Error::VersionMismatch {
                    key: format!("{namespace}/{key}"),
                    expected: version as i64,
                    current: current as i64,
                })
            }
            other => other,
        }
    }

    /// Writes `text` to `namespace`/`key` as `write` says (format, expected version, comment);
    /// its new version. The server refuses a value that does not parse in its format, with the
    /// line and column, and one that breaks the namespace's schema, with the failing path.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use concord_client::ConfigWrite;
    ///
    /// let yaml = "max_connections: 10\n";
    /// let version = client
    ///     .put_config_text("billing", "limits", yaml, ConfigWrite::format("yaml"))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_config_text(
        &self,
        namespace: &str,
        key: &str,
        text: &str,
        write: ConfigWrite,
    ) -> Result<u64> {
        let request = pb::PutRequest {
            namespace: namespace.to_string(),
            key: key.to_string(),
            value: text.to_string(),
            format: write.format,
            if_version: write.if_version,
            author: self.identity(),
            comment: write.comment,
        };
        let response = self
            .call_unary(Idempotence::Write, request, |channel, request| async move {
                config(channel).put(request).await
            })
            .await?;
        Ok(response.version.map_or(0, |v| v.version))
    }

    /// Version `version` (0: the latest) of `namespace`/`key`, as stored.
    pub async fn config_version(&self, namespace: &str, key: &str, version: u64) -> Result<pb::Version> {
        let request = pb::GetRequest {
            namespace: namespace.to_string(),
            key: key.to_string(),
            version,
        };
        let response = self
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                config(channel).get(request).await
            })
            .await?;
        response
            .version
            .ok_or_else(|| Error::Status(tonic::Status::internal("config: an answer without a version")))
    }

    /// The latest version of `namespace`/`key` and what each client that follows it reported
    /// running (or rejecting).
    pub async fn config_status(&self, namespace: &str, key: &str) -> Result<pb::StatusResponse> {
        let request = pb::StatusRequest {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        self.call_unary(Idempotence::Idempotent, request, |channel, request| async move {
            config(channel).status(request).await
        })
        .await
    }

    /// Every kept version of `namespace`/`key`, oldest first.
    pub async fn config_history(&self, namespace: &str, key: &str) -> Result<Vec<pb::Version>> {
        let request = pb::HistoryRequest {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        Ok(self
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                config(channel).history(request).await
            })
            .await?
            .versions)
    }

    /// Writes version `version`'s value of `namespace`/`key` again, as a new version; the new
    /// version. An empty `comment` says "rollback to version N".
    pub async fn config_rollback(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
        comment: &str,
    ) -> Result<pb::Version> {
        let request = pb::RollbackRequest {
            namespace: namespace.to_string(),
            key: key.to_string(),
            version,
            author: self.identity(),
            comment: comment.to_string(),
        };
        let response = self
            .call_unary(Idempotence::Write, request, |channel, request| async move {
                config(channel).rollback(request).await
            })
            .await?;
        response
            .version
            .ok_or_else(|| Error::Status(tonic::Status::internal("config: an answer without a version")))
    }

    /// The JSON Schema of `namespace`, if it has one.
    pub async fn config_schema(&self, namespace: &str) -> Result<Option<String>> {
        let request = pb::GetSchemaRequest {
            namespace: namespace.to_string(),
        };
        let schema = self
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                config(channel).get_schema(request).await
            })
            .await?
            .schema;
        Ok((!schema.is_empty()).then_some(schema))
    }

    /// Sets (`None`: removes) the JSON Schema of `namespace`, creating the namespace if need
    /// be. Refused if a key's current value breaks it.
    pub async fn set_config_schema(&self, namespace: &str, schema: Option<&str>) -> Result<()> {
        let request = pb::SetSchemaRequest {
            namespace: namespace.to_string(),
            schema: schema.unwrap_or_default().to_string(),
        };
        self.call_unary(Idempotence::Idempotent, request, |channel, request| async move {
            config(channel).set_schema(request).await
        })
        .await?;
        Ok(())
    }

    /// Every version of `namespace` (every key, or only `key`) written at revision `from` or
    /// later (0: from now), then every new one, as stored: a stream that reopens itself after
    /// failures and ends only on an error retrying cannot fix.
    pub async fn watch_config(
        &self,
        namespace: &str,
        key: Option<&str>,
        from: i64,
    ) -> Result<ConfigVersions> {
        follow::versions(self.clone(), namespace, key.unwrap_or_default(), from).await
    }

    /// Follows `namespace`/`key` as a `T`, decoded from its format with serde: the returned
    /// [`LiveConfig`] holds the newest version that decoded, updated in the background (across
    /// endpoint failures and outages, missing nothing). A version that does not decode keeps
    /// the last good one, is logged and reported to the server as rejected.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Limits { max_connections: u32 }
    ///
    /// let mut limits = client.config::<Limits>("billing", "limits").await?;
    /// loop {
    ///     if let Some(limits) = limits.current() {
    ///         println!("v{}: {}", limits.version, limits.value.max_connections);
    ///     }
    ///     limits.changed().await?;
    /// }
    /// # }
    /// ```
    pub async fn config<T>(&self, namespace: &str, key: &str) -> Result<LiveConfig<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.config_with(namespace, key, ConfigOptions::default()).await
    }

    /// [`config`](Self::config) with options: a cache file, a client ID.
    pub async fn config_with<T>(
        &self,
        namespace: &str,
        key: &str,
        options: ConfigOptions,
    ) -> Result<LiveConfig<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        follow::start(self.clone(), namespace, key, options).await
    }

    /// Who this client says it is in config versions and reports: `<host>-<pid>`.
    pub(crate) fn identity(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "client".to_string());
        format!("{host}-{}", std::process::id())
    }
}

/// Stored config versions, as a stream: see [`Client::watch_config`].
pub struct ConfigVersions {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Version>> + Send>>,
}

impl std::fmt::Debug for ConfigVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigVersions").finish_non_exhaustive()
    }
}

impl futures::Stream for ConfigVersions {
    type Item = Result<pb::Version>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// A typed config value kept current in the background: see [`Client::config`].
///
/// Clone the [`receiver`](Self::receiver) to share it between tasks; the background task
/// runs while any receiver is alive.
#[derive(Debug)]
#[must_use = "dropping every receiver of a LiveConfig stops following the key"]
pub struct LiveConfig<T> {
    values: watch::Receiver<Option<Arc<Versioned<T>>>>,
    rejections: watch::Receiver<Option<Rejection>>,
}

impl<T> LiveConfig<T> {
    /// The newest version that decoded (`None`: the key has no version yet).
    pub fn current(&self) -> Option<Arc<Versioned<T>>> {
        self.values.borrow().clone()
    }

    /// Waits until a newer version is applied and returns it.
    pub async fn changed(&mut self) -> Result<Option<Arc<Versioned<T>>>> {
        self.values
            .changed()
            .await
            .map_err(|_| Error::Status(tonic::Status::cancelled("config: the follower stopped")))?;
        Ok(self.values.borrow_and_update().clone())
    }

    /// A receiver of the value, to share.
    pub fn receiver(&self) -> watch::Receiver<Option<Arc<Versioned<T>>>> {
        self.values.clone()
    }

    /// The newest version that failed to decode, if one did.
    pub fn rejection(&self) -> Option<Rejection> {
        self.rejections.borrow().clone()
    }

    /// A receiver of the newest rejection, to wait for the next one.
    pub fn rejections(&self) -> watch::Receiver<Option<Rejection>> {
        self.rejections.clone()
    }
}

/// Decodes `text` in `format` into a `T`: parsed as the server parses it, then serde.
pub(crate) fn decode<T: DeserializeOwned>(format: &str, text: &str) -> std::result::Result<T, String> {
    let format: Format = if format.is_empty() {
        Format::Text
    } else {
        format
            .parse()
            .map_err(|e: concord_recipes::Error| e.to_string())?
    };
    let value = format.parse(text).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Encode {
        key: key.to_string(),
        source,
    })
}

/// Whether `err` means no member could be reached (rather than an answer).
pub(crate) fn is_unreachable(err: &Error) -> bool {
    matches!(err, Error::Status(status) if is_transient(status))
}

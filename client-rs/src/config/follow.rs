//! The background task behind a [`LiveConfig`]: it follows the key with the Config service's
//! Watch, reopening the stream from the revision after the last version it saw whenever it
//! breaks (on the next endpoint, after a capped backoff, for as long as it takes), decodes each
//! version, publishes the good ones, and reports each to the server, applied or rejected.

use std::path::PathBuf;
use std::sync::Arc;

use concord_proto::concord::config::v1 as pb;
use concord_proto::etcdserverpb::RangeRequest;
use concord_recipes::Kv;
use concord_recipes::config::ConfigCenter;
use concord_recipes::session::Session;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::cache::{self, Cached};
use super::{ConfigOptions, ConfigVersions, LiveConfig, Rejection, Versioned, decode, is_unreachable};
use crate::client::Client;
use crate::endpoints::{Idempotence, config};
use crate::error::{Error, Result};
use crate::owned::OwnedSession;
use crate::resuming::Resuming;

/// The TTL of the lease a client's reports are attached to.
const REPORT_TTL_SECS: i64 = 10;

struct Follower {
    client: Client,
    namespace: String,
    key: String,
    client_id: String,
    cache: Option<PathBuf>,
    /// Where the next stream starts: the revision after the last version seen.
    next_revision: i64,
    stream: Resuming<pb::WatchResponse>,
    ready: std::collections::VecDeque<pb::Version>,
    /// The lease reports are attached to, made on first use.
    session: Option<OwnedSession>,
}

/// Reads the key's latest version (or the cache, when no member answers), opens the watch,
/// and starts the task.
pub(super) async fn start<T>(
    client: Client,
    namespace: &str,
    key: &str,
    options: ConfigOptions,
) -> Result<LiveConfig<T>>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let value_key = ConfigCenter::new(client.clone()).value_key(namespace, key)?;
    let client_id = options.client_id.unwrap_or_else(|| client.identity());
    let mut follower = Follower::new(client, namespace, key, 0);
    follower.client_id = client_id;
    follower.cache = options.cache_file;
    let (values_tx, values) = watch::channel(None);
    let (rejections_tx, rejections) = watch::channel(None);
    match follower.latest(value_key).await {
        Ok(Some(latest)) => {
            follower.ready.push_back(latest);
            follower.open().await?;
        }
        Ok(None) => follower.open().await?,
        Err(err) if is_unreachable(&err) => {
            let Some(cached) = follower
                .cache
                .as_deref()
                .and_then(|path| cache::load(path, namespace, key))
            else {
                return Err(err);
            };
            tracing::warn!(namespace, key, version = cached.version, error = %err,
                "no member reachable: starting from the cached config");
            match decode::<T>(&cached.format, &cached.value) {
                Ok(value) => {
                    values_tx.send_replace(Some(Arc::new(Versioned {
                        value,
                        version: cached.version,
                        revision: cached.revision,
                    })));
                }
                Err(error) => {
                    return Err(Error::InvalidArgument(format!(
                        "config: the cached version does not decode: {error}"
                    )));
                }
            }
            follower.next_revision = cached.revision + 1;
        }
        Err(err) => return Err(err),
    }
    // The versions read so far are applied before the caller sees the handle.
    while let Some(version) = follower.ready.pop_front() {
        follower.take::<T>(version, &values_tx, &rejections_tx).await;
    }
    tokio::spawn(follower.run::<T>(values_tx, rejections_tx));
    // What was applied so far is the start, not a change.
    let (mut values, mut rejections) = (values, rejections);
    values.borrow_and_update();
    rejections.borrow_and_update();
    Ok(LiveConfig { values, rejections })
}

/// The raw versions of `namespace` (or of its `key`, if not empty) from revision `from`.
pub(super) async fn versions(
    client: Client,
    namespace: &str,
    key: &str,
    from: i64,
) -> Result<ConfigVersions> {
    let mut follower = Follower::new(client, namespace, key, from);
    follower.open().await?;
    let stream = futures::stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        match follower.next().await {
            Ok(version) => {
                follower.next_revision = follower.next_revision.max(version.revision + 1);
                Some((Ok(version), Some(follower)))
            }
            Err(err) => Some((Err(err), None)),
        }
    });
    Ok(ConfigVersions {
        stream: Box::pin(stream),
    })
}

impl Follower {
    /// Follows `namespace`/`key` (empty: the whole namespace) from revision `from`, reporting
    /// nothing and caching nothing until told otherwise.
    fn new(client: Client, namespace: &str, key: &str, from: i64) -> Self {
        Follower {
            stream: Resuming::new(client.clone(), format!("config {namespace}/{key}")),
            client,
            namespace: namespace.to_string(),
            key: key.to_string(),
            client_id: String::new(),
            cache: None,
            next_revision: from,
            ready: Default::default(),
            session: None,
        }
    }

    /// The latest version, if the key has one; sets where the watch starts.
    async fn latest(&mut self, value_key: String) -> Result<Option<pb::Version>> {
        // "Now", before looking, so a version written meanwhile is watched, not missed.
        let now = Kv::range(
            &self.client,
            RangeRequest {
                key: value_key.into_bytes(),
                count_only: true,
                ..Default::default()
            },
        )
        .await?
        .header
        .map_or(0, |h| h.revision);
        match self.client.config_version(&self.namespace, &self.key, 0).await {
            Ok(latest) => {
                self.next_revision = latest.revision + 1;
                Ok(Some(latest))
            }
            Err(Error::Status(status)) if status.code() == tonic::Code::NotFound => {
                self.next_revision = now + 1;
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn request(&self) -> pb::WatchRequest {
        pb::WatchRequest {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            start_revision: self.next_revision,
            start_version: 0,
        }
    }

    async fn open(&mut self) -> Result<()> {
        let request = self.request();
        self.stream
            .open(|channel| {
                let request = request.clone();
                async move { config(channel).watch(request).await }
            })
            .await
    }

    async fn run<T: DeserializeOwned>(
        mut self,
        values: watch::Sender<Option<Arc<Versioned<T>>>>,
        rejections: watch::Sender<Option<Rejection>>,
    ) {
        loop {
            let next = tokio::select! {
                () = values.closed() => return,
                next = self.next() => next,
            };
            match next {
                Ok(version) => self.take(version, &values, &rejections).await,
                Err(err) => {
                    tracing::error!(namespace = %self.namespace, key = %self.key, error = %err,
                        "config watch ended; keeping the last good version");
                    return;
                }
            }
        }
    }

    /// The next version, reopening the stream as long as failures are transient.
    async fn next(&mut self) -> Result<pb::Version> {
        loop {
            if let Some(version) = self.ready.pop_front() {
                return Ok(version);
            }
            let request = self.request();
            let response = self
                .stream
                .next(|channel| {
                    let request = request.clone();
                    async move { config(channel).watch(request).await }
                })
                .await?;
            self.ready.extend(response.versions);
        }
    }

    /// Decodes `version`: publishes it and reports it applied, or keeps the last good one and
    /// reports it rejected.
    async fn take<T: DeserializeOwned>(
        &mut self,
        version: pb::Version,
        values: &watch::Sender<Option<Arc<Versioned<T>>>>,
        rejections: &watch::Sender<Option<Rejection>>,
    ) {
        self.next_revision = self.next_revision.max(version.revision + 1);
        match decode::<T>(&version.format, &version.value) {
            Ok(value) => {
                values.send_replace(Some(Arc::new(Versioned {
                    value,
                    version: version.version,
                    revision: version.revision,
                })));
                if let Some(path) = &self.cache {
                    let cached = Cached {
                        namespace: self.namespace.clone(),
                        key: self.key.clone(),
                        version: version.version,
                        revision: version.revision,
                        format: version.format.clone(),
                        value: version.value.clone(),
                    };
                    if let Err(err) = cache::store(path, &cached) {
                        tracing::warn!(path = %path.display(), error = %err, "writing the config cache");
                    }
                }
                self.report(version.version, None).await;
            }
            Err(error) => {
                tracing::warn!(namespace = %self.namespace, key = %self.key, version = version.version,
                    %error, "rejecting a config version that does not decode; keeping the last good one");
                rejections.send_replace(Some(Rejection {
                    version: version.version,
                    error: error.clone(),
                }));
                self.report(version.version, Some(error)).await;
            }
        }
    }

    /// Tells the server this client applied (`error` `None`) or rejected `version`. A report
    /// that fails is logged, never fatal.
    async fn report(&mut self, version: u64, error: Option<String>) {
        for _ in 0..2 {
            let lease = match self.report_lease().await {
                Ok(lease) => lease,
                Err(err) => {
                    tracing::debug!(error = %err, "no lease for config reports");
                    return;
                }
            };
            let request = pb::ReportRequest {
                namespace: self.namespace.clone(),
                key: self.key.clone(),
                client: self.client_id.clone(),
                version,
                applied: error.is_none(),
                error: error.clone().unwrap_or_default(),
                lease,
            };
            let sent = self
                .client
                .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                    config(channel).report(request).await
                })
                .await;
            match sent {
                Ok(_) => return,
                Err(Error::Status(status)) if concord_proto::rpctypes::is_lease_not_found(&status) => {
                    self.session = None; // expired meanwhile: a new one, once
                }
                Err(err) => {
                    tracing::debug!(error = %err, "reporting a config version");
                    return;
                }
            }
        }
    }

    async fn report_lease(&mut self) -> Result<i64> {
        if let Some(session) = self.session.as_ref().filter(|s| !s.is_lost()) {
            return Ok(session.lease());
        }
        let session = OwnedSession::new(Session::new(self.client.clone(), REPORT_TTL_SECS).await?);
        let lease = session.lease();
        self.session = Some(session);
        Ok(lease)
    }
}

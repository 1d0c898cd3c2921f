//! [`Client`]: etcd's KV, Watch and Lease services over gRPC, with endpoint failover, and the
//! recipes' [`Kv`] on top of them.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, PutRequest, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest,
};
use concord_proto::mvccpb::KeyValue;
use concord_proto::rpctypes;
use concord_recipes::kv::prefix_end;
use concord_recipes::{Kv, WatchStream};

use crate::endpoints::{Endpoints, Idempotence, kv, lease, unary};
use crate::error::Result;
use crate::lease::KeepAlives;
use crate::options::ClientOptions;

/// A connection to a Concord (or etcd) cluster through a list of endpoints.
///
/// Cheap to clone: clones share the endpoints, their connections and the lease keep-alive
/// stream. Requests go to one endpoint at a time; when it fails (unreachable, a broken
/// connection, `UNAVAILABLE`, or no answer within
/// [`request_timeout`](ClientOptions::request_timeout)) the client moves to the next endpoint
/// and retries there, a bounded number of times with a short backoff, whenever a retry is
/// safe: always for a request that was never sent (no connection), and for reads, keep-alives,
/// revokes and watch creation otherwise. A write that may have been sent is not retried (it may
/// have been applied); its error is returned.
///
/// The client implements the recipes' [`Kv`], so every recipe of `concord_recipes` runs on it;
/// the methods in this crate ([`lock`](Self::lock), [`register`](Self::register),
/// [`config`](Self::config), [`campaign`](Self::campaign), ...) are thin layers over them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("current", &self.current_endpoint())
            .finish()
    }
}

struct Inner {
    endpoints: Endpoints,
    keep_alives: KeepAlives,
    /// What dropped handles left to release in the background (see [`Client::close`]).
    cleanups: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Client {
    /// Connects with [`ClientOptions::default()`] to the first of `endpoints` that answers
    /// (each `host:port` or `http://host:port`).
    ///
    /// ```no_run
    /// # async fn run() -> concord_client::Result<()> {
    /// let client = concord_client::Client::connect(["127.0.0.1:2379", "127.0.0.1:22379"]).await?;
    /// client.put("greeting", "hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(endpoints: impl IntoIterator<Item = impl AsRef<str>>) -> Result<Client> {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Connects with `options` to the first of `endpoints` that answers. Fails with
    /// `UNAVAILABLE` if none does, or if an endpoint is not a valid URL.
    pub async fn connect_with(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        options: ClientOptions,
    ) -> Result<Client> {
        let client = Client::new(endpoints, options)?;
        client.transport().connect_any().await?;
        Ok(client)
    }

    /// A client of `endpoints` that connects on first use instead of now: it can be made while
    /// no member is reachable (a program starting from its cached config, say), and each
    /// request then fails over as usual. Fails only on endpoints that are not valid URLs.
    pub fn new(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        options: ClientOptions,
    ) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: Endpoints::new(endpoints, options)?,
                keep_alives: KeepAlives::default(),
                cleanups: std::sync::Mutex::default(),
            }),
        })
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        self.inner.endpoints.options()
    }

    /// A channel to an endpoint that answers (the current one, else the next), for calling a
    /// service this client does not wrap with a generated client of [`crate::proto`].
    pub async fn channel(&self) -> Result<crate::AuthChannel> {
        let conn = self
            .transport()
            .call(crate::endpoints::Idempotence::Idempotent, |conn| async move {
                Ok(conn)
            })
            .await?;
        Ok(conn.channel)
    }

    /// Runs `cleanup` (a dropped handle releasing what it held) in the background, if there is
    /// a runtime; [`close`](Self::close) waits for it.
    pub(crate) fn spawn_cleanup(&self, cleanup: impl Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the lease expires after its TTL instead
        };
        let task = runtime.spawn(cleanup);
        let mut cleanups = self
            .inner
            .cleanups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cleanups.retain(|task| !task.is_finished());
        cleanups.push(task);
    }

    /// Waits until everything dropped handles (lock guards, leaderships, registrations) still
    /// held is released: their keys deleted, their leases revoked. Call it before a program
    /// exits so that nothing it held waits for a TTL to pass.
    pub async fn close(&self) {
        loop {
            let pending: Vec<_> = {
                let mut cleanups = self
                    .inner
                    .cleanups
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                std::mem::take(&mut *cleanups)
            };
            if pending.is_empty() {
                return;
            }
            for task in pending {
                let _ = task.await;
            }
        }
    }

    /// Sends the unary request `request` with `call(channel, request)` through the failover
    /// policy (see [`Client`]), each attempt within the request timeout; the answer.
    pub(crate) async fn call_unary<Q, R, F, Fut>(
        &self,
        idempotence: Idempotence,
        request: Q,
        call: F,
    ) -> Result<R>
    where
        Q: Clone,
        F: Fn(crate::AuthChannel, tonic::Request<Q>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    {
        let timeout = self.request_timeout();
        let answer = self
            .transport()
            .call(idempotence, |conn| {
                call(conn.channel, unary(request.clone(), timeout))
            })
            .await?;
        Ok(answer.into_inner())
    }

    /// Every endpoint's URL, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.uris()
    }

    /// The URL of the endpoint requests go to now.
    pub fn current_endpoint(&self) -> String {
        self.inner.endpoints.current_uri().to_string()
    }

    pub(crate) fn transport(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    fn request_timeout(&self) -> Duration {
        self.options().request_timeout
    }

    /// Puts `value` at `key`; the revision of the write.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// let revision = client.put("color", "blue").await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<i64> {
        let request = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        let timeout = self.request_timeout();
        let response = self
            .transport()
            .call(Idempotence::Write, |conn| {
                let request = unary(request.clone(), timeout);
                async move { kv(conn.channel).put(request).await }
            })
            .await?
            .into_inner();
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// The key-value at `key`, if there is one.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// if let Some(kv) = client.get("color").await? {
    ///     println!("{} at revision {}", String::from_utf8_lossy(&kv.value), kv.mod_revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        let request = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        Ok(Kv::range(self, request).await?.kvs.into_iter().next())
    }

    /// Every key-value whose key starts with `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<Vec<KeyValue>> {
        let prefix = prefix.into();
        let request = RangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            ..Default::default()
        };
        Ok(Kv::range(self, request).await?.kvs)
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool> {
        let request = DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let timeout = self.request_timeout();
        let response = self
            .transport()
            .call(Idempotence::Write, |conn| {
                let request = unary(request.clone(), timeout);
                async move { kv(conn.channel).delete_range(request).await }
            })
            .await?
            .into_inner();
        Ok(response.deleted > 0)
    }
}

impl Kv for Client {
    /// Runs a txn. One that only reads is retried like a range; one that writes is not retried
    /// once it may have been sent.
    async fn txn(&self, request: TxnRequest) -> concord_recipes::error::Result<TxnResponse> {
        let idempotence = if concord_proto::txn::is_read_only(&request) {
            Idempotence::Idempotent
        } else {
            Idempotence::Write
        };
        let timeout = self.request_timeout();
        let response = self
            .transport()
            .call(idempotence, |conn| {
                let request = unary(request.clone(), timeout);
                async move { kv(conn.channel).txn(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    async fn range(&self, request: RangeRequest) -> concord_recipes::error::Result<RangeResponse> {
        let timeout = self.request_timeout();
        let response = self
            .transport()
            .call(Idempotence::Idempotent, |conn| {
                let request = unary(request.clone(), timeout);
                async move { kv(conn.channel).range(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Opens a Watch stream with one create request (retried on the next endpoint like a read
    /// until the server confirms it), then yields the watch's responses as batches. The stream
    /// ends with an error when the server cancels the watch (compacted: `OUT_OF_RANGE` with
    /// etcd's `etcdserver: mvcc: required revision has been compacted`) or the stream breaks.
    async fn watch(&self, request: WatchCreateRequest) -> concord_recipes::error::Result<WatchStream> {
        let stream = self
            .transport()
            .call(Idempotence::Idempotent, |conn| {
                crate::watch::open(conn.channel, request.clone())
            })
            .await?;
        Ok(stream)
    }

    async fn lease_grant(&self, ttl: i64) -> concord_recipes::error::Result<LeaseGrantResponse> {
        let timeout = self.request_timeout();
        let response = self
            .transport()
            .call(Idempotence::Write, |conn| {
                let request = unary(LeaseGrantRequest { ttl, id: 0 }, timeout);
                async move { lease(conn.channel).lease_grant(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Renews the lease once, on a LeaseKeepAlive stream this client's keep-alives share.
    async fn lease_keep_alive(&self, id: i64) -> concord_recipes::error::Result<i64> {
        let keep_alives = &self.inner.keep_alives;
        let ttl = self
            .transport()
            .call(Idempotence::Idempotent, |conn| keep_alives.renew(conn, id))
            .await?;
        Ok(ttl)
    }

    /// Revokes the lease. Revoking is idempotent, so it is retried; if a retry finds the lease
    /// gone, the revoke that was lost in transit is taken to have done it.
    async fn lease_revoke(&self, id: i64) -> concord_recipes::error::Result<()> {
        let timeout = self.request_timeout();
        let mut attempts = 0;
        let revoked = self
            .transport()
            .call(Idempotence::Idempotent, |conn| {
                attempts += 1;
                let retried = attempts > 1;
                let request = unary(LeaseRevokeRequest { id }, timeout);
                async move {
                    match lease(conn.channel).lease_revoke(request).await {
                        Err(status) if retried && rpctypes::is_lease_not_found(&status) => Ok(()),
                        Err(status) => Err(status),
                        Ok(_) => Ok(()),
                    }
                }
            })
            .await;
        Ok(revoked?)
    }
}

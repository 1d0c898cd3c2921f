//! [`Session`]: a lease kept alive in the background, which every recipe's keys are attached to
//! so that they vanish when their owner does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::kv::Kv;

/// Shortest pause between two keep-alives, whatever the TTL.
const MIN_KEEP_ALIVE_PERIOD: Duration = Duration::from_millis(100);

/// A lease and the task keeping it alive, like etcd's `concurrency.Session`.
///
/// Clones share the lease and the task. Dropping the last clone stops the keep-alives without
/// revoking (the lease then expires after its TTL); [`close`](Self::close) revokes at once.
pub struct Session<K: Kv> {
    inner: Arc<Inner<K>>,
}

impl<K: Kv> Clone for Session<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K> {
    kv: K,
    lease: i64,
    /// True once the lease is known gone (set by the keep-alive task, or by `close`).
    lost: watch::Sender<bool>,
    /// The keep-alive task (sessions made with `new`).
    keep_alive: Option<AbortHandle>,
}

impl<K> Drop for Inner<K> {
    fn drop(&mut self) {
        if let Some(task) = &self.keep_alive {
            task.abort();
        }
    }
}

impl<K: Kv> Session<K> {
    /// Grants a lease of `ttl` seconds and keeps it alive from a background task, every third
    /// of the TTL the store granted. Must be called within a tokio runtime.
    pub async fn new(kv: K, ttl: i64) -> Result<Self> {
        let granted = kv.lease_grant(ttl).await?;
        if !granted.error.is_empty() {
            return Err(Error::Store(tonic::Status::unknown(granted.error)));
        }
        let lost = watch::Sender::new(false);
        let task = tokio::spawn(keep_alive(kv.clone(), granted.id, granted.ttl, lost.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                kv,
                lease: granted.id,
                lost,
                keep_alive: Some(task.abort_handle()),
            }),
        })
    }

    /// A session on lease `lease`, which someone else keeps alive (the server's Lock and
    /// Election services use the lease their client sent). It has no keep-alive task, so it is
    /// never reported lost; recipes still notice a gone lease when they next touch their keys.
    pub fn from_lease(kv: K, lease: i64) -> Self {
        Self {
            inner: Arc::new(Inner {
                kv,
                lease,
                lost: watch::Sender::new(false),
                keep_alive: None,
            }),
        }
    }

    /// The lease's ID.
    pub fn lease(&self) -> i64 {
        self.inner.lease
    }

    /// The store the session lives in.
    pub fn kv(&self) -> &K {
        &self.inner.kv
    }

    /// Whether the lease is known to be gone (see [`lost`](Self::lost)).
    pub fn is_lost(&self) -> bool {
        *self.inner.lost.borrow()
    }

    /// Completes once the lease is known to be gone: a keep-alive found it expired or revoked,
    /// keep-alives failed for longer than the TTL, or a clone [closed](Self::close) the session.
    /// Never completes for a [`from_lease`](Self::from_lease) session, which nobody here
    /// watches. The future does not borrow the session.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.inner.lost.subscribe();
        async move {
            // An error means every sender is gone, which only happens once the session is.
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Stops the keep-alives and revokes the lease, deleting every key attached to it (for all
    /// clones of this session).
    pub async fn close(self) -> Result<()> {
        if let Some(task) = &self.inner.keep_alive {
            task.abort();
        }
        self.inner.lost.send_replace(true);
        match self.inner.kv.lease_revoke(self.inner.lease).await {
            Err(err) if is_lease_gone(&err) => Ok(()),
            other => other,
        }
    }
}

/// Renews `lease` every third of its TTL until it is gone, then sets `lost`.
async fn keep_alive<K: Kv>(kv: K, lease: i64, ttl: i64, lost: watch::Sender<bool>) {
    let mut ttl = Duration::from_secs(ttl.max(1).unsigned_abs());
    let mut renewed = Instant::now();
    loop {
        let period = (ttl / 3).max(MIN_KEEP_ALIVE_PERIOD);
        tokio::time::sleep(period).await;
        match tokio::time::timeout(period, kv.lease_keep_alive(lease)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(granted)) => {
                ttl = Duration::from_secs(granted.unsigned_abs());
                renewed = Instant::now();
            }
            Ok(Err(err)) if is_lease_gone(&err) => break,
            Ok(Err(err)) => tracing::debug!(lease, error = %err, "lease keep-alive failed"),
            Err(_) => tracing::debug!(lease, "lease keep-alive timed out"),
        }
        if renewed.elapsed() >= ttl {
            break; // the store has expired it by now
        }
    }
    tracing::debug!(lease, "session lost");
    lost.send_replace(true);
}

/// Whether `err` is the store saying the lease does not exist (etcd's `ErrLeaseNotFound`).
pub(crate) fn is_lease_gone(err: &Error) -> bool {
    match err {
        Error::SessionExpired => true,
        Error::Store(status) => concord_proto::rpctypes::is_lease_not_found(status),
        _ => false,
    }
}

/// `err`, with a missing lease reported as [`Error::SessionExpired`] (whose status is the same).
pub(crate) fn lease_gone_is_expiry(err: Error) -> Error {
    if is_lease_gone(&err) {
        Error::SessionExpired
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::put_op;
    use crate::memory::MemoryKv;
    use concord_proto::etcdserverpb::{RangeRequest, TxnRequest};

    const BOUND: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn keeps_the_lease_alive_every_third_of_the_ttl() {
        let kv = MemoryKv::new();
        let session = Session::new(kv.clone(), 3).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(kv.keep_alives(session.lease()), 3);
        assert!(!session.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_reported_lost() {
        let kv = MemoryKv::new();
        let session = Session::new(kv.clone(), 3).await.unwrap();
        let lost = session.lost();
        kv.expire_lease(session.lease());
        tokio::time::timeout(BOUND, lost).await.unwrap();
        assert!(session.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_failing_for_a_ttl_lose_the_session() {
        let kv = MemoryKv::new();
        let session = Session::new(kv.clone(), 3).await.unwrap();
        kv.set_unavailable(true);
        let started = Instant::now();
        tokio::time::timeout(BOUND, session.lost()).await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited <= Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_revokes_and_drop_only_stops_keep_alives() {
        let kv = MemoryKv::new();
        let closed = Session::new(kv.clone(), 3).await.unwrap();
        let lease = closed.lease();
        let put = TxnRequest {
            success: vec![put_op("k", "", lease)],
            ..Default::default()
        };
        kv.txn(put).await.unwrap();
        let observer = closed.clone();
        closed.close().await.unwrap();
        assert!(!kv.has_lease(lease));
        let k = kv
            .range(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(k.kvs.is_empty());
        assert!(observer.is_lost());

        let dropped = Session::new(kv.clone(), 3).await.unwrap();
        let lease = dropped.lease();
        drop(dropped);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(kv.keep_alives(lease), 0);
        assert!(kv.has_lease(lease));
    }

    #[tokio::test(start_paused = true)]
    async fn a_borrowed_lease_is_not_kept_alive_nor_lost() {
        let kv = MemoryKv::new();
        let lease = kv.lease_grant(3).await.unwrap().id;
        let session = Session::from_lease(kv.clone(), lease);
        assert!(
            tokio::time::timeout(Duration::from_secs(10), session.lost())
                .await
                .is_err()
        );
        assert_eq!((session.lease(), kv.keep_alives(lease)), (lease, 0));
        assert!(!session.is_lost());
    }
}

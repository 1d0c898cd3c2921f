//! [`Session`]: a lease kept alive in the background, which every recipe's keys are attached to
//! so that they vanish when their owner does.
//!
//! **When is a session lost?** The store expires a lease TTL seconds after the last keep-alive
//! it *received*. The session cannot know when that was, but it knows when it *sent* each
//! keep-alive that was answered, which is earlier. So it declares the lease lost at the send
//! time of the last answered keep-alive (or of the grant) plus the TTL the store answered:
//! never after the store can have expired it, so a lock holder told "lost" stops before anyone
//! else can have the lock. It reports the session [at risk](Session::at_risk) (Curator's
//! SUSPENDED) as soon as a keep-alive fails or is late, and keeps retrying until the deadline.

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

/// The pause before retrying a failed keep-alive: a tenth of the TTL, within these bounds.
const RETRY_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// How a session's lease is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Kept alive on schedule.
    Healthy,
    /// A keep-alive failed or is late: the lease may still be alive, or not for long. Work
    /// that must not run without it should pause (Curator's SUSPENDED).
    AtRisk,
    /// The lease is gone, or may be: the store can have expired it by now.
    Lost,
}

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
    /// How the lease is doing (set by the keep-alive task, or by `close`).
    health: watch::Sender<Health>,
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
        let sent = Instant::now();
        let granted = kv.lease_grant(ttl).await?;
        if !granted.error.is_empty() {
            return Err(Error::Store(tonic::Status::unknown(granted.error)));
        }
        let health = watch::Sender::new(Health::Healthy);
        let deadline = sent + Duration::from_secs(granted.ttl.max(1).unsigned_abs());
        let task = tokio::spawn(keep_alive(kv.clone(), granted.id, deadline, health.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                kv,
                lease: granted.id,
                health,
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
                health: watch::Sender::new(Health::Healthy),
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

    /// How the lease is doing now.
    pub fn health(&self) -> Health {
        *self.inner.health.borrow()
    }

    /// Whether the lease is gone, or may be (see [`lost`](Self::lost)).
    pub fn is_lost(&self) -> bool {
        self.health() == Health::Lost
    }

    /// Completes once the lease is gone or may be: a keep-alive found it expired or revoked,
    /// the store may have expired it (the last answered keep-alive was *sent* a TTL ago: see
    /// the module docs), or a clone [closed](Self::close) the session. Never completes for a
    /// [`from_lease`](Self::from_lease) session, which nobody here watches. The future does
    /// not borrow the session.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static + use<K> {
        self.reaches(|health| health == Health::Lost)
    }

    /// Completes once the lease is at risk (a keep-alive failed or is late) or lost; earlier
    /// than [`lost`](Self::lost), so work can pause while the keep-alives retry.
    pub fn at_risk(&self) -> impl Future<Output = ()> + Send + 'static + use<K> {
        self.reaches(|health| health != Health::Healthy)
    }

    /// A receiver of the lease's health, to follow it (it goes back to healthy when a retried
    /// keep-alive succeeds in time).
    pub fn health_changes(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    fn reaches(&self, state: fn(Health) -> bool) -> impl Future<Output = ()> + Send + 'static + use<K> {
        let mut health = self.inner.health.subscribe();
        async move {
            // An error means every sender is gone, which only happens once the session is.
            let _ = health.wait_for(|h| state(*h)).await;
        }
    }

    /// Stops the keep-alives and revokes the lease, deleting every key attached to it (for all
    /// clones of this session).
    pub async fn close(self) -> Result<()> {
        if let Some(task) = &self.inner.keep_alive {
            task.abort();
        }
        self.inner.health.send_replace(Health::Lost);
        match self.inner.kv.lease_revoke(self.inner.lease).await {
            Err(err) if is_lease_gone(&err) => Ok(()),
            other => other,
        }
    }
}

/// Renews `lease` every third of its TTL until it is gone, or until `deadline` (the send time
/// of the last answered keep-alive plus its TTL) passes without a newer answer; then reports it
/// lost. A failed keep-alive reports it at risk and is retried after a tenth of the TTL.
async fn keep_alive<K: Kv>(kv: K, lease: i64, mut deadline: Instant, health: watch::Sender<Health>) {
    let mut ttl = deadline.saturating_duration_since(Instant::now());
    let mut next = Instant::now() + (ttl / 3).max(MIN_KEEP_ALIVE_PERIOD);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let answer = kv.lease_keep_alive(lease);
        tokio::pin!(answer);
        let late = tokio::time::sleep((ttl / 3).max(MIN_KEEP_ALIVE_PERIOD));
        tokio::pin!(late);
        let answer = loop {
            tokio::select! {
                answer = &mut answer => break Some(answer),
                () = &mut late, if !late.is_elapsed() => at_risk(&health),
                () = tokio::time::sleep_until(deadline) => break None,
            }
        };
        let failure = match answer {
            None => break, // the deadline passed while waiting for the answer
            Some(Ok(0)) => break,
            Some(Err(err)) if is_lease_gone(&err) => break,
            Some(Ok(granted)) => {
                ttl = Duration::from_secs(granted.unsigned_abs());
                deadline = sent + ttl;
                next = sent + (ttl / 3).max(MIN_KEEP_ALIVE_PERIOD);
                health.send_if_modified(|h| std::mem::replace(h, Health::Healthy) != Health::Healthy);
                continue;
            }
            Some(Err(err)) => err.to_string(),
        };
        tracing::debug!(lease, error = %failure, "lease keep-alive failed; the session is at risk");
        at_risk(&health);
        next = Instant::now() + (ttl / 10).clamp(RETRY_PAUSE.0, RETRY_PAUSE.1);
    }
    tracing::debug!(lease, "session lost");
    health.send_replace(Health::Lost);
}

/// Reports the session at risk (once).
fn at_risk(health: &watch::Sender<Health>) {
    health.send_if_modified(|h| std::mem::replace(h, Health::AtRisk) != Health::AtRisk);
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
    async fn failing_keep_alives_put_the_session_at_risk_then_lose_it_by_the_deadline() {
        let kv = MemoryKv::new();
        let session = Session::new(kv.clone(), 3).await.unwrap();
        // The first renewal is sent at 1 s and answered: the deadline is 1 s + 3 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(kv.keep_alives(session.lease()), 1);
        let deadline = Instant::now() - Duration::from_millis(500) + Duration::from_secs(3);
        kv.set_unavailable(true);
        let started = Instant::now();
        tokio::time::timeout(BOUND, session.at_risk()).await.unwrap();
        // The next renewal (at 2 s) fails: at risk at once.
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(session.health(), Health::AtRisk);
        tokio::time::timeout(BOUND, session.lost()).await.unwrap();
        // Lost exactly at the deadline: never after the store can have expired the lease.
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_that_succeeds_again_in_time_makes_the_session_healthy() {
        let kv = MemoryKv::new();
        let session = Session::new(kv.clone(), 3).await.unwrap();
        let mut health = session.health_changes();
        kv.set_unavailable(true);
        tokio::time::timeout(BOUND, session.at_risk()).await.unwrap();
        kv.set_unavailable(false);
        tokio::time::timeout(BOUND, health.wait_for(|h| *h == Health::Healthy))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(session.health(), Health::Healthy);
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

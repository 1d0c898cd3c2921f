//! [`Client::lock`] and [`LockGuard`]: a distributed lock held with its own session, over the
//! recipes' [`Mutex`].

use std::future::Future;
use std::time::Duration;

use concord_proto::etcdserverpb::Compare;
use concord_recipes::mutex::Mutex;
use concord_recipes::session::Session;

use crate::client::Client;
use crate::error::Result;
use crate::options::ttl_secs;
use crate::owned::OwnedSession;

impl Client {
    /// Waits until this caller holds the lock `name`, with a lease of
    /// [`lock_ttl`](crate::ClientOptions::lock_ttl) kept alive in the background.
    ///
    /// Each call has its own session, so two tasks of one client exclude each other like two
    /// processes do. Waiters are served in the order they asked. If the holder dies, the lock
    /// passes on when its lease expires. Cancelling the call removes its place in the queue.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// let guard = client.lock("jobs/nightly-report").await?;
    /// // ... only one process in the cluster runs this at a time ...
    /// guard.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, name: impl Into<Vec<u8>>) -> Result<LockGuard> {
        self.lock_with_ttl(name, self.options().lock_ttl).await
    }

    /// [`lock`](Self::lock) with a lease of `ttl` (whole seconds, rounded up; the server may
    /// raise it to its minimum).
    pub async fn lock_with_ttl(&self, name: impl Into<Vec<u8>>, ttl: Duration) -> Result<LockGuard> {
        let session = Session::new(self.clone(), ttl_secs(ttl)).await?;
        let mut mutex = Mutex::new(&session, name);
        let session = OwnedSession::new(session);
        // On failure or cancellation, dropping `session` revokes the lease in the background.
        mutex.lock().await?;
        let fence = mutex.fence()?;
        Ok(LockGuard {
            mutex,
            fence,
            hold: Hold::Own(session),
        })
    }

    /// A session of `ttl` that many locks can share, as etcd's `concurrency.Session`: one
    /// lease, kept alive in the background, carries every lock taken through it, and when it is
    /// lost every one of them is. Closing the session releases them all at once.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use std::time::Duration;
    ///
    /// let session = client.session(Duration::from_secs(10)).await?;
    /// let accounts = session.lock("accounts").await?;
    /// let ledger = session.lock("ledger").await?;   // the same lease
    /// // ...
    /// session.close().await?;                       // releases both
    /// # Ok(()) }
    /// ```
    pub async fn session(&self, ttl: Duration) -> Result<SharedSession> {
        let session = Session::new(self.clone(), ttl_secs(ttl)).await?;
        Ok(SharedSession {
            session: OwnedSession::new(session),
        })
    }

    /// Takes the lock `name` if nobody holds it; `None` (and nothing left behind)
    /// otherwise.
    pub async fn try_lock(&self, name: impl Into<Vec<u8>>) -> Result<Option<LockGuard>> {
        let ttl = ttl_secs(self.options().lock_ttl);
        let session = Session::new(self.clone(), ttl).await?;
        let mut mutex = Mutex::new(&session, name);
        let mut session = OwnedSession::new(session);
        match mutex.try_lock().await {
            Ok(()) => {
                let fence = mutex.fence()?;
                Ok(Some(LockGuard {
                    mutex,
                    fence,
                    hold: Hold::Own(session),
                }))
            }
            Err(concord_recipes::Error::Locked) => {
                session.end(async { Ok(()) }).await?;
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }
}

/// A held lock. [`unlock`](Self::unlock) releases it; dropping the guard releases it in the
/// background by revoking its lease (or, outside a tokio runtime, when the lease expires).
///
/// Holding the guard does not by itself prove the lock is still held: if the process stalls
/// past the lease's TTL, or the keep-alives fail for that long, the lease expires and another
/// waiter gets the lock. [`lost`](Self::lost) fires *before* the server can have expired the
/// lease (at the send time of the last answered keep-alive plus the TTL), and
/// [`at_risk`](Self::at_risk) earlier still, when a keep-alive fails; writes that must only
/// happen under the lock should carry the [`fence`](Self::fence) all the same.
#[must_use = "dropping a LockGuard releases the lock"]
pub struct LockGuard {
    mutex: Mutex<Client>,
    fence: Compare,
    hold: Hold,
}

/// The lease a lock is held with.
enum Hold {
    /// Its own session: revoked when the lock is released or the guard dropped.
    Own(OwnedSession),
    /// A [`SharedSession`]'s: only the lock's key goes when the lock is released (or, in the
    /// background, when the guard is dropped).
    Shared {
        session: Session<Client>,
        released: bool,
    },
}

impl Hold {
    /// The session the lock is held with (`None` once its own was ended).
    fn session(&self) -> Option<Session<Client>> {
        match self {
            Hold::Own(session) => session.shared(),
            Hold::Shared { session, .. } => Some(session.clone()),
        }
    }
}

/// A lease many locks share: see [`Client::session`].
#[must_use = "dropping a SharedSession revokes its lease, releasing its locks"]
pub struct SharedSession {
    session: OwnedSession,
}

impl std::fmt::Debug for SharedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSession")
            .field("lease", &self.lease())
            .finish()
    }
}

impl SharedSession {
    /// The shared lease.
    pub fn lease(&self) -> i64 {
        self.session.lease()
    }

    /// Completes once the lease is gone or may be (every lock of the session with it).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.session.lost()
    }

    /// Completes once a keep-alive failed or is late, or the lease is lost.
    pub fn at_risk(&self) -> impl Future<Output = ()> + Send + 'static {
        self.session.at_risk()
    }

    /// Waits until this session holds the lock `name`. Each lock name can be held once per
    /// session (a second `lock` of the same name through the same session shares the key).
    pub async fn lock(&self, name: impl Into<Vec<u8>>) -> Result<LockGuard> {
        let Some(session) = self.session.shared() else {
            return Err(concord_recipes::Error::SessionExpired.into());
        };
        let mut mutex = Mutex::new(&session, name);
        mutex.lock().await?;
        let fence = mutex.fence()?;
        Ok(LockGuard {
            mutex,
            fence,
            hold: Hold::Shared {
                session,
                released: false,
            },
        })
    }

    /// Revokes the lease: every lock of the session is released at once.
    pub async fn close(mut self) -> Result<()> {
        self.session.end(async { Ok(()) }).await
    }
}

impl Drop for LockGuard {
    /// A lock on a shared session not released yet: delete its key in the background (which
    /// [`Client::close`] waits for). A lock on its own session goes with its lease.
    fn drop(&mut self) {
        if let Hold::Shared {
            session,
            released: false,
        } = &self.hold
        {
            let key = self.mutex.key().to_vec();
            let txn = concord_proto::etcdserverpb::TxnRequest {
                compare: vec![self.fence.clone()],
                success: vec![concord_recipes::kv::delete_op(key)],
                failure: vec![],
            };
            let client = session.kv().clone();
            client.clone().spawn_cleanup(async move {
                use concord_recipes::Kv;
                if let Err(err) = client.txn(txn).await {
                    tracing::debug!(error = %err, "releasing a dropped lock");
                }
            });
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("revision", &self.revision())
            .field("lease", &self.lease())
            .finish()
    }
}

impl LockGuard {
    /// The key that holds the lock, `name/<lease hex>`.
    pub fn key(&self) -> &[u8] {
        self.mutex.key()
    }

    /// The key's create revision: a number that grows with every new holder of the lock, for
    /// systems that take a fencing token.
    pub fn revision(&self) -> i64 {
        self.mutex.revision()
    }

    /// The lease the lock is held with.
    pub fn lease(&self) -> i64 {
        self.hold.session().map_or(0, |session| session.lease())
    }

    /// The fencing compare: it holds in a txn only while this hold on the lock lasts (the
    /// key still exists with the same create revision), so a txn guarded by it cannot write
    /// after the lock passed on.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use concord_client::Kv;
    /// use concord_client::proto::etcdserverpb::TxnRequest;
    /// use concord_client::recipes::kv::put_op;
    ///
    /// let guard = client.lock("ledger").await?;
    /// let txn = TxnRequest {
    ///     compare: vec![guard.fence()],
    ///     success: vec![put_op("ledger/balance", "42", 0)],
    ///     failure: vec![],
    /// };
    /// let still_held = client.txn(txn).await?.succeeded;
    /// # let _ = still_held; Ok(()) }
    /// ```
    pub fn fence(&self) -> Compare {
        self.fence.clone()
    }

    /// Whether the lock's lease is gone or may be (the lock may be someone else's).
    pub fn is_lost(&self) -> bool {
        self.hold.session().is_none_or(|session| session.is_lost())
    }

    /// Completes once the lock's lease is gone or may be: no later than the send time of the
    /// last answered keep-alive plus the TTL, so before the server can have expired it. Stop
    /// the work the lock protects. The future does not borrow the guard.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let lost = self.hold.session().map(|session| session.lost());
        async move {
            if let Some(lost) = lost {
                lost.await;
            }
        }
    }

    /// Completes once a keep-alive failed or is late (or the lease is lost): the lock is
    /// still held, but may not be for long (Curator's SUSPENDED). The future does not borrow
    /// the guard.
    pub fn at_risk(&self) -> impl Future<Output = ()> + Send + 'static {
        let at_risk = self.hold.session().map(|session| session.at_risk());
        async move {
            if let Some(at_risk) = at_risk {
                at_risk.await;
            }
        }
    }

    /// Releases the lock: deletes its key, then revokes its lease (a shared session's lease
    /// stays, for its other locks).
    pub async fn unlock(mut self) -> Result<()> {
        let mutex = &mut self.mutex;
        match &mut self.hold {
            Hold::Own(session) => session.end(async move { Ok(mutex.unlock().await?) }).await,
            Hold::Shared { released, .. } => {
                *released = true;
                Ok(mutex.unlock().await?)
            }
        }
    }
}

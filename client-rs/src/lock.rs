//! [`Client::lock`] and [`LockGuard`]: a distributed lock held with its own session, over the
//! recipes' [`Mutex`].

use std::future::Future;
use std::time::Duration;

use concord_proto::etcdserverpb::Compare;
use concord_recipes::election::Election;
use concord_recipes::mutex::Mutex;
use concord_recipes::session::Session;

use crate::client::Client;
use crate::election::Leadership;
use crate::error::Result;
use crate::options::ttl_secs;
use crate::owned::{Hold, OwnedSession};

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

    /// A session of `ttl` that many locks and campaigns can share, as etcd's
    /// `concurrency.Session`: one lease, kept alive in the background, carries every lock taken
    /// and every leadership won through it, and when it is lost every one of them is. Closing the session releases them all at once.
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

/// A lease many locks and leaderships share: see [`Client::session`].
#[must_use = "dropping a SharedSession revokes its lease, releasing its locks and leaderships"]
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

    /// Completes once the lease is gone or may be (every lock and leadership of the session
    /// with it).
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
            hold: Hold::Shared {
                session,
                key: mutex.key().to_vec(),
                revision: mutex.revision(),
                released: false,
            },
            mutex,
            fence,
        })
    }

    /// Runs for leader of the election `name` with `value` on this session's lease, and waits
    /// until elected (see [`Client::campaign`]). Resigning deletes only the leadership's key;
    /// losing or closing the session ends it with the session's locks. One session has one
    /// candidacy per election: a second campaign for the same name through it shares the key.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use std::time::Duration;
    ///
    /// let session = client.session(Duration::from_secs(10)).await?;
    /// let leadership = session.campaign("scheduler", "worker-3").await?;
    /// let shard = session.lock("shards/7").await?;   // the same lease
    /// // ...
    /// leadership.resign().await?;                    // the lock stays held
    /// # drop(shard); Ok(()) }
    /// ```
    pub async fn campaign(&self, name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<Leadership> {
        let Some(session) = self.session.shared() else {
            return Err(concord_recipes::Error::SessionExpired.into());
        };
        let election = Election::new(&session, name);
        Leadership::win_shared(election, session, value).await
    }

    /// Revokes the lease: every lock and leadership of the session is released at once.
    pub async fn close(mut self) -> Result<()> {
        self.session.end(async { Ok(()) }).await
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
        self.hold.lease()
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
        self.hold.is_lost()
    }

    /// Completes once the lock's lease is gone or may be: no later than the send time of the
    /// last answered keep-alive plus the TTL, so before the server can have expired it. Stop
    /// the work the lock protects. The future does not borrow the guard.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.hold.lost()
    }

    /// Completes once a keep-alive failed or is late (or the lease is lost): the lock is
    /// still held, but may not be for long (Curator's SUSPENDED). The future does not borrow
    /// the guard.
    pub fn at_risk(&self) -> impl Future<Output = ()> + Send + 'static {
        self.hold.at_risk()
    }

    /// Releases the lock: deletes its key, then revokes its lease (a shared session's lease
    /// stays, for its other locks).
    pub async fn unlock(mut self) -> Result<()> {
        let mutex = &mut self.mutex;
        self.hold.end(async move { Ok(mutex.unlock().await?) }).await
    }
}

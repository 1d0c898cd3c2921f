//! [`Mutex`]: a distributed lock, etcd's `concurrency.Mutex`.
//!
//! Every contender puts a key `name/<lease hex>` attached to its session's lease; the key with
//! the lowest create revision holds the lock, the others queue behind it in create-revision
//! order. A waiter watches only the key just ahead of it, so a release wakes one waiter, not all
//! of them. A holder that crashes loses its key when its lease expires, which hands the lock on.

use std::time::Duration;

use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::etcdserverpb::{
    Compare, RangeRequest, ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest,
};
use concord_proto::mvccpb::event::EventType;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::kv::{
    Kv, create_revision_is, delete_op, first_created, get_op, last_created_before, put_op, range_op,
    range_result,
};
use crate::session::{Session, lease_gone_is_expiry};

/// A lock named by a key prefix, held with a [`Session`]'s lease.
///
/// If a [`lock`](Self::lock) future is dropped while waiting, its key is deleted in the
/// background (when a tokio runtime is at hand); at worst it stays queued until the session's
/// lease ends, so a cancelled waiter never blocks the lock for longer than its lease.
pub struct Mutex<K: Kv> {
    session: Session<K>,
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// The create revision of `key` while this handle holds the lock; 0 otherwise.
    revision: i64,
    header: Option<ResponseHeader>,
}

impl<K: Kv> Mutex<K> {
    /// The lock `name` (its keys live under `name/`), taken with `session`'s lease.
    pub fn new(session: &Session<K>, name: impl Into<Vec<u8>>) -> Self {
        let prefix = prefix_of(name);
        Self {
            key: lease_key(&prefix, session.lease()),
            session: session.clone(),
            prefix,
            revision: 0,
            header: None,
        }
    }

    /// Waits until this session holds the lock. Fails with [`Error::SessionExpired`] if the
    /// session's lease ended before the lock was reached (the key went with it), and removes
    /// its key on any failure.
    pub async fn lock(&mut self) -> Result<()> {
        let (acquired, revision, created) = self.acquire().await?;
        if owns(&acquired, revision) {
            self.held(revision, acquired.header);
            return Ok(());
        }
        let cleanup = Cleanup::new(self.session.kv(), &self.key, revision, created);
        match wait_turn(&self.session, &self.prefix, &self.key, revision).await {
            Ok(header) => {
                cleanup.disarm();
                self.held(revision, Some(header));
                Ok(())
            }
            Err(err) => {
                cleanup.run().await;
                Err(err)
            }
        }
    }

    /// Takes the lock if nobody holds it, else fails with [`Error::Locked`] and leaves no key.
    pub async fn try_lock(&mut self) -> Result<()> {
        let (acquired, revision, _) = self.acquire().await?;
        if owns(&acquired, revision) {
            self.held(revision, acquired.header);
            return Ok(());
        }
        self.session
            .kv()
            .txn(delete_if_created_at(&self.key, revision))
            .await?;
        Err(Error::Locked)
    }

    /// Releases the lock (deletes this session's key, whether or not this handle holds it).
    pub async fn unlock(&mut self) -> Result<()> {
        let delete = TxnRequest {
            success: vec![delete_op(self.key.clone())],
            ..Default::default()
        };
        self.session.kv().txn(delete).await?;
        self.revision = 0;
        self.header = None;
        Ok(())
    }

    /// This session's key in the lock's queue, `name/<lease hex>`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The create revision of [`key`](Self::key) while this handle holds the lock; 0 otherwise.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The header of the read that found this handle holding the lock, while it does.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// The fencing token: a compare that holds only while this handle's hold on the lock
    /// lasts (its key still exists with the same create revision). Add it to a txn to make the
    /// txn's writes conditional on still holding the lock. [`Error::NotHeld`] if not locked.
    pub fn fence(&self) -> Result<Compare> {
        if self.revision == 0 {
            return Err(Error::NotHeld("mutex: not locked"));
        }
        Ok(create_revision_is(self.key.clone(), self.revision))
    }

    /// Asks the store whether this handle still holds the lock.
    pub async fn is_owner(&self) -> Result<bool> {
        let owner = self.session.kv().range(first_created(&self.prefix)).await?;
        Ok(self.revision != 0
            && owner
                .kvs
                .first()
                .is_some_and(|kv| kv.create_revision == self.revision))
    }

    fn held(&mut self, revision: i64, header: Option<ResponseHeader>) {
        self.revision = revision;
        self.header = header;
    }

    /// One txn: queue this session's key unless it is queued already, and read the owner.
    /// Returns the answer, the key's create revision, and whether this call created the key.
    async fn acquire(&self) -> Result<(TxnResponse, i64, bool)> {
        if self.session.is_lost() {
            return Err(Error::SessionExpired);
        }
        let owner = || range_op(first_created(&self.prefix));
        let txn = TxnRequest {
            compare: vec![create_revision_is(self.key.clone(), 0)],
            success: vec![put_op(self.key.clone(), "", self.session.lease()), owner()],
            failure: vec![get_op(self.key.clone()), owner()],
        };
        let response = self.session.kv().txn(txn).await.map_err(lease_gone_is_expiry)?;
        let revision = match (response.succeeded, range_result(&response, 0).first()) {
            (true, _) => response.header.as_ref().map_or(0, |h| h.revision),
            (false, Some(mine)) => mine.create_revision,
            (false, None) => return Err(Error::SessionExpired), // deleted under the txn: impossible
        };
        let created = response.succeeded;
        Ok((response, revision, created))
    }
}

/// `name` + `/`: the prefix a lock's or election's keys live under.
pub(crate) fn prefix_of(name: impl Into<Vec<u8>>) -> Vec<u8> {
    let mut prefix = name.into();
    prefix.push(b'/');
    prefix
}

/// The key a session with `lease` queues under `prefix`: the lease in lowercase hex, as etcd.
pub(crate) fn lease_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    [prefix, format!("{lease:x}").as_bytes()].concat()
}

/// Whether the owner read at index 1 of an acquiring txn is the key created at `revision`.
fn owns(acquired: &TxnResponse, revision: i64) -> bool {
    range_result(acquired, 1)
        .first()
        .is_none_or(|owner| owner.create_revision == revision)
}

/// Waits until `key`, created at `revision` under `prefix`, is the oldest key there, then checks
/// that it still exists: a key whose lease ended while it waited is gone, and the wait ending
/// does not make its owner the holder (etcd 3.4.3 said it did, which Jepsen caught). Ends
/// early with [`Error::SessionExpired`] if `session` reports its lease lost.
pub(crate) async fn wait_turn<K: Kv>(
    session: &Session<K>,
    prefix: &[u8],
    key: &[u8],
    revision: i64,
) -> Result<ResponseHeader> {
    let kv = session.kv();
    let turn = async {
        if key.starts_with(prefix) {
            return wait_own_turn(kv, prefix, key, revision).await;
        }
        wait_deletes(kv, prefix, revision - 1).await?;
        let mine = kv
            .range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        match mine.kvs.first() {
            Some(kv) if kv.create_revision == revision => Ok(mine.header.unwrap_or_default()),
            _ => Err(Error::SessionExpired),
        }
    };
    tokio::select! {
        waited = turn => waited,
        () = session.lost() => Err(Error::SessionExpired),
    }
}

/// [`wait_turn`] for a `key` inside `prefix`: one read per wake-up finds both that the key is
/// still there and the predecessor to wait for (the two newest keys created at or before
/// `revision`, newest first: the key itself, then its predecessor). A lock handed over thus
/// costs the next holder a single read after the delete it waited for.
async fn wait_own_turn<K: Kv>(kv: &K, prefix: &[u8], key: &[u8], revision: i64) -> Result<ResponseHeader> {
    let mut outage = Outage::default();
    loop {
        let step = async {
            let read = kv
                .range(RangeRequest {
                    limit: 2,
                    ..last_created_before(prefix, revision)
                })
                .await?;
            let mut newest = read.kvs.iter();
            match newest.next() {
                Some(mine) if mine.key == key && mine.create_revision == revision => {}
                _ => return Err(Error::SessionExpired),
            }
            let Some(predecessor) = newest.next() else {
                return Ok(Some(read.header.unwrap_or_default()));
            };
            let read_at = read.header.as_ref().map_or(0, |h| h.revision);
            wait_delete(kv, &predecessor.key, read_at + 1).await?;
            Ok(None)
        };
        match step.await {
            Ok(Some(header)) => return Ok(header),
            Ok(None) => outage.over(),
            Err(err) => outage.wait_out(err).await?,
        }
    }
}

/// Waits until no key under `prefix` was created at or before `max_create_revision`. It
/// watches only the newest such key at a time: each waiter waits on its own predecessor, so a
/// release wakes one waiter, not all (no thundering herd).
pub(crate) async fn wait_deletes<K: Kv>(kv: &K, prefix: &[u8], max_create_revision: i64) -> Result<()> {
    let mut outage = Outage::default();
    loop {
        let step = async {
            let older = kv.range(last_created_before(prefix, max_create_revision)).await?;
            let Some(predecessor) = older.kvs.first() else {
                return Ok(true);
            };
            let read_at = older.header.map_or(0, |h| h.revision);
            wait_delete(kv, &predecessor.key, read_at + 1).await?;
            Ok(false)
        };
        match step.await {
            Ok(true) => return Ok(()),
            Ok(false) => outage.over(),
            Err(err) => outage.wait_out(err).await?,
        }
    }
}

/// Rides out transient failures in a wait ([`Error::is_transient`]: the endpoint died, the
/// watch broke) with a pause doubling from 50 ms to 1 s, so a waiter keeps its place in the
/// queue across a failover: its key is the cluster's, not the endpoint's. The caller bounds the
/// wait (by its session's loss).
#[derive(Default)]
pub(crate) struct Outage {
    failures: u32,
}

impl Outage {
    /// The wait made progress: the next failure starts the backoff afresh.
    pub(crate) fn over(&mut self) {
        self.failures = 0;
    }

    /// Pauses after a transient `err`; any other error is returned.
    pub(crate) async fn wait_out(&mut self, err: Error) -> Result<()> {
        if !err.is_transient() {
            return Err(err);
        }
        tracing::debug!(error = %err, "a wait lost its connection; waiting again");
        let pause = Duration::from_millis(50).saturating_mul(1 << self.failures.min(5));
        tokio::time::sleep(pause.min(Duration::from_secs(1))).await;
        self.failures += 1;
        Ok(())
    }
}

/// Waits for `key` to be deleted at or after revision `from`.
pub(crate) async fn wait_delete<K: Kv>(kv: &K, key: &[u8], from: i64) -> Result<()> {
    let request = WatchCreateRequest {
        key: key.to_vec(),
        start_revision: from,
        filters: vec![FilterType::Noput as i32],
        ..Default::default()
    };
    let mut watch = kv.watch(request).await?;
    while let Some(batch) = watch.next().await {
        if batch?.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
            return Ok(());
        }
    }
    Err(Error::WatchEnded(format!(
        "watch on {}",
        String::from_utf8_lossy(key)
    )))
}

/// A txn deleting `key` if it still has create revision `revision` (not a newer namesake).
pub(crate) fn delete_if_created_at(key: &[u8], revision: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![create_revision_is(key.to_vec(), revision)],
        success: vec![delete_op(key.to_vec())],
        failure: vec![],
    }
}

/// Removes a key a recipe queued when the operation that queued it fails or is dropped before
/// it finishes: at once on [`run`](Self::run), in a spawned task on drop.
pub(crate) struct Cleanup<K: Kv> {
    kv: K,
    key: Vec<u8>,
    revision: i64,
    armed: bool,
}

impl<K: Kv> Cleanup<K> {
    /// Cleans up `key` (created at `revision`) unless disarmed; does nothing if `!armed` (the
    /// key was there before this operation, so it is not this operation's to remove).
    pub(crate) fn new(kv: &K, key: &[u8], revision: i64, armed: bool) -> Self {
        Self {
            kv: kv.clone(),
            key: key.to_vec(),
            revision,
            armed,
        }
    }

    /// Keeps the key: the operation succeeded.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    /// Deletes the key now.
    pub(crate) async fn run(mut self) {
        if std::mem::take(&mut self.armed) {
            delete(self.kv.clone(), self.key.clone(), self.revision).await;
        }
    }
}

impl<K: Kv> Drop for Cleanup<K> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(delete(
                self.kv.clone(),
                std::mem::take(&mut self.key),
                self.revision,
            ));
        }
    }
}

async fn delete<K: Kv>(kv: K, key: Vec<u8>, revision: i64) {
    if let Err(err) = kv.txn(delete_if_created_at(&key, revision)).await {
        tracing::debug!(error = %err, "removing an abandoned recipe key");
    }
}

#[cfg(test)]
mod tests;

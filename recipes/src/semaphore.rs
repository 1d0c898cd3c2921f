//! [`Semaphore`]: at most `limit` holders at a time (etcd has no such recipe; this one is built
//! the way its mutex is).
//!
//! Every contender queues a key `name/<lease hex>-<unique>` attached to its session's lease;
//! the `limit` keys with the lowest create revisions hold the semaphore. A holder that crashes
//! loses its key when its lease ends, which frees its slot.
//!
//! Waking without a herd: a waiter with more than `limit` keys ahead of it cannot get a slot
//! before the waiter just ahead of it does, so it watches only that key. The one waiter with
//! exactly `limit` keys ahead (all holders) watches those holders' keys for the first
//! deletion. When a waiter gets its slot it rewrites its key, which wakes the waiter behind it
//! to take its place at the front. So a release wakes one waiter, and a waiter that gives up
//! (its key deleted) wakes only the one behind it.

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{Compare, RangeRequest, TxnRequest, WatchCreateRequest};
use concord_proto::mvccpb::KeyValue;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::kv::{Kv, create_revision_is, prefix_end, put_op, range_op, range_result};
use crate::mutex::{Cleanup, delete_if_created_at, prefix_of, wait_delete};
use crate::queue::{put_unique, revision_of};
use crate::session::{Session, lease_gone_is_expiry};

/// A counting semaphore named by a key prefix, held with a [`Session`]'s lease.
///
/// A handle holds at most one slot. If an [`acquire`](Self::acquire) future is dropped while
/// waiting, its key is deleted in the background, so a cancelled waiter holds nobody up for
/// longer than its lease.
pub struct Semaphore<K: Kv> {
    session: Session<K>,
    prefix: Vec<u8>,
    limit: usize,
    /// This handle's key and its create revision, while it holds a slot.
    held: Option<(Vec<u8>, i64)>,
}

impl<K: Kv> Semaphore<K> {
    /// The semaphore `name` (its keys live under `name/`) with `limit` slots, taken with
    /// `session`'s lease. Every user of one semaphore must give the same `limit`.
    pub fn new(session: &Session<K>, name: impl Into<Vec<u8>>, limit: usize) -> Result<Self> {
        if limit == 0 {
            return Err(Error::InvalidArgument(
                "semaphore: limit must be at least 1".into(),
            ));
        }
        Ok(Self {
            session: session.clone(),
            prefix: prefix_of(name),
            limit,
            held: None,
        })
    }

    /// Waits until this handle holds a slot. Fails with [`Error::SessionExpired`] if the
    /// session's lease ended first (the key went with it), and removes its key on any failure.
    pub async fn acquire(&mut self) -> Result<()> {
        let (key, revision, ahead) = self.queue().await?;
        let cleanup = Cleanup::new(self.session.kv(), &key, revision, true);
        let waited = if ahead.len() < self.limit {
            Ok(())
        } else {
            tokio::select! {
                waited = self.wait_slot(&key, revision, ahead) => waited,
                () = self.session.lost() => Err(Error::SessionExpired),
            }
        };
        match waited {
            Ok(()) => {
                cleanup.disarm();
                self.held = Some((key, revision));
                Ok(())
            }
            Err(err) => {
                cleanup.run().await;
                Err(err)
            }
        }
    }

    /// Takes a slot if one is free, else fails with [`Error::Locked`] and leaves no key.
    pub async fn try_acquire(&mut self) -> Result<()> {
        let (key, revision, ahead) = self.queue().await?;
        if ahead.len() < self.limit {
            self.held = Some((key, revision));
            return Ok(());
        }
        self.session
            .kv()
            .txn(delete_if_created_at(&key, revision))
            .await?;
        Err(Error::Locked)
    }

    /// Gives the slot back (deletes this handle's key).
    pub async fn release(&mut self) -> Result<()> {
        let (key, revision) = self
            .held
            .take()
            .ok_or(Error::NotHeld("semaphore: not acquired"))?;
        self.session
            .kv()
            .txn(delete_if_created_at(&key, revision))
            .await?;
        Ok(())
    }

    /// This handle's key while it holds a slot.
    pub fn key(&self) -> Option<&[u8]> {
        self.held.as_ref().map(|(key, _)| key.as_slice())
    }

    /// A compare that holds only while this handle's slot lasts, to make a txn's writes
    /// conditional on it. [`Error::NotHeld`] if no slot is held.
    pub fn fence(&self) -> Result<Compare> {
        let (key, revision) = self
            .held
            .as_ref()
            .ok_or(Error::NotHeld("semaphore: not acquired"))?;
        Ok(create_revision_is(key.clone(), *revision))
    }

    /// Queues a new key and reads, in the same txn, the keys ahead of it: a key that has a slot
    /// when it is created keeps it, so the waiter behind it never waits for it to take one.
    async fn queue(&self) -> Result<(Vec<u8>, i64, Vec<KeyValue>)> {
        if self.held.is_some() {
            return Err(Error::InvalidArgument(
                "semaphore: already acquired by this handle".into(),
            ));
        }
        if self.session.is_lost() {
            return Err(Error::SessionExpired);
        }
        let lease = self.session.lease();
        let queue = [self.prefix.as_slice(), format!("{lease:x}-").as_bytes()].concat();
        let everyone = range_op(self.ahead_of(0));
        let (key, created) = put_unique(self.session.kv(), &queue, Vec::new(), lease, vec![everyone])
            .await
            .map_err(lease_gone_is_expiry)?;
        let revision = revision_of(&created);
        let mut ahead = range_result(&created, 1).to_vec();
        ahead.retain(|kv| kv.create_revision < revision);
        Ok((key, revision, ahead))
    }

    /// Waits until fewer than `limit` keys are ahead of `key` (created at `revision`), `ahead`
    /// being those read when it was queued; then rewrites `key` to wake the waiter behind.
    async fn wait_slot(&self, key: &[u8], revision: i64, mut ahead: Vec<KeyValue>) -> Result<()> {
        let kv = self.session.kv();
        let mut read_at = revision;
        while ahead.len() >= self.limit {
            if ahead.len() == self.limit {
                // At the front: the first holder to leave makes room.
                let deletions = ahead
                    .iter()
                    .map(|holder| Box::pin(wait_delete(kv, &holder.key, read_at + 1)));
                futures::future::select_all(deletions).await.0?;
            } else if let Some(next) = ahead.last() {
                // Behind another waiter: nothing changes before it moves (gets a slot or goes).
                wait_change(kv, &next.key, read_at + 1).await?;
            }
            let read = TxnRequest {
                compare: vec![create_revision_is(key.to_vec(), revision)],
                success: vec![range_op(self.ahead_of(revision))],
                failure: vec![],
            };
            let read = kv.txn(read).await?;
            if !read.succeeded {
                return Err(Error::SessionExpired); // our key is gone: its lease ended
            }
            read_at = revision_of(&read);
            ahead = range_result(&read, 0).to_vec();
        }
        let touch = TxnRequest {
            compare: vec![create_revision_is(key.to_vec(), revision)],
            success: vec![put_op(key.to_vec(), Vec::new(), self.session.lease())],
            failure: vec![],
        };
        let touched = kv.txn(touch).await.map_err(lease_gone_is_expiry)?;
        if touched.succeeded {
            Ok(())
        } else {
            Err(Error::SessionExpired)
        }
    }

    /// A range of the keys created before `revision` (0: all), oldest first.
    fn ahead_of(&self, revision: i64) -> RangeRequest {
        RangeRequest {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            max_create_revision: revision.saturating_sub(1).max(0),
            keys_only: true,
            ..Default::default()
        }
    }
}

/// Waits for any change to `key` (a put or its deletion) at or after revision `from`.
async fn wait_change<K: Kv>(kv: &K, key: &[u8], from: i64) -> Result<()> {
    let request = WatchCreateRequest {
        key: key.to_vec(),
        start_revision: from,
        ..Default::default()
    };
    let mut watch = kv.watch(request).await?;
    while let Some(batch) = watch.next().await {
        if !batch?.events.is_empty() {
            return Ok(());
        }
    }
    Err(Error::WatchEnded(format!(
        "watch on {}",
        String::from_utf8_lossy(key)
    )))
}

#[cfg(test)]
mod tests;

//! [`RwMutex`]: a distributed readers-writer lock, etcd's `contrib/recipes` `RWMutex`.
//!
//! Readers queue a key `name/read/<lease hex>-<unique>`, writers `name/write/<lease hex>-<unique>`,
//! each attached to its session's lease; the queue's order is create revision. A reader holds
//! the lock once every writer queued before it is gone, so readers queued together share it; a
//! writer once every key queued before it is gone. A waiter watches only the newest key that
//! blocks it and looks again when that one goes, so a release wakes only those it blocked.

use concord_proto::etcdserverpb::Compare;

use crate::error::{Error, Result};
use crate::kv::{Kv, create_revision_is};
use crate::mutex::{Cleanup, delete_if_created_at, prefix_of, wait_turn};
use crate::queue::{put_unique, revision_of};
use crate::session::{Session, lease_gone_is_expiry};

/// A readers-writer lock named by a key prefix, held with a [`Session`]'s lease.
///
/// A handle holds at most one lock at a time, for reading or for writing. If a lock future
/// is dropped while waiting, its key is deleted in the background (as [`Mutex`](crate::mutex::Mutex)
/// does), so a cancelled waiter blocks nobody for longer than its lease.
pub struct RwMutex<K: Kv> {
    session: Session<K>,
    prefix: Vec<u8>,
    held: Option<Held>,
}

/// The key through which a handle holds the lock.
struct Held {
    key: Vec<u8>,
    revision: i64,
}

impl<K: Kv> RwMutex<K> {
    /// The lock `name` (its keys live under `name/`), taken with `session`'s lease.
    pub fn new(session: &Session<K>, name: impl Into<Vec<u8>>) -> Self {
        Self {
            session: session.clone(),
            prefix: prefix_of(name),
            held: None,
        }
    }

    /// Waits until this handle holds the lock for reading: every writer queued before it has
    /// unlocked. Fails with [`Error::SessionExpired`] if the session's lease ended first.
    pub async fn read_lock(&mut self) -> Result<()> {
        self.lock(b"read/").await
    }

    /// Waits until this handle holds the lock for writing: every reader and writer queued
    /// before it has unlocked. Fails with [`Error::SessionExpired`] if the session's lease
    /// ended first.
    pub async fn write_lock(&mut self) -> Result<()> {
        self.lock(b"write/").await
    }

    /// Releases the lock held for reading or for writing (deletes this handle's key).
    pub async fn unlock(&mut self) -> Result<()> {
        let held = self.held.take().ok_or(Error::NotHeld("rwmutex: not locked"))?;
        self.session
            .kv()
            .txn(delete_if_created_at(&held.key, held.revision))
            .await?;
        Ok(())
    }

    /// This handle's key while it holds the lock.
    pub fn key(&self) -> Option<&[u8]> {
        self.held.as_ref().map(|held| held.key.as_slice())
    }

    /// A compare that holds only while this handle's hold on the lock lasts, to make a txn's
    /// writes conditional on it. [`Error::NotHeld`] if not locked.
    pub fn fence(&self) -> Result<Compare> {
        let held = self.held.as_ref().ok_or(Error::NotHeld("rwmutex: not locked"))?;
        Ok(create_revision_is(held.key.clone(), held.revision))
    }

    /// Queues a key under `name/<kind>` and waits for the keys before it that block `kind`.
    async fn lock(&mut self, kind: &[u8]) -> Result<()> {
        if self.held.is_some() {
            return Err(Error::InvalidArgument(
                "rwmutex: already locked by this handle".into(),
            ));
        }
        if self.session.is_lost() {
            return Err(Error::SessionExpired);
        }
        let mut queue = self.prefix.clone();
        queue.extend_from_slice(kind);
        queue.extend_from_slice(format!("{:x}-", self.session.lease()).as_bytes());
        let (key, created) = put_unique(
            self.session.kv(),
            &queue,
            Vec::new(),
            self.session.lease(),
            vec![],
        )
        .await
        .map_err(lease_gone_is_expiry)?;
        let revision = revision_of(&created);
        let cleanup = Cleanup::new(self.session.kv(), &key, revision, true);
        // Readers wait for earlier writers only; writers for every earlier key.
        let blockers = if kind == b"read/" {
            [self.prefix.as_slice(), b"write/"].concat()
        } else {
            self.prefix.clone()
        };
        match wait_turn(&self.session, &blockers, &key, revision).await {
            Ok(_) => {
                cleanup.disarm();
                self.held = Some(Held { key, revision });
                Ok(())
            }
            Err(err) => {
                cleanup.run().await;
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests;

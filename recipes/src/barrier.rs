//! Barriers, after etcd's `contrib/recipes`: [`Barrier`] (one key that blocks waiters while it
//! exists) and [`DoubleBarrier`] (`count` participants enter together and leave together).
//!
//! Waiting is always a watch on the one key a waiter depends on, from the revision it read.

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, WatchCreateRequest};
use concord_proto::mvccpb::KeyValue;
use concord_proto::mvccpb::event::EventType;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::kv::{Kv, create_revision_is, delete_op, prefix_end, put_op};
use crate::mutex::Cleanup;
use crate::queue::{put_unique, revision_of};
use crate::session::{Session, lease_gone_is_expiry};

/// A barrier: while its key exists, [`wait`](Barrier::wait) blocks (etcd's `Barrier`).
///
/// The key is not bound to a lease: a barrier held by a process that dies stays held until
/// someone releases it.
#[derive(Clone)]
pub struct Barrier<K: Kv> {
    kv: K,
    key: Vec<u8>,
}

impl<K: Kv> Barrier<K> {
    /// The barrier whose key is `key`.
    pub fn new(kv: K, key: impl Into<Vec<u8>>) -> Self {
        Self { kv, key: key.into() }
    }

    /// Raises the barrier by creating its key; `false` if it was already held.
    pub async fn hold(&self) -> Result<bool> {
        let txn = TxnRequest {
            compare: vec![create_revision_is(self.key.clone(), 0)],
            success: vec![put_op(self.key.clone(), Vec::new(), 0)],
            failure: vec![],
        };
        Ok(self.kv.txn(txn).await?.succeeded)
    }

    /// Lowers the barrier by deleting its key, letting every waiter through.
    pub async fn release(&self) -> Result<()> {
        let txn = TxnRequest {
            success: vec![delete_op(self.key.clone())],
            ..Default::default()
        };
        self.kv.txn(txn).await?;
        Ok(())
    }

    /// Returns once the barrier is not held (at once if it is not held now).
    pub async fn wait(&self) -> Result<()> {
        let read = self
            .kv
            .range(RangeRequest {
                key: self.key.clone(),
                ..Default::default()
            })
            .await?;
        if read.kvs.is_empty() {
            return Ok(());
        }
        let read_at = read.header.as_ref().map_or(0, |h| h.revision);
        wait_for(&self.kv, &self.key, read_at + 1, EventType::Delete).await?;
        Ok(())
    }
}

/// A double barrier: [`enter`](DoubleBarrier::enter) blocks until `count` participants have
/// entered, [`leave`](DoubleBarrier::leave) until all of them have left (etcd's
/// `DoubleBarrier`).
///
/// Each participant is a key `name/waiters/<unique>` bound to its session's lease, so one that
/// dies is counted out when its lease ends; the `count`-th to enter puts `name/ready`, which the
/// others watch for.
pub struct DoubleBarrier<K: Kv> {
    session: Session<K>,
    ready: Vec<u8>,
    waiters: Vec<u8>,
    count: usize,
    key: Option<Vec<u8>>,
}

impl<K: Kv> DoubleBarrier<K> {
    /// The double barrier `name` for `count` participants, entered with `session`'s lease.
    pub fn new(session: &Session<K>, name: impl Into<Vec<u8>>, count: usize) -> Result<Self> {
        if count == 0 {
            return Err(Error::InvalidArgument(
                "double barrier: count must be at least 1".into(),
            ));
        }
        let name = name.into();
        let mut ready = name.clone();
        ready.extend_from_slice(b"/ready");
        let mut waiters = name;
        waiters.extend_from_slice(b"/waiters/");
        Ok(Self {
            session: session.clone(),
            ready,
            waiters,
            count,
            key: None,
        })
    }

    /// This participant's key, once it has entered.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// Enters, then waits until `count` participants have.
    ///
    /// Fails with [`Error::InvalidArgument`] ("too many clients", as etcd) if `count` had already
    /// entered, and with [`Error::SessionExpired`] if the session's lease ends first. If it
    /// fails or its future is dropped while waiting, this participant's key is removed again.
    pub async fn enter(&mut self) -> Result<()> {
        if self.key.is_some() {
            return Err(Error::InvalidArgument("double barrier: already entered".into()));
        }
        if self.session.is_lost() {
            return Err(Error::SessionExpired);
        }
        let kv = self.session.kv();
        if self.entered().await?.kvs.len() >= self.count {
            return Err(too_many_clients());
        }
        let (key, created) = put_unique(kv, &self.waiters, Vec::new(), self.session.lease(), vec![])
            .await
            .map_err(lease_gone_is_expiry)?;
        let revision = revision_of(&created);
        let cleanup = Cleanup::new(kv, &key, revision, true);
        let entered = self.entered().await?.kvs;
        if let Some(last) = entered.get(self.count - 1) {
            if revision > last.create_revision {
                // One too many: step out at once rather than hold the others up until the
                // lease ends.
                cleanup.run().await;
                return Err(too_many_clients());
            }
            if revision == last.create_revision {
                let txn = TxnRequest {
                    success: vec![put_op(self.ready.clone(), Vec::new(), 0)],
                    ..Default::default()
                };
                kv.txn(txn).await?;
                cleanup.disarm();
                self.key = Some(key);
                return Ok(());
            }
        }
        let waited = tokio::select! {
            waited = wait_for(kv, &self.ready, revision, EventType::Put) => waited.map(drop),
            () = self.session.lost() => Err(Error::SessionExpired),
        };
        match waited {
            Ok(()) => {
                cleanup.disarm();
                self.key = Some(key);
                Ok(())
            }
            Err(err) => {
                cleanup.run().await;
                Err(err)
            }
        }
    }

    /// Leaves, then waits until every participant has (etcd's protocol: the oldest participant
    /// waits for the newest to leave, the others leave and wait for the oldest, which leaves
    /// last and takes the ready key down with it).
    pub async fn leave(&mut self) -> Result<()> {
        let Some(mine) = self.key.clone() else {
            return Err(Error::NotHeld("double barrier: not entered"));
        };
        let kv = self.session.kv();
        loop {
            let read = self.entered().await?;
            let read_at = read.header.as_ref().map_or(0, |h| h.revision);
            let (Some(lowest), Some(highest)) = (read.kvs.first(), read.kvs.last()) else {
                self.key = None;
                return Ok(()); // everybody has left
            };
            let is_lowest = lowest.key == mine;
            if is_lowest && read.kvs.len() == 1 {
                let mut last = delete(&self.ready);
                last.success.push(delete_op(mine));
                kv.txn(last).await?;
                self.key = None;
                return Ok(());
            }
            let awaited = if is_lowest {
                &highest.key
            } else {
                if read.kvs.iter().any(|kv| kv.key == mine) {
                    kv.txn(delete(&mine)).await?;
                }
                &lowest.key
            };
            wait_for(kv, awaited, read_at + 1, EventType::Delete).await?;
        }
    }

    /// The participants' keys, oldest first.
    async fn entered(&self) -> Result<RangeResponse> {
        let request = RangeRequest {
            key: self.waiters.clone(),
            range_end: prefix_end(&self.waiters),
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            keys_only: true,
            ..Default::default()
        };
        self.session.kv().range(request).await
    }
}

/// etcd's `ErrTooManyClients`.
fn too_many_clients() -> Error {
    Error::InvalidArgument("too many clients".into())
}

/// A txn deleting `key`.
fn delete(key: &[u8]) -> TxnRequest {
    TxnRequest {
        success: vec![delete_op(key.to_vec())],
        ..Default::default()
    }
}

/// Waits for the first event of type `kind` on `key` at or after revision `from`; the key as
/// that event left it.
pub(crate) async fn wait_for<K: Kv>(kv: &K, key: &[u8], from: i64, kind: EventType) -> Result<KeyValue> {
    let mut watch = kv
        .watch(WatchCreateRequest {
            key: key.to_vec(),
            start_revision: from,
            ..Default::default()
        })
        .await?;
    while let Some(batch) = watch.next().await {
        let event = batch?
            .events
            .into_iter()
            .find(|event| event.r#type == kind as i32);
        if let Some(event) = event {
            return Ok(event.kv.unwrap_or_default());
        }
    }
    Err(Error::WatchEnded(format!(
        "watch on {}",
        String::from_utf8_lossy(key)
    )))
}

#[cfg(test)]
mod tests;

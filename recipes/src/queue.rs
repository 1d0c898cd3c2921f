//! Work queues: [`Queue`] (first in, first out) and [`PriorityQueue`] (lowest priority number
//! first), after etcd's `contrib/recipes/queue.go` and `priority_queue.go`.
//!
//! An item is a key under the queue's prefix. Consumers compete by deleting it with a txn that
//! compares its mod revision, so exactly one of them gets each item; the losers move on to the
//! next. An empty queue is waited on by watching its prefix for the next put, never by polling.

use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{
    Compare, RangeRequest, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
};
use concord_proto::mvccpb::KeyValue;
use concord_proto::mvccpb::event::EventType;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::kv::{Kv, create_revision_is, delete_op, prefix_end, put_op};

/// How many of the first items a consumer tries to claim per read, so that competing
/// consumers that lose the first item need not read again.
const CLAIM_BATCH: i64 = 8;

/// A first-in, first-out queue under the prefix `name/`.
///
/// Items are ordered by create revision: the order in which the store committed the
/// enqueues. Any number of producers and consumers may share a queue; each item is dequeued
/// exactly once.
#[derive(Clone)]
pub struct Queue<K: Kv> {
    kv: K,
    prefix: Vec<u8>,
}

impl<K: Kv> Queue<K> {
    /// The queue `name` (its items are the keys under `name/`).
    pub fn new(kv: K, name: impl Into<Vec<u8>>) -> Self {
        let mut prefix = name.into();
        prefix.push(b'/');
        Self { kv, prefix }
    }

    /// Appends `value`; returns the item's key.
    pub async fn enqueue(&self, value: impl Into<Vec<u8>>) -> Result<Vec<u8>> {
        let (key, _) = put_unique(&self.kv, &self.prefix, value.into(), 0, vec![]).await?;
        Ok(key)
    }

    /// Removes and returns the oldest item, waiting for one if the queue is empty.
    pub async fn dequeue(&self) -> Result<Vec<u8>> {
        dequeue(&self.kv, &self.prefix, SortTarget::Create).await
    }
}

/// A queue whose items come out lowest priority number first, and in arrival order within a
/// priority (etcd's `PriorityQueue`).
///
/// Items are keys `name/<priority, 5 digits>/<sequence, 16 digits>`, so key order is the
/// dequeue order. The sequence numbers come from the last item's key; the bookkeeping key
/// `__name/<priority>` (etcd's layout) is written with each item so that two producers cannot
/// take the same number, nor an old one after the item that had it was dequeued.
#[derive(Clone)]
pub struct PriorityQueue<K: Kv> {
    kv: K,
    prefix: Vec<u8>,
}

impl<K: Kv> PriorityQueue<K> {
    /// The priority queue `name` (its items are the keys under `name/`).
    pub fn new(kv: K, name: impl Into<Vec<u8>>) -> Self {
        let mut prefix = name.into();
        prefix.push(b'/');
        Self { kv, prefix }
    }

    /// Adds `value` with `priority` (0 is served first); returns the item's key.
    pub async fn enqueue(&self, value: impl Into<Vec<u8>>, priority: u16) -> Result<Vec<u8>> {
        let value = value.into();
        let mut level = self.prefix.clone();
        level.extend_from_slice(format!("{priority:05}/").as_bytes());
        let mut bookkeeping = b"__".to_vec();
        bookkeeping.extend_from_slice(&level[..level.len() - 1]);
        loop {
            let last = self
                .kv
                .range(RangeRequest {
                    key: level.clone(),
                    range_end: prefix_end(&level),
                    limit: 1,
                    sort_order: SortOrder::Descend as i32,
                    sort_target: SortTarget::Key as i32,
                    keys_only: true,
                    ..Default::default()
                })
                .await?;
            let read_at = last.header.as_ref().map_or(0, |h| h.revision);
            let next = match last.kvs.first() {
                Some(kv) => sequence_of(&kv.key)? + 1,
                None => 0,
            };
            let mut key = level.clone();
            key.extend_from_slice(format!("{next:016}").as_bytes());
            // Nothing may have been added at this priority since the read (etcd's check).
            let unchanged = Compare {
                result: CompareResult::Less as i32,
                target: CompareTarget::Mod as i32,
                key: bookkeeping.clone(),
                target_union: Some(TargetUnion::ModRevision(read_at + 1)),
                ..Default::default()
            };
            let txn = TxnRequest {
                compare: vec![unchanged],
                success: vec![
                    put_op(bookkeeping.clone(), Vec::new(), 0),
                    put_op(key.clone(), value.clone(), 0),
                ],
                failure: vec![],
            };
            if self.kv.txn(txn).await?.succeeded {
                return Ok(key);
            }
        }
    }

    /// Removes and returns the item with the lowest priority number (the oldest among equals),
    /// waiting for one if the queue is empty.
    pub async fn dequeue(&self) -> Result<Vec<u8>> {
        dequeue(&self.kv, &self.prefix, SortTarget::Key).await
    }
}

/// The sequence number at the end of a priority queue item's key.
fn sequence_of(key: &[u8]) -> Result<u64> {
    let tail = key.rsplit(|&b| b == b'/').next().unwrap_or_default();
    std::str::from_utf8(tail)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "priority queue: foreign key {} under the queue's prefix",
                String::from_utf8_lossy(key)
            ))
        })
}

/// Claims the first item under `prefix` in `order`, waiting for one if there is none.
async fn dequeue<K: Kv>(kv: &K, prefix: &[u8], order: SortTarget) -> Result<Vec<u8>> {
    loop {
        let first = kv
            .range(RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: CLAIM_BATCH,
                sort_order: SortOrder::Ascend as i32,
                sort_target: order as i32,
                ..Default::default()
            })
            .await?;
        for item in &first.kvs {
            if claim(kv, item).await? {
                return Ok(item.value.to_vec());
            }
        }
        if !first.kvs.is_empty() {
            continue; // all taken by other consumers; read the next ones
        }
        // Empty at the read: wait for the next item put after it, then compete for it.
        let read_at = first.header.as_ref().map_or(0, |h| h.revision);
        let item = next_put(kv, prefix, read_at + 1).await?;
        if claim(kv, &item).await? {
            return Ok(item.value.into());
        }
    }
}

/// Deletes `item` if it is still the version read; whether this call did.
async fn claim<K: Kv>(kv: &K, item: &KeyValue) -> Result<bool> {
    let unchanged = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: item.key.to_vec(),
        target_union: Some(TargetUnion::ModRevision(item.mod_revision)),
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![unchanged],
        success: vec![delete_op(item.key.clone())],
        failure: vec![],
    };
    Ok(kv.txn(txn).await?.succeeded)
}

/// The first key put under `prefix` at or after revision `from`.
async fn next_put<K: Kv>(kv: &K, prefix: &[u8], from: i64) -> Result<KeyValue> {
    let mut watch = kv
        .watch(WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision: from,
            ..Default::default()
        })
        .await?;
    while let Some(batch) = watch.next().await {
        let put = batch?
            .events
            .into_iter()
            .find(|event| event.r#type == EventType::Put as i32)
            .and_then(|event| event.kv);
        if let Some(put) = put {
            return Ok(put);
        }
    }
    Err(Error::WatchEnded(format!(
        "queue {}",
        String::from_utf8_lossy(prefix)
    )))
}

/// Creates a key `prefix<unique digits>` holding `value` (attached to `lease`, 0: none) with a
/// create-if-absent txn that also runs `then` after the put, retrying with other digits if one
/// is taken. Returns the key and the txn's answer, whose header revision is the key's create
/// revision and whose `responses[1..]` answer `then`.
///
/// The digits are the wall clock's nanoseconds, as in etcd's recipes: they only make the key
/// unique, while the order among such keys is their create revision.
pub(crate) async fn put_unique<K: Kv>(
    kv: &K,
    prefix: &[u8],
    value: Vec<u8>,
    lease: i64,
    then: Vec<RequestOp>,
) -> Result<(Vec<u8>, TxnResponse)> {
    let mut suffix = unix_nanos();
    loop {
        let mut key = prefix.to_vec();
        key.extend_from_slice(format!("{suffix:020}").as_bytes());
        let mut success = vec![put_op(key.clone(), value.clone(), lease)];
        success.extend(then.iter().cloned());
        let txn = TxnRequest {
            compare: vec![create_revision_is(key.clone(), 0)],
            success,
            failure: vec![],
        };
        let response = kv.txn(txn).await?;
        if response.succeeded {
            return Ok((key, response));
        }
        suffix = unix_nanos().max(suffix + 1);
    }
}

/// The revision a txn was committed at (the create revision of the keys it created).
pub(crate) fn revision_of(response: &TxnResponse) -> i64 {
    response.header.as_ref().map_or(0, |h| h.revision)
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

#[cfg(test)]
mod tests;

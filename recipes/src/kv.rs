//! The small async key-value interface every recipe is written against.

use std::future::Future;
use std::pin::Pin;

use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantResponse, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse, WatchCreateRequest, compare, range_request, request_op,
};
use concord_proto::mvccpb::{Event, KeyValue};
use futures::Stream;

use crate::error::Result;

/// What a recipe needs from a store: etcd's txn, range, watch and lease calls, with etcd's
/// semantics (reads are linearizable; a watch delivers every event from its start revision,
/// in revision order, each revision's events together).
pub trait Kv: Clone + Send + Sync + 'static {
    /// Runs a txn: compares, then the success or failure operations, in one revision.
    fn txn(&self, request: TxnRequest) -> impl Future<Output = Result<TxnResponse>> + Send;

    /// Reads keys (linearizable).
    fn range(&self, request: RangeRequest) -> impl Future<Output = Result<RangeResponse>> + Send;

    /// Watches `request.key` (and `range_end`) from `request.start_revision` (0: from the next
    /// revision). The stream ends with an error if the watch is cancelled or compacted.
    fn watch(&self, request: WatchCreateRequest) -> impl Future<Output = Result<WatchStream>> + Send;

    /// Grants a lease of `ttl` seconds (the store may raise it to its minimum).
    fn lease_grant(&self, ttl: i64) -> impl Future<Output = Result<LeaseGrantResponse>> + Send;

    /// Renews lease `id` once; the TTL it now has, or 0 if the lease is gone.
    fn lease_keep_alive(&self, id: i64) -> impl Future<Output = Result<i64>> + Send;

    /// Revokes lease `id`, deleting its keys.
    fn lease_revoke(&self, id: i64) -> impl Future<Output = Result<()>> + Send;
}

/// One watch response: the events of one or more revisions, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchBatch {
    /// The store's revision when the batch was sent.
    pub revision: i64,
    /// The events, in revision order.
    pub events: Vec<Event>,
}

/// A watch's batches, until it fails.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch>> + Send>>;

/// The key just after every key starting with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every byte was 0xff: to the end of the keyspace
}

/// A txn operation putting `value` at `key`, attached to `lease` (0: none).
pub fn put_op(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        })),
    }
}

/// A txn operation deleting `key`.
pub fn delete_op(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

/// A txn operation reading `key`.
pub fn get_op(key: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

/// A txn operation running `request`.
pub fn range_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request)),
    }
}

/// A range reading the oldest key under `prefix` by create revision: the owner of a lock or an
/// election on that prefix (etcd's `WithFirstCreate`).
pub fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// A range reading the newest key under `prefix` created at or before `max_create_revision`:
/// the key a waiter queued at `max_create_revision + 1` waits on (etcd's `WithLastCreate` and
/// `WithMaxCreateRev`).
pub fn last_created_before(prefix: &[u8], max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        sort_order: range_request::SortOrder::Descend as i32,
        max_create_revision,
        ..first_created(prefix)
    }
}

/// A compare on `key`'s create revision (0: the key does not exist).
pub fn create_revision_is(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.into(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

/// The key-values a txn's range operation at `index` returned (empty if it was not a range).
pub fn range_result(response: &TxnResponse, index: usize) -> &[KeyValue] {
    use concord_proto::etcdserverpb::response_op::Response;
    match response.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"job/"), b"job0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}

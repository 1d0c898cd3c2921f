//! Request validation that needs no data (etcd's `v3rpc/key.go` checks): empty keys, sort
//! options, `ignore_*` flags, and the put/delete overlap rule of txns (`checkIntervals`).
//!
//! etcd runs these in the gRPC layer before proposing; the store runs them again at apply time
//! so that it never depends on its caller for them. They are deterministic.

use std::collections::HashSet;

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use concord_proto::nesting::MAX_TXN_DEPTH;

use super::error::MvccError;

/// etcd's `checkRangeRequest`.
pub fn check_range_request(r: &RangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(MvccError::InvalidSortOption);
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
pub fn check_put_request(r: &PutRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`.
pub fn check_delete_request(r: &DeleteRangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` (every op of both branches, recursively) followed by
/// `checkIntervals` on each branch. The `--max-txn-ops` limit is the server's business.
pub fn check_txn_request(r: &TxnRequest) -> Result<(), MvccError> {
    check_txn_ops(r)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// A txn over [`check_txn_limits`]: more ops than a level's budget, or nested deeper than
/// [`MAX_TXN_DEPTH`] (etcd's `too many operations in txn request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyOps;

/// etcd's op-count rule (`checkTxnRequest`): a txn's compare, success and failure lists may
/// each hold at most `max_ops` entries, and a txn nested in it gets `max_ops` minus the outer
/// txn's largest list, so a whole nest stays within the flag. On top of etcd's rule, txns may
/// nest at most [`MAX_TXN_DEPTH`] levels (see `concord_proto::nesting`).
pub fn check_txn_limits(r: &TxnRequest, max_ops: usize) -> Result<(), TooManyOps> {
    let mut levels = vec![(r, max_ops, 1usize)];
    while let Some((txn, budget, depth)) = levels.pop() {
        let ops = txn.compare.len().max(txn.success.len()).max(txn.failure.len());
        if ops > budget || depth > MAX_TXN_DEPTH {
            return Err(TooManyOps);
        }
        for op in txn.success.iter().chain(&txn.failure) {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                levels.push((nested, budget - ops, depth + 1));
            }
        }
    }
    Ok(())
}

/// etcd's `checkTxnRequest` without the op counts: every key present, every op well formed, in
/// both branches and every nested txn (no overlap check: see [`check_txn_request`]).
fn check_txn_ops(r: &TxnRequest) -> Result<(), MvccError> {
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    r.success.iter().chain(&r.failure).try_for_each(check_request_op)
}

/// etcd's `checkRequestOp`; an op with no request is `KeyNotFound`, as in etcd.
fn check_request_op(op: &RequestOp) -> Result<(), MvccError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range_request(r),
        Some(Request::RequestPut(r)) => check_put_request(r),
        Some(Request::RequestDeleteRange(r)) => check_delete_request(r),
        Some(Request::RequestTxn(r)) => check_txn_ops(r),
        None => Err(MvccError::KeyNotFound),
    }
}

/// A deleted interval as etcd's `checkIntervals` sees it: `[begin, end)` where an empty `end`
/// is above every key (`adt.StringAffineComparable`); a single-key delete is `[key, key\0)`.
#[derive(Debug, Clone, Copy)]
enum Deleted<'a> {
    Key(&'a [u8]),
    Interval(&'a [u8], &'a [u8]),
}

impl Deleted<'_> {
    /// Whether the put of `key` (the point `[key, key\0)`) intersects this interval.
    ///
    /// Note that etcd builds a delete's interval from the raw `range_end`, so the "\0" (from
    /// key) convention is compared as the literal string "\0": such a delete never overlaps a
    /// put here, exactly as in etcd.
    fn overlaps(&self, key: &[u8]) -> bool {
        match *self {
            Deleted::Key(k) => k == key,
            Deleted::Interval(begin, end) => begin <= key && (end.is_empty() || key < end),
        }
    }
}

type Intervals<'a> = (HashSet<&'a [u8]>, Vec<Deleted<'a>>);

/// etcd's `checkIntervals`: within one list of ops (and the txns nested in it, both of their
/// branches), no key may be put twice, and no key may be both put and deleted. A key put in
/// both branches of one nested txn is fine: only one of them runs.
fn check_intervals(ops: &[RequestOp]) -> Result<Intervals<'_>, MvccError> {
    let mut dels: Vec<Deleted<'_>> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) if d.range_end.is_empty() => Some(Deleted::Key(&d.key)),
            Some(Request::RequestDeleteRange(d)) => Some(Deleted::Interval(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();

    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.overlaps(k)) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.overlaps(k)) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = p.key.as_slice();
        if puts.contains(k) || dels.iter().any(|d| d.overlaps(k)) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(txn(success, failure))),
        }
    }

    fn check(t: TxnRequest) -> Result<(), MvccError> {
        check_txn_request(&t)
    }

    #[test]
    fn simple_requests() {
        assert_eq!(
            check_range_request(&RangeRequest::default()),
            Err(MvccError::EmptyKey)
        );
        let bad_order = RangeRequest {
            key: b"a".to_vec(),
            sort_order: 3,
            ..Default::default()
        };
        assert_eq!(check_range_request(&bad_order), Err(MvccError::InvalidSortOption));
        let bad_target = RangeRequest {
            key: b"a".to_vec(),
            sort_target: 5,
            ..Default::default()
        };
        assert_eq!(
            check_range_request(&bad_target),
            Err(MvccError::InvalidSortOption)
        );
        let bad_negative = RangeRequest {
            key: b"a".to_vec(),
            sort_order: -1,
            ..Default::default()
        };
        assert_eq!(
            check_range_request(&bad_negative),
            Err(MvccError::InvalidSortOption)
        );

        let p = |value: &str, lease, iv, il| PutRequest {
            key: b"k".to_vec(),
            value: value.into(),
            lease,
            ignore_value: iv,
            ignore_lease: il,
            prev_kv: false,
        };
        assert_eq!(
            check_put_request(&PutRequest::default()),
            Err(MvccError::EmptyKey)
        );
        assert_eq!(
            check_put_request(&p("v", 0, true, false)),
            Err(MvccError::ValueProvided)
        );
        assert_eq!(
            check_put_request(&p("", 5, false, true)),
            Err(MvccError::LeaseProvided)
        );
        assert_eq!(check_put_request(&p("", 0, true, true)), Ok(()));
        assert_eq!(check_put_request(&p("v", 5, false, false)), Ok(()));
        assert_eq!(
            check_delete_request(&DeleteRangeRequest::default()),
            Err(MvccError::EmptyKey)
        );
    }

    #[test]
    fn txn_ops_are_checked_in_both_branches() {
        assert_eq!(
            check(txn(vec![put("a")], vec![put("")])),
            Err(MvccError::EmptyKey)
        );
        assert_eq!(
            check(txn(vec![nested(vec![], vec![del("", "")])], vec![])),
            Err(MvccError::EmptyKey)
        );
        let mut t = txn(vec![], vec![]);
        t.compare.push(Default::default());
        assert_eq!(check(t), Err(MvccError::EmptyKey));
        assert_eq!(
            check(txn(vec![RequestOp { request: None }], vec![])),
            Err(MvccError::KeyNotFound)
        );
    }

    #[test]
    fn duplicate_puts() {
        assert_eq!(check(txn(vec![put("a"), put("b")], vec![put("a")])), Ok(()));
        assert_eq!(
            check(txn(vec![put("a"), put("a")], vec![])),
            Err(MvccError::DuplicateKey)
        );
        assert_eq!(
            check(txn(vec![], vec![put("a"), put("a")])),
            Err(MvccError::DuplicateKey)
        );
        assert_eq!(check(txn(vec![get("a"), get("a"), put("a")], vec![])), Ok(()));
    }

    #[test]
    fn put_and_delete_overlap() {
        assert_eq!(
            check(txn(vec![del("a", ""), put("a")], vec![])),
            Err(MvccError::DuplicateKey)
        );
        assert_eq!(
            check(txn(vec![put("b"), del("a", "c")], vec![])),
            Err(MvccError::DuplicateKey)
        );
        assert_eq!(check(txn(vec![put("c"), del("a", "c")], vec![])), Ok(()));
        assert_eq!(check(txn(vec![put("a"), del("ab", "")], vec![])), Ok(()));
        // Deletes may overlap each other.
        assert_eq!(check(txn(vec![del("a", "z"), del("b", "")], vec![])), Ok(()));
        // etcd compares a "\0" range end literally, so from-key deletes do not conflict.
        assert_eq!(check(txn(vec![del("a", "\0"), put("b")], vec![])), Ok(()));
    }

    #[test]
    fn nested_txns() {
        // Outer put vs nested put.
        assert_eq!(
            check(txn(vec![put("a"), nested(vec![put("a")], vec![])], vec![])),
            Err(MvccError::DuplicateKey)
        );
        // Outer delete vs nested put (either branch).
        assert_eq!(
            check(txn(vec![del("a", ""), nested(vec![], vec![put("a")])], vec![])),
            Err(MvccError::DuplicateKey)
        );
        // Nested delete vs outer put.
        assert_eq!(
            check(txn(vec![put("a"), nested(vec![del("a", "b")], vec![])], vec![])),
            Err(MvccError::DuplicateKey)
        );
        // The same key in both branches of one nested txn is fine.
        assert_eq!(
            check(txn(vec![nested(vec![put("a")], vec![put("a")])], vec![])),
            Ok(())
        );
        // ... but not in two sibling nested txns.
        assert_eq!(
            check(txn(
                vec![nested(vec![put("a")], vec![]), nested(vec![], vec![put("a")])],
                vec![]
            )),
            Err(MvccError::DuplicateKey)
        );
        // Doubly nested.
        assert_eq!(
            check(txn(
                vec![put("x"), nested(vec![nested(vec![put("x")], vec![])], vec![])],
                vec![]
            )),
            Err(MvccError::DuplicateKey)
        );
    }
}

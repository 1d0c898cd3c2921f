//! Txn execution, following etcd 3.5's applier (`Txn`, `compareToPath`, `checkRequests`,
//! `applyTxn`).
//!
//! 1. Every compare on the path taken, nested txns included, is evaluated first against the
//!    store as it was before the txn (`compareToPath`): a nested txn's compares do not see the
//!    writes of earlier ops.
//! 2. The ops on that path are checked against the same state (`checkRequests`): puts with
//!    `ignore_value` / `ignore_lease` need an existing key, ranges a revision that is neither
//!    compacted nor in the future. Nothing has changed yet if a check fails.
//! 3. The ops run in order; all changes share one main revision, and reads see earlier writes.
//!
//! Response headers: range ops carry the revision of the view they read (the pre-txn revision,
//! or the txn's revision once it has written), put ops the txn's revision, delete ops the
//! txn's revision if anything was changed so far, else the pre-txn revision. These are etcd's.
//! The txn's header (and, unlike etcd, which leaves them at 0, the headers of nested txns)
//! carry the txn's revision: the new one if it changed anything, else the current one.

use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::response_op::Response;
use concord_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use concord_proto::txn::is_read_only;

use super::compare::apply_compares;
use super::error::MvccError;
use super::history::History;
use super::view::{ReadView, Snapshot};
use super::writer::{TxnWriter, header};

/// What a txn runs its ops on: a write request, or a snapshot for read-only txns.
pub trait TxnExec: ReadView {
    /// A put op.
    fn exec_put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError>;
    /// A delete range op.
    fn exec_delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError>;
}

impl TxnExec for TxnWriter<'_, '_> {
    fn exec_put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.put(req)
    }

    fn exec_delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        self.delete_range(req)
    }
}

fn read_only_violation() -> MvccError {
    MvccError::Storage("a txn with writes was run on a read-only snapshot".into())
}

impl<H: History> TxnExec for Snapshot<'_, H> {
    fn exec_put(&mut self, _: &PutRequest) -> Result<PutResponse, MvccError> {
        Err(read_only_violation())
    }

    fn exec_delete_range(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        Err(read_only_violation())
    }
}

/// Runs a txn (already validated by [`super::check::check_txn_request`]).
///
/// On error the caller must roll back whatever the txn wrote (only storage errors can happen
/// once the ops run).
pub fn txn<E: TxnExec>(exec: &mut E, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
    let mut path = Vec::new();
    compare_to_path(exec, req, &mut path)?;
    if !is_read_only(req) {
        check_requests(exec, req, &path, &check_put)?;
    }
    check_requests(exec, req, &path, &check_range)?;
    let (mut resp, _) = apply_txn(exec, req, &path)?;
    set_txn_headers(&mut resp, exec.rev());
    Ok(resp)
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded { &req.success } else { &req.failure }
}

fn split_path(path: &[bool]) -> Result<(bool, &[bool]), MvccError> {
    path.split_first()
        .map(|(first, rest)| (*first, rest))
        .ok_or_else(|| MvccError::Storage("txn path shorter than the txn".into()))
}

/// etcd's `compareToPath`: the outcome of every txn on the path, depth first.
fn compare_to_path<V: ReadView>(view: &V, req: &TxnRequest, path: &mut Vec<bool>) -> Result<(), MvccError> {
    let succeeded = apply_compares(view, &req.compare)?;
    path.push(succeeded);
    for op in branch(req, succeeded) {
        if let Some(Request::RequestTxn(t)) = &op.request {
            compare_to_path(view, t, path)?;
        }
    }
    Ok(())
}

/// etcd's `checkRequests`: runs `check` on every non-txn op of the path. Returns how many path
/// entries the txn used (itself and its nested txns).
fn check_requests<V, F>(view: &V, req: &TxnRequest, path: &[bool], check: &F) -> Result<usize, MvccError>
where
    V: ReadView,
    F: Fn(&V, &RequestOp) -> Result<(), MvccError>,
{
    let (succeeded, mut rest) = split_path(path)?;
    let mut used = 1;
    for op in branch(req, succeeded) {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let n = check_requests(view, t, rest, check)?;
            rest = rest.get(n..).unwrap_or_default();
            used += n;
            continue;
        }
        check(view, op)?;
    }
    Ok(used)
}

/// etcd's `checkRequestPut` (the lease's existence is the lessor's business).
fn check_put<V: ReadView>(view: &V, op: &RequestOp) -> Result<(), MvccError> {
    let Some(Request::RequestPut(p)) = &op.request else {
        return Ok(());
    };
    if (p.ignore_value || p.ignore_lease) && view.get(&p.key)?.is_none() {
        return Err(MvccError::KeyNotFound);
    }
    Ok(())
}

/// etcd's `checkRequestRange`.
fn check_range<V: ReadView>(view: &V, op: &RequestOp) -> Result<(), MvccError> {
    let Some(Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    match r.revision {
        0 => Ok(()),
        rev if rev > view.rev() => Err(MvccError::FutureRev),
        rev if rev < view.compacted() => Err(MvccError::Compacted),
        _ => Ok(()),
    }
}

/// etcd's `applyTxn`: runs the ops of the branch taken. Returns the response (headers of txns
/// not yet set) and how many path entries were used.
fn apply_txn<E: TxnExec>(
    exec: &mut E,
    req: &TxnRequest,
    path: &[bool],
) -> Result<(TxnResponse, usize), MvccError> {
    let (succeeded, mut rest) = split_path(path)?;
    let ops = branch(req, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    let mut used = 1;
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Some(Response::ResponseRange(exec.range(r)?)),
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(exec.exec_put(p)?)),
            Some(Request::RequestDeleteRange(d)) => {
                Some(Response::ResponseDeleteRange(exec.exec_delete_range(d)?))
            }
            Some(Request::RequestTxn(t)) => {
                let (resp, n) = apply_txn(exec, t, rest)?;
                rest = rest.get(n..).unwrap_or_default();
                used += n;
                Some(Response::ResponseTxn(resp))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok((
        TxnResponse {
            header: None,
            succeeded,
            responses,
        },
        used,
    ))
}

/// The txn's header carries its revision; a nested txn's header is empty, as etcd's (its puts,
/// ranges and deletes carry the revision in theirs).
fn set_txn_headers(resp: &mut TxnResponse, rev: i64) {
    resp.header = header(rev);
    clear_nested_headers(resp);
}

fn clear_nested_headers(resp: &mut TxnResponse) {
    for op in &mut resp.responses {
        if let Some(Response::ResponseTxn(nested)) = &mut op.response {
            nested.header = Some(ResponseHeader::default());
            clear_nested_headers(nested);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::mvcc::test_util::ANY_LEASE;

    use concord_proto::etcdserverpb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    use concord_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RangeResponse};

    use super::super::test_util::{
        self, TestStore, cmp, op_delete, op_get, op_put, op_range, op_txn, put, range, rev_of, txn,
    };
    use super::*;

    fn range_resp(op: &ResponseOp) -> &RangeResponse {
        match &op.response {
            Some(Response::ResponseRange(r)) => r,
            other => panic!("not a range response: {other:?}"),
        }
    }

    fn op_rev(op: &ResponseOp) -> i64 {
        match &op.response {
            Some(Response::ResponseRange(r)) => rev_of(&r.header),
            Some(Response::ResponsePut(r)) => rev_of(&r.header),
            Some(Response::ResponseDeleteRange(r)) => rev_of(&r.header),
            Some(Response::ResponseTxn(r)) => rev_of(&r.header),
            None => -1,
        }
    }

    fn value(t: &TestStore, key: &str) -> Option<String> {
        t.get(key).map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
    }

    /// a=1@2 (lease 5), b=2@3, b=3@4.
    fn sample() -> TestStore {
        let t = test_util::open();
        t.put_req(PutRequest {
            lease: 5,
            ..put("a", "1")
        })
        .unwrap();
        t.put("b", "2");
        t.put("b", "3");
        t
    }

    fn holds(t: &TestStore, c: Compare) -> bool {
        let resp = t.txn(txn(vec![c], vec![], vec![])).unwrap();
        assert_eq!(rev_of(&resp.header), t.store.current_revision());
        resp.succeeded
    }

    #[test]
    fn compares_on_every_target() {
        let t = sample();
        assert!(holds(&t, cmp("b", T::Version, R::Equal, U::Version(2))));
        assert!(holds(&t, cmp("b", T::Version, R::Greater, U::Version(1))));
        assert!(!holds(&t, cmp("b", T::Version, R::Less, U::Version(2))));
        assert!(holds(&t, cmp("b", T::Create, R::Equal, U::CreateRevision(3))));
        assert!(holds(&t, cmp("b", T::Mod, R::Equal, U::ModRevision(4))));
        assert!(holds(&t, cmp("b", T::Mod, R::NotEqual, U::ModRevision(3))));
        assert!(holds(&t, cmp("b", T::Value, R::Equal, U::Value(b"3".to_vec()))));
        assert!(holds(&t, cmp("b", T::Value, R::Less, U::Value(b"4".to_vec()))));
        assert!(holds(&t, cmp("a", T::Lease, R::Equal, U::Lease(5))));
        assert!(holds(&t, cmp("a", T::Lease, R::Greater, U::Lease(4))));
        assert!(!holds(&t, cmp("a", T::Lease, R::NotEqual, U::Lease(5))));
    }

    #[test]
    fn compares_on_missing_keys() {
        let t = sample();
        // A missing key has version, create/mod revision and lease 0...
        assert!(holds(&t, cmp("zz", T::Version, R::Equal, U::Version(0))));
        assert!(holds(&t, cmp("zz", T::Create, R::Equal, U::CreateRevision(0))));
        assert!(holds(&t, cmp("zz", T::Mod, R::Less, U::ModRevision(1))));
        assert!(holds(&t, cmp("zz", T::Lease, R::Equal, U::Lease(0))));
        // ... but a VALUE compare on it always fails.
        assert!(!holds(&t, cmp("zz", T::Value, R::Equal, U::Value(vec![]))));
        assert!(!holds(
            &t,
            cmp("zz", T::Value, R::NotEqual, U::Value(b"x".to_vec()))
        ));
        // A deleted key is missing too.
        t.delete("a", "").unwrap();
        assert!(holds(&t, cmp("a", T::Version, R::Equal, U::Version(0))));
    }

    #[test]
    fn compares_over_ranges() {
        let t = sample();
        let over = |end: &str, c: Compare| Compare {
            range_end: end.into(),
            ..c
        };
        assert!(holds(
            &t,
            over("c", cmp("a", T::Version, R::Greater, U::Version(0)))
        ));
        assert!(
            !holds(&t, over("c", cmp("a", T::Version, R::Equal, U::Version(1)))),
            "b has version 2"
        );
        assert!(holds(
            &t,
            over("\0", cmp("a", T::Mod, R::Less, U::ModRevision(5)))
        ));
        assert!(!holds(&t, over("\0", cmp("a", T::Lease, R::Equal, U::Lease(5)))));
        // An empty range compares the zero key-value, except for VALUE.
        assert!(holds(
            &t,
            over("z", cmp("x", T::Version, R::Equal, U::Version(0)))
        ));
        assert!(!holds(
            &t,
            over("z", cmp("x", T::Value, R::Equal, U::Value(vec![])))
        ));
        // Every compare must hold.
        let both = txn(
            vec![
                cmp("a", T::Version, R::Equal, U::Version(1)),
                cmp("b", T::Version, R::Equal, U::Version(1)),
            ],
            vec![],
            vec![],
        );
        assert!(!t.txn(both).unwrap().succeeded);
    }

    #[test]
    fn one_revision_per_txn_and_read_your_writes() {
        let t = sample();
        let req = txn(
            vec![cmp("a", T::Value, R::Equal, U::Value(b"1".to_vec()))],
            vec![
                op_get("a"),
                op_put("a", "10"),
                op_get("a"),
                op_put("c", "x"),
                op_delete("b", ""),
                op_range(range("\0", "\0")),
            ],
            vec![op_put("never", "x")],
        );
        let (resp, events) = t.batch(|b| b.txn(&req, ANY_LEASE));
        let resp = resp.unwrap();
        assert!(resp.succeeded);
        assert_eq!(rev_of(&resp.header), 5);
        let revs: Vec<_> = resp.responses.iter().map(op_rev).collect();
        assert_eq!(
            revs,
            [4, 5, 5, 5, 5, 5],
            "reads before the first write see the old revision"
        );
        assert_eq!(range_resp(&resp.responses[0]).kvs[0].value, &b"1"[..]);
        let after = &range_resp(&resp.responses[2]).kvs[0];
        assert_eq!(
            (&after.value[..], after.version, after.mod_revision),
            (&b"10"[..], 2, 5)
        );
        let all = range_resp(&resp.responses[5]);
        assert_eq!(test_util::keys(all), ["a", "c"], "the delete is visible");
        // All changes share revision 5, sub revisions in order.
        let mods: Vec<_> = events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(mods, [5, 5, 5]);
        assert_eq!(t.store.current_revision(), 5);
        assert_eq!(value(&t, "never"), None);
        assert_eq!(value(&t, "c"), Some("x".into()));
        assert_eq!(t.get("c").unwrap().create_revision, 5);
    }

    #[test]
    fn failure_branch_and_read_only() {
        let t = sample();
        let req = txn(
            vec![cmp("a", T::Value, R::Equal, U::Value(b"nope".to_vec()))],
            vec![op_put("x", "1")],
            vec![op_get("b"), op_get("zz")],
        );
        let resp = t.txn(req.clone()).unwrap();
        assert!(!resp.succeeded);
        assert_eq!(rev_of(&resp.header), 4, "a read-only txn takes no revision");
        assert_eq!(resp.responses.len(), 2);
        assert_eq!(range_resp(&resp.responses[0]).kvs[0].value, &b"3"[..]);
        assert!(range_resp(&resp.responses[1]).kvs.is_empty());
        assert_eq!(t.store.current_revision(), 4);
        // The store can run read-only txns without a batch, with the same answer.
        let read_only = txn(req.compare.clone(), vec![op_get("a")], req.failure.clone());
        assert!(is_read_only(&read_only));
        assert_eq!(t.store.read_txn(&read_only).unwrap(), resp);
        assert!(!is_read_only(&req));
        assert!(matches!(t.store.read_txn(&req), Err(MvccError::Storage(_))));
        // An empty txn succeeds and changes nothing.
        let resp = t.txn(TxnRequest::default()).unwrap();
        assert!(resp.succeeded && resp.responses.is_empty());
        assert_eq!(rev_of(&resp.header), 4);
    }

    #[test]
    fn txn_deleting_nothing_takes_no_revision() {
        let t = sample();
        let resp = t
            .txn(txn(vec![], vec![op_delete("zz", ""), op_get("a")], vec![]))
            .unwrap();
        assert_eq!(rev_of(&resp.header), 4);
        assert_eq!(resp.responses.iter().map(op_rev).collect::<Vec<_>>(), [4, 4]);
        assert_eq!(t.store.current_revision(), 4);
    }

    #[test]
    fn nested_txns() {
        let t = sample();
        // The nested compare sees the store before the outer txn's put.
        let inner = txn(
            vec![cmp("a", T::Value, R::Equal, U::Value(b"1".to_vec()))],
            vec![op_put("b", "inner-ok"), op_get("a")],
            vec![op_put("b", "inner-failed")],
        );
        let outer = txn(
            vec![],
            vec![op_put("a", "2"), op_txn(inner), op_put("c", "outer")],
            vec![],
        );
        let (resp, events) = t.batch(|b| b.txn(&outer, ANY_LEASE));
        let resp = resp.unwrap();
        assert!(resp.succeeded);
        assert_eq!(rev_of(&resp.header), 5);
        let Some(Response::ResponseTxn(nested)) = &resp.responses[1].response else {
            panic!("nested response missing");
        };
        assert!(nested.succeeded);
        assert_eq!(nested.header, Some(ResponseHeader::default()), "empty, as etcd's");
        let Some(Response::ResponsePut(nested_put)) = &nested.responses[0].response else {
            panic!("nested put response missing");
        };
        assert_eq!(rev_of(&nested_put.header), 5);
        // ... while its reads see the outer txn's writes.
        assert_eq!(range_resp(&nested.responses[1]).kvs[0].value, &b"2"[..]);
        assert_eq!(value(&t, "b"), Some("inner-ok".into()));
        assert_eq!(value(&t, "c"), Some("outer".into()));
        let mods: Vec<_> = events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(mods, [5, 5, 5], "nested writes share the txn's revision");
        assert_eq!(t.store.current_revision(), 5);
    }

    #[test]
    fn nested_failure_branch_path() {
        let t = sample();
        // Two nested txns taking different branches: the path must line up.
        let n1 = txn(
            vec![cmp("a", T::Version, R::Equal, U::Version(9))],
            vec![op_put("x", "1")],
            vec![op_put("x", "2")],
        );
        let n2 = txn(
            vec![cmp("b", T::Version, R::Equal, U::Version(2))],
            vec![op_put("y", "1")],
            vec![op_put("y", "2")],
        );
        let outer = txn(
            vec![cmp("zz", T::Version, R::Greater, U::Version(0))],
            vec![],
            vec![op_txn(n1), op_txn(n2)],
        );
        let resp = t.txn(outer).unwrap();
        assert!(!resp.succeeded);
        assert_eq!(
            (value(&t, "x"), value(&t, "y")),
            (Some("2".into()), Some("1".into()))
        );
    }

    #[test]
    fn invalid_txns_change_nothing() {
        let t = sample();
        let before = t.range(range("\0", "\0")).unwrap();
        let cases = [
            (
                txn(vec![], vec![op_put("k", "1"), op_put("k", "2")], vec![]),
                MvccError::DuplicateKey,
            ),
            (
                txn(vec![], vec![op_put("k", "1"), op_delete("a", "z")], vec![]),
                MvccError::DuplicateKey,
            ),
            (
                txn(
                    vec![],
                    vec![
                        op_put("k", "1"),
                        op_txn(txn(vec![], vec![op_put("k", "2")], vec![])),
                    ],
                    vec![],
                ),
                MvccError::DuplicateKey,
            ),
            (
                txn(
                    vec![],
                    vec![
                        op_put("k", "1"),
                        RequestOp {
                            request: Some(Request::RequestPut(PutRequest {
                                ignore_value: true,
                                ..put("missing", "")
                            })),
                        },
                    ],
                    vec![],
                ),
                MvccError::KeyNotFound,
            ),
            (
                txn(
                    vec![],
                    vec![
                        op_put("k", "1"),
                        op_range(RangeRequest {
                            revision: 99,
                            ..range("a", "")
                        }),
                    ],
                    vec![],
                ),
                MvccError::FutureRev,
            ),
            (
                txn(
                    vec![],
                    vec![
                        op_put("k", "1"),
                        op_range(RangeRequest {
                            sort_order: 9,
                            ..range("a", "")
                        }),
                    ],
                    vec![],
                ),
                MvccError::InvalidSortOption,
            ),
            (
                txn(vec![], vec![op_put("k", "1")], vec![op_put("", "1")]),
                MvccError::EmptyKey,
            ),
        ];
        for (req, err) in cases {
            let (resp, events) = t.batch(|b| b.txn(&req, ANY_LEASE));
            assert_eq!(resp, Err(err));
            assert!(events.is_empty());
            assert_eq!(t.store.current_revision(), 4);
            assert_eq!(t.range(range("\0", "\0")).unwrap(), before);
        }
    }

    #[test]
    fn range_op_at_compacted_revision() {
        let t = sample();
        t.compact(3).unwrap();
        let at = |rev| {
            txn(
                vec![],
                vec![
                    op_put("k", "1"),
                    op_range(RangeRequest {
                        revision: rev,
                        ..range("b", "")
                    }),
                ],
                vec![],
            )
        };
        assert_eq!(t.txn(at(2)), Err(MvccError::Compacted));
        let resp = t.txn(at(3)).unwrap();
        assert_eq!(range_resp(&resp.responses[1]).kvs[0].value, &b"2"[..]);
    }
}

//! Who a request comes from and what it needs, for every service: [`Api::caller`],
//! [`Api::authorize`], and the needs of KV requests ([`put_needs`], [`txn_needs`], ...) with
//! etcd's rules (a put with `prev_kv` also reads its key; a txn needs read on every compare and
//! whatever each op of both branches needs, nested txns included).

use concord_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};

use super::Api;
use crate::auth::{AuthStore, Caller, Need};
use crate::error::Error;

impl Api {
    /// The auth store.
    pub fn auth(&self) -> &AuthStore {
        &self.node().auth
    }

    /// Who sent `request` (see [`AuthStore::caller`]).
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Error> {
        Ok(self.auth().caller(request)?)
    }

    /// Whether `caller` may do everything `needs` names; the auth revision a write it allows
    /// carries into the log.
    pub fn authorize(&self, caller: &Caller, needs: &[Need<'_>]) -> Result<u64, Error> {
        Ok(self.auth().authorize(caller, needs)?)
    }

    /// Whether `caller` may write every key attached to `lease` (revoking it deletes them, and
    /// a put that attaches a key to it could not be undone by a revoke otherwise): etcd's
    /// `checkLeasePuts`. Root may; a missing lease has no keys.
    pub fn authorize_lease_keys(&self, caller: &Caller, lease: i64) -> Result<(), Error> {
        if lease == 0 || !self.auth().enabled() || self.authorize(caller, &[Need::Admin]).is_ok() {
            return Ok(());
        }
        let keys = self
            .node()
            .lessor
            .time_to_live(lease, true)
            .map(|ttl| ttl.keys)
            .unwrap_or_default();
        let needs: Vec<Need<'_>> = keys.iter().map(|key| Need::Write(key, &[])).collect();
        self.authorize(caller, &needs)?;
        Ok(())
    }

    /// Authorizes a put, a delete or a txn for `caller` (the lease checks included); the
    /// revision to carry.
    pub fn authorize_write(&self, caller: &Caller, write: Write<'_>) -> Result<u64, Error> {
        if !self.auth().enabled() {
            return self.authorize(caller, &[]);
        }
        let mut needs = Vec::new();
        let mut leases = Vec::new();
        match write {
            Write::Put(put) => put_needs(put, &mut needs, &mut leases),
            Write::Delete(delete) => delete_needs(delete, &mut needs),
            Write::Txn(txn) => txn_needs(txn, &mut needs, &mut leases),
        }
        let revision = self.authorize(caller, &needs)?;
        for lease in leases {
            self.authorize_lease_keys(caller, lease)?;
        }
        Ok(revision)
    }
}

/// A KV write to authorize.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// A put.
    Put(&'a PutRequest),
    /// A delete.
    Delete(&'a DeleteRangeRequest),
    /// A txn (reads and writes).
    Txn(&'a TxnRequest),
}

/// What a range needs.
pub fn range_need(range: &RangeRequest) -> Need<'_> {
    Need::Read(&range.key, &range.range_end)
}

/// What a put needs: write on its key, read too with `prev_kv`; its lease goes to `leases`.
pub fn put_needs<'a>(put: &'a PutRequest, needs: &mut Vec<Need<'a>>, leases: &mut Vec<i64>) {
    needs.push(Need::Write(&put.key, &[]));
    if put.prev_kv {
        needs.push(Need::Read(&put.key, &[]));
    }
    if put.lease != 0 {
        leases.push(put.lease);
    }
}

/// What a delete needs: write on its range, read too with `prev_kv`.
pub fn delete_needs<'a>(delete: &'a DeleteRangeRequest, needs: &mut Vec<Need<'a>>) {
    needs.push(Need::Write(&delete.key, &delete.range_end));
    if delete.prev_kv {
        needs.push(Need::Read(&delete.key, &delete.range_end));
    }
}

/// What a txn needs: read on every compare's range, and what every op of both branches needs.
pub fn txn_needs<'a>(txn: &'a TxnRequest, needs: &mut Vec<Need<'a>>, leases: &mut Vec<i64>) {
    for compare in &txn.compare {
        needs.push(Need::Read(&compare.key, &compare.range_end));
    }
    for op in txn.success.iter().chain(&txn.failure) {
        op_needs(op, needs, leases);
    }
}

fn op_needs<'a>(op: &'a RequestOp, needs: &mut Vec<Need<'a>>, leases: &mut Vec<i64>) {
    match &op.request {
        Some(request_op::Request::RequestRange(range)) => needs.push(range_need(range)),
        Some(request_op::Request::RequestPut(put)) => put_needs(put, needs, leases),
        Some(request_op::Request::RequestDeleteRange(delete)) => delete_needs(delete, needs),
        Some(request_op::Request::RequestTxn(txn)) => txn_needs(txn, needs, leases),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use concord_proto::etcdserverpb::Compare;

    use super::*;

    #[test]
    fn a_txn_needs_its_compares_and_both_branches_nested_included() {
        let put = |key: &str, lease: i64, prev_kv: bool| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                lease,
                prev_kv,
                ..Default::default()
            })),
        };
        let inner = TxnRequest {
            compare: vec![],
            success: vec![put("nested", 0, false)],
            failure: vec![],
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                range_end: b"d".to_vec(),
                ..Default::default()
            }],
            success: vec![put("a", 7, true)],
            failure: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: b"x".to_vec(),
                        range_end: b"y".to_vec(),
                        prev_kv: false,
                    })),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(inner)),
                },
            ],
        };
        let (mut needs, mut leases) = (Vec::new(), Vec::new());
        txn_needs(&txn, &mut needs, &mut leases);
        assert_eq!(
            needs,
            vec![
                Need::Read(b"c", b"d"),
                Need::Write(b"a", b""),
                Need::Read(b"a", b""),
                Need::Write(b"x", b"y"),
                Need::Write(b"nested", b""),
            ]
        );
        assert_eq!(leases, vec![7]);
    }
}

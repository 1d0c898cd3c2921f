//! What a txn request is, decided once for the server and the clients.

use crate::etcdserverpb::{TxnRequest, request_op::Request};

/// Whether every op of both branches is a range (etcd's `isTxnReadonly`): such a txn changes
/// nothing whichever branch runs, so a server answers it as a read (no Raft entry) and a client
/// may send it twice. A nested txn counts as a write, as in etcd.
pub fn is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// Whether a read-only txn may be answered from the member's own state without a read index
/// (etcd's `isTxnSerializable`): every range in it asks to be serializable.
pub fn is_serializable(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| matches!(&op.request, Some(Request::RequestRange(range)) if range.serializable))
}

/// Bytes each put adds beyond its key and value, in quota accounting (etcd's `kvOverhead`).
pub const PUT_OVERHEAD_BYTES: u64 = 256;

/// What the puts of a txn (both branches, nested txns included) may add to the database, in
/// etcd's quota accounting (`quota.Cost`): key + value + [`PUT_OVERHEAD_BYTES`] for each put, so
/// a txn without puts costs nothing.
pub fn put_cost(txn: &TxnRequest) -> u64 {
    txn.success
        .iter()
        .chain(&txn.failure)
        .map(|op| match &op.request {
            Some(Request::RequestPut(put)) => put_bytes(put.key.len(), put.value.len()),
            Some(Request::RequestTxn(nested)) => put_cost(nested),
            _ => 0,
        })
        .sum()
}

/// What one put of `key_len` and `value_len` bytes may add, in etcd's quota accounting.
pub fn put_bytes(key_len: usize, value_len: usize) -> u64 {
    (key_len + value_len) as u64 + PUT_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::{PutRequest, RangeRequest, RequestOp};

    fn op(request: Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    fn range(serializable: bool) -> RequestOp {
        op(Request::RequestRange(RangeRequest {
            key: b"k".to_vec(),
            serializable,
            ..Default::default()
        }))
    }

    #[test]
    fn only_ranges_are_read_only() {
        let reads = TxnRequest {
            success: vec![range(false)],
            failure: vec![range(true)],
            ..Default::default()
        };
        assert!(is_read_only(&reads));
        assert!(!is_serializable(&reads));
        let serializable = TxnRequest {
            success: vec![range(true)],
            ..Default::default()
        };
        assert!(is_read_only(&serializable) && is_serializable(&serializable));
        assert!(is_read_only(&TxnRequest::default()), "a txn of compares only");
        let put = TxnRequest {
            failure: vec![op(Request::RequestPut(PutRequest::default()))],
            ..Default::default()
        };
        assert!(!is_read_only(&put));
        let nested = TxnRequest {
            success: vec![op(Request::RequestTxn(serializable))],
            ..Default::default()
        };
        assert!(
            !is_read_only(&nested),
            "a nested txn counts as a write, as in etcd"
        );
        let empty_op = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert!(!is_read_only(&empty_op));
    }
}

//! Helpers for the MVCC unit tests: a store on a temporary redb file and request builders.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use concord_proto::mvccpb::{Event, KeyValue};
use redb::{Database, Durability};
use tempfile::TempDir;

use super::{MvccError, MvccStore};

/// A lease lookup for tests that do not care: every lease exists.
pub const ANY_LEASE: &dyn super::LeaseLookup = &|_: i64| true;

/// A store on its own temporary file.
pub struct TestStore {
    pub dir: TempDir,
    pub store: MvccStore,
}

pub fn open() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::create(dir.path().join("db.redb")).unwrap());
    let store = MvccStore::open(db).unwrap();
    TestStore { dir, store }
}

impl TestStore {
    /// Closes the database and opens the store again from the same file.
    pub fn reopen(self) -> TestStore {
        // Make every `Durability::None` commit durable first.
        self.store
            .begin_write()
            .unwrap()
            .commit(Durability::Immediate)
            .unwrap();
        let TestStore { dir, store } = self;
        drop(store);
        let db = Arc::new(Database::create(dir.path().join("db.redb")).unwrap());
        let store = MvccStore::open(db).unwrap();
        TestStore { dir, store }
    }

    /// Runs `f` in a batch of its own and commits it; returns its result and the events.
    pub fn batch<T>(
        &self,
        f: impl FnOnce(&mut super::WriteBatch<'_>) -> Result<T, MvccError>,
    ) -> (Result<T, MvccError>, Vec<Event>) {
        let mut b = self.store.begin_write().unwrap();
        let r = f(&mut b);
        let committed = b.commit(Durability::None).unwrap();
        (r, committed.events)
    }

    pub fn put_req(&self, req: PutRequest) -> Result<PutResponse, MvccError> {
        self.batch(|b| b.put(&req, ANY_LEASE)).0
    }

    /// Puts `key = value`; returns the revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let resp = self.put_req(put(key, value)).unwrap();
        resp.header.unwrap().revision
    }

    pub fn delete(&self, key: &str, end: &str) -> Result<DeleteRangeResponse, MvccError> {
        let req = DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: true,
        };
        self.batch(|b| b.delete_range(&req)).0
    }

    pub fn txn(&self, req: TxnRequest) -> Result<TxnResponse, MvccError> {
        self.batch(|b| b.txn(&req, ANY_LEASE)).0
    }

    pub fn compact(&self, revision: i64) -> Result<CompactionResponse, MvccError> {
        let req = CompactionRequest {
            revision,
            physical: true,
        };
        self.batch(|b| b.compact(&req)).0
    }

    pub fn range(&self, req: RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range(&req)
    }

    /// The live key-value of `key` now.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.range(get(key)).unwrap().kvs.pop()
    }

    /// The key-value of `key` at `rev`.
    pub fn get_at(&self, key: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let mut req = get(key);
        req.revision = rev;
        Ok(self.range(req)?.kvs.pop())
    }

    /// Number of history rows.
    pub fn history_rows(&self) -> u64 {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let rtxn = self.store.database().begin_read().unwrap();
        rtxn.open_table(super::history::HISTORY).unwrap().len().unwrap()
    }
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

pub fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

pub fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put(key, value))),
    }
}

pub fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(get(key))),
    }
}

pub fn op_range(req: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(req)),
    }
}

pub fn op_delete(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: false,
        })),
    }
}

pub fn op_txn(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(t)),
    }
}

pub fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        range_end: vec![],
        target_union: Some(union),
    }
}

pub fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// Keys of a range response, as strings.
pub fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// Values of a range response, as strings.
pub fn values(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect()
}

pub fn rev_of(header: &Option<concord_proto::etcdserverpb::ResponseHeader>) -> i64 {
    header.as_ref().map_or(-100, |h| h.revision)
}

//! [`ReadView`]: what compares, txn checks and range ops read from, either a write request in
//! progress ([`super::writer::TxnWriter`]) or a committed snapshot ([`Snapshot`]).

use concord_proto::etcdserverpb::{RangeRequest, RangeResponse};
use concord_proto::mvccpb::KeyValue;

use super::error::MvccError;
use super::history::History;
use super::index::TreeIndex;
use super::key_span::KeySpan;
use super::range::{self, RangeOptions};

/// A consistent view of the store at one revision (etcd's `mvcc.ReadView`).
pub trait ReadView {
    /// The view's current revision.
    fn rev(&self) -> i64;

    /// The compacted revision (`-1` if never compacted).
    fn compacted(&self) -> i64;

    /// A range request in this view (no request validation).
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError>;

    /// Every live key-value of `span` at the view's revision.
    fn range_kvs(&self, span: KeySpan<'_>) -> Result<Vec<KeyValue>, MvccError>;

    /// The live key-value of `key` at the view's revision.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        Ok(self.range_kvs(KeySpan::Single(key))?.pop())
    }
}

/// The committed store: an index and a history snapshot taken together.
pub struct Snapshot<'a, H> {
    /// The index, as of `rev`.
    pub index: &'a TreeIndex,
    /// The history rows, as of `rev` or later.
    pub history: &'a H,
    /// The store's current revision.
    pub rev: i64,
    /// The store's compacted revision.
    pub compacted: i64,
}

impl<H: History> ReadView for Snapshot<'_, H> {
    fn rev(&self) -> i64 {
        self.rev
    }

    fn compacted(&self) -> i64 {
        self.compacted
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        range::range(self.index, self.history, req, self.rev, self.compacted)
    }

    fn range_kvs(&self, span: KeySpan<'_>) -> Result<Vec<KeyValue>, MvccError> {
        let opts = RangeOptions::default();
        let rr = range::range_keys(self.index, self.history, span, opts, self.rev, self.compacted)?;
        Ok(rr.kvs)
    }
}

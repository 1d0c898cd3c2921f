//! [`TxnWriter`]: one write request (put, delete range or txn) in progress, like etcd's
//! `storeTxnWrite` together with the applier's `Put` / `DeleteRange` / `Range`.
//!
//! All changes of the request share one main revision (`begin_rev + 1`) and get consecutive
//! sub revisions. Reads see the request's own earlier changes: they read at `begin_rev + 1`
//! once something has changed.

use concord_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader,
};
use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::{Event, KeyValue};
use redb::Table;

use super::change_log::{Change, ChangeLog};
use super::error::MvccError;
use super::history::{History, encode_row};
use super::index::TreeIndex;
use super::key_span::KeySpan;
use super::range::{self, RangeOptions};
use super::revision::{REVISION_BYTES, Revision};
use super::view::ReadView;

/// Which leases exist, for puts that attach a key to one (the lessor answers it).
pub trait LeaseLookup {
    /// True if lease `id` exists and keys may be attached to it.
    fn lease_exists(&self, id: i64) -> bool;
}

impl<F: Fn(i64) -> bool> LeaseLookup for F {
    fn lease_exists(&self, id: i64) -> bool {
        self(id)
    }
}

/// For requests that attach no keys (deletes): every lease counts as missing.
pub(crate) const NO_LEASES: &dyn LeaseLookup = &|_: i64| false;

/// The history table as opened inside the batch's write transaction.
pub type HistoryTable<'t> = Table<'t, [u8; REVISION_BYTES], &'static [u8]>;

/// A write request being applied.
pub struct TxnWriter<'w, 't> {
    index: &'w mut TreeIndex,
    table: &'w mut HistoryTable<'t>,
    log: &'w mut ChangeLog,
    leases: &'w dyn LeaseLookup,
    begin_rev: i64,
    compacted: i64,
    changes: i64,
}

pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl<'w, 't> TxnWriter<'w, 't> {
    /// A request starting on a store at `begin_rev`, compacted at `compacted`; puts may attach
    /// keys to the leases `leases` knows.
    pub fn new(
        index: &'w mut TreeIndex,
        table: &'w mut HistoryTable<'t>,
        log: &'w mut ChangeLog,
        leases: &'w dyn LeaseLookup,
        begin_rev: i64,
        compacted: i64,
    ) -> Self {
        TxnWriter {
            index,
            table,
            log,
            leases,
            begin_rev,
            compacted,
            changes: 0,
        }
    }

    /// True once the request has changed something.
    pub fn changed(&self) -> bool {
        self.changes > 0
    }

    /// Applies one change: the index mutation and the log entry first, then the row, so that a
    /// failed insert is taken back by [`ChangeLog::rollback_to`] like everything else.
    fn record(
        &mut self,
        rev: Revision,
        event: Event,
        row: &[u8],
        mutate: impl FnOnce(&mut TreeIndex) -> Result<super::index::IndexUndo, MvccError>,
    ) -> Result<(), MvccError> {
        let undo = mutate(self.index)?;
        self.log.push_change(Change { rev, event }, undo);
        self.changes += 1;
        self.table.insert(rev.to_bytes(), row)?;
        Ok(())
    }

    fn next_revision(&self) -> Revision {
        Revision::new(self.begin_rev + 1, self.changes)
    }

    /// etcd's applier `Put` (without the request checks of
    /// [`super::check::check_put_request`]).
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = self.get(&req.key)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = match &prev {
            Some(p) if req.ignore_value => p.value.clone(),
            _ => req.value.clone().into(),
        };
        let lease = match &prev {
            Some(p) if req.ignore_lease => p.lease,
            _ => req.lease,
        };
        if lease != 0 && !self.leases.lease_exists(lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let rev = self.next_revision();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: req.key.clone().into(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        let row = encode_row(false, &kv);
        let prev_kv = if req.prev_kv { prev.clone() } else { None };
        let event = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        };
        self.record(rev, event, &row, |index| Ok(index.put(&req.key, rev)))?;
        Ok(PutResponse {
            header: header(rev.main),
            prev_kv,
        })
    }

    /// etcd's applier `DeleteRange` (without [`super::check::check_delete_request`]).
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let span = KeySpan::new(&req.key, &req.range_end);
        let keys = self.index.keys(span, self.rev());
        let mut prev_kvs = Vec::with_capacity(if req.prev_kv { keys.len() } else { 0 });
        for (key, modified) in &keys {
            let prev = self.table.kv(*modified)?;
            let rev = self.next_revision();
            let kv = KeyValue {
                key: key.clone().into(),
                mod_revision: rev.main,
                ..Default::default()
            };
            let row = encode_row(true, &kv);
            if req.prev_kv {
                prev_kvs.push(prev.clone());
            }
            let event = Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv),
                prev_kv: Some(prev),
            };
            self.record(rev, event, &row, |index| {
                index
                    .tombstone(key, rev)
                    .ok_or_else(|| MvccError::Storage("index lost a live key during delete".into()))
            })?;
        }
        Ok(DeleteRangeResponse {
            header: header(self.rev()),
            deleted: i64::try_from(keys.len()).unwrap_or(i64::MAX),
            prev_kvs,
        })
    }
}

impl ReadView for TxnWriter<'_, '_> {
    /// `begin_rev`, or `begin_rev + 1` once the request has written.
    fn rev(&self) -> i64 {
        if self.changed() {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    fn compacted(&self) -> i64 {
        self.compacted
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        range::range(&*self.index, &*self.table, req, self.rev(), self.compacted)
    }

    fn range_kvs(&self, span: KeySpan<'_>) -> Result<Vec<KeyValue>, MvccError> {
        let opts = RangeOptions::default();
        let rr = range::range_keys(&*self.index, &*self.table, span, opts, self.rev(), self.compacted)?;
        Ok(rr.kvs)
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        match self.index.get(key, self.rev()) {
            Some(kr) => self.table.kv(kr.modified).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::mvcc::test_util::ANY_LEASE;

    use super::super::test_util::{self, keys, put, range, rev_of};
    use super::*;

    fn shape(kv: &KeyValue) -> (i64, i64, i64, String, i64) {
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.lease,
        )
    }

    #[test]
    fn put_versions_and_generations() {
        let t = test_util::open();
        assert_eq!(t.store.current_revision(), 1, "empty store is at revision 1");
        assert_eq!(t.put("a", "1"), 2, "first write gets revision 2");
        assert_eq!(shape(&t.get("a").unwrap()), (2, 2, 1, "1".into(), 0));
        assert_eq!(t.put("a", "2"), 3);
        assert_eq!(shape(&t.get("a").unwrap()), (2, 3, 2, "2".into(), 0));
        assert_eq!(rev_of(&t.delete("a", "").unwrap().header), 4);
        assert_eq!(t.get("a"), None);
        assert_eq!(t.put("a", "3"), 5);
        assert_eq!(
            shape(&t.get("a").unwrap()),
            (5, 5, 1, "3".into(), 0),
            "new generation"
        );
        assert_eq!(
            shape(&t.get_at("a", 3).unwrap().unwrap()),
            (2, 3, 2, "2".into(), 0)
        );
        assert_eq!(t.get_at("a", 4).unwrap(), None);
    }

    #[test]
    fn put_prev_kv() {
        let t = test_util::open();
        let req = PutRequest {
            prev_kv: true,
            ..put("a", "1")
        };
        let resp = t.put_req(req.clone()).unwrap();
        assert_eq!((rev_of(&resp.header), resp.prev_kv), (2, None));
        let resp = t
            .put_req(PutRequest {
                value: b"2".to_vec(),
                ..req.clone()
            })
            .unwrap();
        assert_eq!(shape(&resp.prev_kv.unwrap()), (2, 2, 1, "1".into(), 0));
        // Without prev_kv, nothing comes back.
        assert_eq!(t.put_req(put("a", "3")).unwrap().prev_kv, None);
    }

    #[test]
    fn put_ignore_value() {
        let t = test_util::open();
        let ignore = |lease| PutRequest {
            ignore_value: true,
            lease,
            ..put("a", "")
        };
        assert_eq!(t.put_req(ignore(0)), Err(MvccError::KeyNotFound));
        assert_eq!(t.store.current_revision(), 1, "a failed put takes no revision");
        t.put_req(PutRequest {
            lease: 9,
            ..put("a", "keep")
        })
        .unwrap();
        let resp = t.put_req(ignore(4)).unwrap();
        assert_eq!(rev_of(&resp.header), 3);
        assert_eq!(
            shape(&t.get("a").unwrap()),
            (2, 3, 2, "keep".into(), 4),
            "value kept, lease replaced"
        );
        let provided = PutRequest {
            ignore_value: true,
            ..put("a", "x")
        };
        assert_eq!(t.put_req(provided), Err(MvccError::ValueProvided));
        t.delete("a", "").unwrap();
        assert_eq!(t.put_req(ignore(0)), Err(MvccError::KeyNotFound), "deleted key");
    }

    #[test]
    fn put_ignore_lease() {
        let t = test_util::open();
        let ignore = |value: &str| PutRequest {
            ignore_lease: true,
            ..put("a", value)
        };
        assert_eq!(t.put_req(ignore("v")), Err(MvccError::KeyNotFound));
        t.put_req(PutRequest {
            lease: 7,
            ..put("a", "1")
        })
        .unwrap();
        t.put_req(ignore("2")).unwrap();
        assert_eq!(
            shape(&t.get("a").unwrap()),
            (2, 3, 2, "2".into(), 7),
            "lease kept, value replaced"
        );
        let provided = PutRequest {
            lease: 3,
            ..ignore("x")
        };
        assert_eq!(t.put_req(provided), Err(MvccError::LeaseProvided));
        let both = PutRequest {
            ignore_value: true,
            ..ignore("")
        };
        t.put_req(both).unwrap();
        assert_eq!(shape(&t.get("a").unwrap()), (2, 4, 3, "2".into(), 7));
        assert_eq!(t.put_req(put("", "v")), Err(MvccError::EmptyKey));
    }

    #[test]
    fn delete_range_prev_kvs_and_revisions() {
        let t = test_util::open();
        for k in ["a", "b", "c", "d"] {
            t.put(k, k);
        }
        assert_eq!(t.store.current_revision(), 5);
        let (resp, events) = t.batch(|b| {
            b.delete_range(&DeleteRangeRequest {
                key: b"b".to_vec(),
                range_end: b"d".to_vec(),
                prev_kv: true,
            })
        });
        let resp = resp.unwrap();
        assert_eq!(
            (resp.deleted, rev_of(&resp.header)),
            (2, 6),
            "one revision for the whole delete"
        );
        let prev: Vec<_> = resp.prev_kvs.iter().map(shape).collect();
        assert_eq!(prev, vec![(3, 3, 1, "b".into(), 0), (4, 4, 1, "c".into(), 0)]);
        assert_eq!(keys(&t.range(range("\0", "\0")).unwrap()), ["a", "d"]);
        // DELETE events: key and the delete's revision, with the previous key-value.
        assert_eq!(events.len(), 2);
        for (e, k) in events.iter().zip(["b", "c"]) {
            assert_eq!(e.r#type, EventType::Delete as i32);
            let kv = e.kv.as_ref().unwrap();
            assert_eq!((&kv.key[..], kv.mod_revision, kv.version), (k.as_bytes(), 6, 0));
            assert_eq!(e.prev_kv.as_ref().unwrap().key, k.as_bytes());
        }

        // Without prev_kv: no prev_kvs.
        let (resp, _) = t.batch(|b| {
            b.delete_range(&DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })
        });
        let resp = resp.unwrap();
        assert_eq!(
            (resp.deleted, resp.prev_kvs.len(), rev_of(&resp.header)),
            (1, 0, 7)
        );
    }

    #[test]
    fn delete_of_nothing_keeps_the_revision() {
        let t = test_util::open();
        t.put("a", "1");
        for (k, e) in [("zz", ""), ("b", "c"), ("c", "b"), ("b", "\0")] {
            let (resp, events) = t.batch(|b| {
                b.delete_range(&DeleteRangeRequest {
                    key: k.into(),
                    range_end: e.into(),
                    prev_kv: true,
                })
            });
            let resp = resp.unwrap();
            assert_eq!(
                (resp.deleted, rev_of(&resp.header), resp.prev_kvs.len()),
                (0, 2, 0)
            );
            assert!(events.is_empty());
        }
        t.delete("a", "").unwrap();
        let resp = t.delete("a", "").unwrap();
        assert_eq!(
            (resp.deleted, rev_of(&resp.header)),
            (0, 3),
            "deleting a deleted key"
        );
        assert_eq!(t.store.current_revision(), 3);
        assert_eq!(
            t.batch(|b| b.delete_range(&DeleteRangeRequest::default())).0,
            Err(MvccError::EmptyKey)
        );
    }

    #[test]
    fn put_events_carry_prev_kv() {
        let t = test_util::open();
        let (_, events) = t.batch(|b| {
            b.put(&put("a", "1"), ANY_LEASE)?;
            b.put(&put("a", "2"), ANY_LEASE)
        });
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.r#type == EventType::Put as i32));
        assert_eq!(shape(events[0].kv.as_ref().unwrap()), (2, 2, 1, "1".into(), 0));
        assert_eq!(events[0].prev_kv, None);
        assert_eq!(shape(events[1].kv.as_ref().unwrap()), (2, 3, 2, "2".into(), 0));
        assert_eq!(
            events[1].prev_kv.as_ref().map(shape),
            Some((2, 2, 1, "1".into(), 0))
        );
    }
}

//! [`MemoryKv`](super::MemoryKv)'s store: keys, leases and history, and etcd's rules for
//! reading and changing them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::response_op::Response;
use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use concord_proto::mvccpb::{Event, KeyValue, event::EventType};
use concord_proto::rpctypes;
use tonic::Status;

use super::Watcher;

#[derive(Default)]
pub(super) struct State {
    /// The revision of the last write; 1 when empty, as in etcd.
    pub(super) revision: i64,
    pub(super) keys: BTreeMap<Vec<u8>, KeyValue>,
    pub(super) leases: HashMap<i64, Lease>,
    pub(super) last_lease: i64,
    pub(super) keep_alives: HashMap<i64, u64>,
    /// Every write's events (with `prev_kv` always set), in revision order.
    pub(super) history: Vec<(i64, Vec<Event>)>,
    pub(super) watchers: Vec<Watcher>,
    pub(super) unavailable: bool,
}

pub(super) struct Lease {
    pub(super) ttl: i64,
    pub(super) keys: BTreeSet<Vec<u8>>,
}

fn lease_not_found() -> Status {
    rpctypes::LEASE_NOT_FOUND.status()
}

/// The entries of `keys` in etcd's range `[start, end)`, in key order.
fn matching<'a>(
    keys: &'a BTreeMap<Vec<u8>, KeyValue>,
    start: &[u8],
    end: &[u8],
) -> impl Iterator<Item = &'a KeyValue> + 'a {
    let upper = match end {
        [] => Bound::Included(start),
        [0] => Bound::Unbounded,
        _ if end <= start => Bound::Excluded(start), // empty range (BTreeMap panics on start > end)
        _ => Bound::Excluded(end),
    };
    let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(start), upper);
    keys.range::<[u8], _>(bounds).map(|(_, kv)| kv)
}

impl State {
    pub(super) fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.revision,
            ..Default::default()
        }
    }

    pub(super) fn range(&self, request: &RangeRequest) -> Result<RangeResponse, Status> {
        let past;
        let keys = match request.revision {
            r if r > self.revision => {
                return Err(rpctypes::FUTURE_REV.status());
            }
            r if r > 0 && r < self.revision => {
                past = self.keys_at(r);
                &past
            }
            _ => &self.keys,
        };
        let in_range: Vec<&KeyValue> = matching(keys, &request.key, &request.range_end).collect();
        let count = in_range.len() as i64;
        let wanted = |kv: &&KeyValue| {
            let at_least = |min: i64, value: i64| min == 0 || value >= min;
            let at_most = |max: i64, value: i64| max == 0 || value <= max;
            at_least(request.min_create_revision, kv.create_revision)
                && at_most(request.max_create_revision, kv.create_revision)
                && at_least(request.min_mod_revision, kv.mod_revision)
                && at_most(request.max_mod_revision, kv.mod_revision)
        };
        let mut kvs: Vec<KeyValue> = in_range.into_iter().filter(wanted).cloned().collect();
        let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
        let order = match SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None) {
            SortOrder::None if target != SortTarget::Key => SortOrder::Ascend, // as etcd does
            order => order,
        };
        if order != SortOrder::None {
            kvs.sort_by(|a, b| {
                let ordering = match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                if order == SortOrder::Descend {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
        }
        let more = request.limit > 0 && kvs.len() as i64 > request.limit;
        if more {
            kvs.truncate(request.limit as usize);
        }
        if request.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        if request.count_only {
            kvs.clear();
        }
        Ok(RangeResponse {
            header: None,
            kvs,
            more,
            count,
        })
    }

    /// The keys as they were at `revision`: today's, with every later write undone.
    fn keys_at(&self, revision: i64) -> BTreeMap<Vec<u8>, KeyValue> {
        let mut keys = self.keys.clone();
        let later = self.history.iter().rev().take_while(|(r, _)| *r > revision);
        for event in later.flat_map(|(_, events)| events.iter().rev()) {
            let key = event.kv.as_ref().map(|kv| kv.key.to_vec()).unwrap_or_default();
            match &event.prev_kv {
                Some(prev) => keys.insert(key, prev.clone()),
                None => keys.remove(&key),
            };
        }
        keys
    }

    fn compare(&self, compare: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = matching(&self.keys, &compare.key, &compare.range_end).collect();
        if kvs.is_empty() {
            // etcd: a missing key has zero revisions, version and lease, but no value at all.
            return compare.target != CompareTarget::Value as i32
                && compare_kv(compare, &KeyValue::default());
        }
        kvs.into_iter().all(|kv| compare_kv(compare, kv))
    }

    pub(super) fn txn(&mut self, request: TxnRequest) -> Result<TxnResponse, Status> {
        let succeeded = request.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded {
            request.success
        } else {
            request.failure
        };
        // Check everything that can fail before the first write, so a txn applies whole or not.
        for op in &ops {
            match &op.request {
                Some(Request::RequestPut(put)) => {
                    if put.lease != 0 && !self.leases.contains_key(&put.lease) {
                        return Err(lease_not_found());
                    }
                    if (put.ignore_value || put.ignore_lease) && !self.keys.contains_key(&put.key) {
                        return Err(rpctypes::KEY_NOT_FOUND.status());
                    }
                }
                Some(Request::RequestRange(range)) if range.revision != 0 => {
                    return Err(Status::unimplemented(
                        "MemoryKv: no ranges at a revision inside a txn",
                    ));
                }
                Some(Request::RequestRange(_) | Request::RequestDeleteRange(_)) => {}
                Some(Request::RequestTxn(_)) => {
                    return Err(Status::unimplemented("MemoryKv: no nested txns"));
                }
                // As the server answers an op without a request (etcd's `checkRequestOp`).
                None => return Err(rpctypes::KEY_NOT_FOUND.status()),
            }
        }
        let revision = self.revision + 1;
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op.request {
                Some(Request::RequestRange(range)) => Response::ResponseRange(self.range(&range)?),
                Some(Request::RequestPut(put)) => Response::ResponsePut(self.put(put, revision, &mut events)),
                Some(Request::RequestDeleteRange(delete)) => {
                    Response::ResponseDeleteRange(self.delete(&delete, revision, &mut events))
                }
                _ => continue, // rejected above
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        self.commit(revision, events);
        Ok(TxnResponse {
            header: Some(self.header()),
            succeeded,
            responses,
        })
    }

    fn put(&mut self, put: PutRequest, revision: i64, events: &mut Vec<Event>) -> PutResponse {
        let prev = self.keys.get(&put.key).cloned();
        let (create_revision, version) = prev
            .as_ref()
            .map_or((revision, 1), |p| (p.create_revision, p.version + 1));
        let mut kv = KeyValue {
            key: put.key.into(),
            create_revision,
            mod_revision: revision,
            version,
            value: put.value.into(),
            lease: put.lease,
        };
        if let Some(prev) = &prev {
            if put.ignore_value {
                kv.value = prev.value.clone();
            }
            if put.ignore_lease {
                kv.lease = prev.lease;
            }
            if prev.lease != kv.lease {
                self.detach(prev);
            }
        }
        if let Some(lease) = self.leases.get_mut(&kv.lease) {
            lease.keys.insert(kv.key.to_vec());
        }
        self.keys.insert(kv.key.to_vec(), kv.clone());
        events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        let prev_kv = if put.prev_kv { prev } else { None };
        PutResponse {
            header: None,
            prev_kv,
        }
    }

    fn delete(
        &mut self,
        delete: &DeleteRangeRequest,
        revision: i64,
        events: &mut Vec<Event>,
    ) -> DeleteRangeResponse {
        let doomed: Vec<Vec<u8>> = matching(&self.keys, &delete.key, &delete.range_end)
            .map(|kv| kv.key.to_vec())
            .collect();
        let mut prev_kvs = Vec::new();
        for key in doomed {
            let Some(prev) = self.keys.remove(&key) else {
                continue;
            };
            self.detach(&prev);
            let kv = KeyValue {
                key: key.into(),
                mod_revision: revision,
                ..Default::default()
            };
            events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv),
                prev_kv: Some(prev.clone()),
            });
            prev_kvs.push(prev);
        }
        let deleted = prev_kvs.len() as i64;
        if !delete.prev_kv {
            prev_kvs.clear();
        }
        DeleteRangeResponse {
            header: None,
            deleted,
            prev_kvs,
        }
    }

    fn detach(&mut self, kv: &KeyValue) {
        if let Some(lease) = self.leases.get_mut(&kv.lease) {
            lease.keys.remove(&kv.key[..]);
        }
    }

    pub(super) fn revoke(&mut self, id: i64) -> Result<(), Status> {
        let lease = self.leases.remove(&id).ok_or_else(lease_not_found)?;
        let revision = self.revision + 1;
        let mut events = Vec::new();
        for key in lease.keys {
            self.delete(
                &DeleteRangeRequest {
                    key,
                    ..Default::default()
                },
                revision,
                &mut events,
            );
        }
        self.commit(revision, events);
        Ok(())
    }

    /// Makes `events` revision `revision` (if there are any) and hands them to the watchers.
    fn commit(&mut self, revision: i64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.revision = revision;
        self.watchers
            .retain(|watcher| watcher.send(revision, revision, &events));
        self.history.push((revision, events));
    }
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let ordering = match (CompareTarget::try_from(compare.target), &compare.target_union) {
        (Ok(CompareTarget::Version), Some(TargetUnion::Version(v))) => kv.version.cmp(v),
        (Ok(CompareTarget::Create), Some(TargetUnion::CreateRevision(r))) => kv.create_revision.cmp(r),
        (Ok(CompareTarget::Mod), Some(TargetUnion::ModRevision(r))) => kv.mod_revision.cmp(r),
        (Ok(CompareTarget::Value), Some(TargetUnion::Value(v))) => kv.value[..].cmp(v.as_slice()),
        (Ok(CompareTarget::Lease), Some(TargetUnion::Lease(l))) => kv.lease.cmp(l),
        _ => return false,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Err(_) => false,
    }
}

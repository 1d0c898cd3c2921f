//! Range reads: etcd's `rangeKeys` (index lookup, revision checks, count) and the applier's
//! post-processing (min/max revision filters, sort, limit, `more`, `keys_only`).
//!
//! A read runs in two steps so that the store can drop its index lock between them: [`plan`]
//! (index only) picks the revisions, [`fetch`] reads their rows from a history snapshot.

use std::cmp::Ordering;

use concord_proto::Bytes;
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use concord_proto::mvccpb::KeyValue;

use super::error::MvccError;
use super::history::History;
use super::index::TreeIndex;
use super::key_span::KeySpan;
use super::revision::Revision;

/// What to read (etcd's `mvcc.RangeOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// At most this many keys; `<= 0` means no limit.
    pub limit: i64,
    /// Read at this revision; `<= 0` means the current one.
    pub rev: i64,
    /// Only count the keys.
    pub count_only: bool,
}

impl RangeOptions {
    /// The options the applier derives from a request: when sorting or filtering, everything is
    /// fetched (the limit applies afterwards); otherwise one extra key tells whether there are
    /// `more`.
    pub fn for_request(req: &RangeRequest) -> Self {
        let filtered = req.sort_order != SortOrder::None as i32
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let limit = match req.limit {
            _ if filtered => 0,
            l if l > 0 => l.saturating_add(1),
            l => l,
        };
        RangeOptions {
            limit,
            rev: req.revision,
            count_only: req.count_only,
        }
    }
}

/// The index's answer to a range: which rows to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    /// Revisions of the rows to read, in key order.
    pub revs: Vec<Revision>,
    /// Keys in the range at the read revision, before any limit.
    pub count: i64,
    /// The current revision of the view read from (reported in the response header).
    pub header_rev: i64,
}

/// A range's key-values (etcd's `mvcc.RangeResult`).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeResult {
    /// The key-values, in key order.
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the read revision, before any limit.
    pub count: i64,
    /// The current revision of the view read from.
    pub header_rev: i64,
}

/// Looks the range up in the index (etcd's `rangeKeys`, index part).
///
/// `cur_rev` is the revision of the view (the store's current revision, or one more inside a
/// txn that has written); `compacted` the compacted revision.
pub fn plan(
    index: &TreeIndex,
    span: KeySpan<'_>,
    opts: RangeOptions,
    cur_rev: i64,
    compacted: i64,
) -> Result<RangePlan, MvccError> {
    if opts.rev > cur_rev {
        return Err(MvccError::FutureRev);
    }
    let rev = if opts.rev <= 0 { cur_rev } else { opts.rev };
    if rev < compacted {
        return Err(MvccError::Compacted);
    }
    let (revs, count) = if opts.count_only {
        (Vec::new(), index.count(span, rev))
    } else {
        let limit = usize::try_from(opts.limit.max(0)).unwrap_or(usize::MAX);
        index.revisions(span, rev, limit)
    };
    Ok(RangePlan {
        revs,
        count: i64::try_from(count).unwrap_or(i64::MAX),
        header_rev: cur_rev,
    })
}

/// Reads the rows a [`plan`] picked.
pub fn fetch<H: History>(history: &H, plan: RangePlan) -> Result<RangeResult, MvccError> {
    let kvs = plan
        .revs
        .iter()
        .map(|rev| history.kv(*rev))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RangeResult {
        kvs,
        count: plan.count,
        header_rev: plan.header_rev,
    })
}

/// [`plan`] then [`fetch`].
pub fn range_keys<H: History>(
    index: &TreeIndex,
    history: &H,
    span: KeySpan<'_>,
    opts: RangeOptions,
    cur_rev: i64,
    compacted: i64,
) -> Result<RangeResult, MvccError> {
    fetch(history, plan(index, span, opts, cur_rev, compacted)?)
}

/// The applier's part of a range (etcd's `applierV3backend.Range` after `txn.Range`): prunes by
/// the min/max revision filters, sorts, applies the limit and `keys_only`.
pub fn respond(req: &RangeRequest, rr: RangeResult) -> Result<RangeResponse, MvccError> {
    let order = SortOrder::try_from(req.sort_order).map_err(|_| MvccError::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| MvccError::InvalidSortOption)?;
    let mut kvs = rr.kvs;
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }

    // Rows come sorted by key ascending already; any other target defaults to ascending.
    let order = match (target, order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, order) => order,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }

    let mut more = false;
    let limit = usize::try_from(req.limit).unwrap_or(0);
    if limit > 0 && kvs.len() > limit {
        kvs.truncate(limit);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: rr.header_rev,
            ..Default::default()
        }),
        kvs,
        more,
        count: rr.count,
    })
}

/// A whole range request against one view (no request validation: see
/// [`super::check::check_range_request`]).
pub fn range<H: History>(
    index: &TreeIndex,
    history: &H,
    req: &RangeRequest,
    cur_rev: i64,
    compacted: i64,
) -> Result<RangeResponse, MvccError> {
    let span = KeySpan::new(&req.key, &req.range_end);
    let rr = range_keys(
        index,
        history,
        span,
        RangeOptions::for_request(req),
        cur_rev,
        compacted,
    )?;
    respond(req, rr)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{self, TestStore, get, keys, range, rev_of, values};
    use super::*;

    /// foo=bar@2, foo/a=x@3, foo/b=y@4, fop=z@5, foo=baz@6, a=1@7.
    fn sample() -> TestStore {
        let t = test_util::open();
        for (k, v) in [
            ("foo", "bar"),
            ("foo/a", "x"),
            ("foo/b", "y"),
            ("fop", "z"),
            ("foo", "baz"),
            ("a", "1"),
        ] {
            t.put(k, v);
        }
        assert_eq!(t.store.current_revision(), 7);
        t
    }

    fn all() -> RangeRequest {
        range("\0", "\0")
    }

    #[test]
    fn single_key() {
        let t = sample();
        let r = t.range(get("foo")).unwrap();
        assert_eq!(
            (keys(&r), values(&r), r.count, r.more),
            (vec!["foo".into()], vec!["baz".into()], 1, false)
        );
        let kv = &r.kvs[0];
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
            (2, 6, 2, 0)
        );
        assert_eq!(rev_of(&r.header), 7);
        let r = t.range(get("fo")).unwrap();
        assert_eq!((r.kvs.len(), r.count), (0, 0));
    }

    #[test]
    fn range_ends() {
        let t = sample();
        let r = t.range(range("foo", "fop")).unwrap();
        assert_eq!(
            (keys(&r), r.count),
            (vec!["foo".into(), "foo/a".into(), "foo/b".into()], 3)
        );
        // Prefix style: "foo/" .. "foo0".
        let r = t.range(range("foo/", "foo0")).unwrap();
        assert_eq!(keys(&r), ["foo/a", "foo/b"]);
        // "\0": every key >= key.
        let r = t.range(range("foo/a", "\0")).unwrap();
        assert_eq!(keys(&r), ["foo/a", "foo/b", "fop"]);
        // "\0" .. "\0": every key.
        let r = t.range(all()).unwrap();
        assert_eq!(
            (keys(&r), r.count),
            (
                vec![
                    "a".into(),
                    "foo".into(),
                    "foo/a".into(),
                    "foo/b".into(),
                    "fop".into()
                ],
                5
            )
        );
        // range_end <= key: empty, no error.
        for (k, e) in [("foo", "a"), ("foo", "foo")] {
            let r = t.range(range(k, e)).unwrap();
            assert_eq!((r.kvs.len(), r.count, r.more), (0, 0, false));
            assert_eq!(rev_of(&r.header), 7);
        }
    }

    #[test]
    fn limit_more_and_count() {
        let t = sample();
        let with_limit = |limit| {
            let mut req = all();
            req.limit = limit;
            t.range(req).unwrap()
        };
        let r = with_limit(2);
        assert_eq!(
            (keys(&r), r.more, r.count),
            (vec!["a".into(), "foo".into()], true, 5)
        );
        let r = with_limit(4);
        assert_eq!((r.kvs.len(), r.more, r.count), (4, true, 5));
        for limit in [5, 6, 0, -1, -100] {
            let r = with_limit(limit);
            assert_eq!((r.kvs.len(), r.more, r.count), (5, false, 5), "limit {limit}");
        }
    }

    #[test]
    fn historic_revisions() {
        let t = sample();
        let at = |key: &str, rev| {
            t.get_at(key, rev)
                .unwrap()
                .map(|kv| (String::from_utf8(kv.value.to_vec()).unwrap(), kv.version))
        };
        assert_eq!(at("foo", 1), None);
        assert_eq!(at("foo", 2), Some(("bar".into(), 1)));
        assert_eq!(at("foo", 5), Some(("bar".into(), 1)));
        assert_eq!(at("foo", 6), Some(("baz".into(), 2)));
        assert_eq!(at("foo", 0), Some(("baz".into(), 2)));
        assert_eq!(
            at("foo", -3),
            Some(("baz".into(), 2)),
            "negative revision = current"
        );
        let mut req = all();
        req.revision = 4;
        let r = t.range(req.clone()).unwrap();
        assert_eq!(
            (keys(&r), r.count),
            (vec!["foo".into(), "foo/a".into(), "foo/b".into()], 3)
        );
        assert_eq!(
            rev_of(&r.header),
            7,
            "header carries the current revision, not the read one"
        );
        req.revision = 7;
        assert_eq!(t.range(req.clone()).unwrap().count, 5);
        req.revision = 8;
        assert_eq!(t.range(req), Err(MvccError::FutureRev));
    }

    fn sorted(t: &TestStore, target: SortTarget, order: SortOrder) -> Vec<String> {
        let mut req = all();
        req.sort_target = target as i32;
        req.sort_order = order as i32;
        keys(&t.range(req).unwrap())
    }

    #[test]
    fn sort_orders_and_targets() {
        let t = sample();
        let by_key = ["a", "foo", "foo/a", "foo/b", "fop"];
        let rev_key = ["fop", "foo/b", "foo/a", "foo", "a"];
        assert_eq!(sorted(&t, SortTarget::Key, SortOrder::None), by_key);
        assert_eq!(sorted(&t, SortTarget::Key, SortOrder::Ascend), by_key);
        assert_eq!(sorted(&t, SortTarget::Key, SortOrder::Descend), rev_key);
        // Target other than KEY with order NONE sorts ascending.
        assert_eq!(
            sorted(&t, SortTarget::Mod, SortOrder::None),
            ["foo/a", "foo/b", "fop", "foo", "a"]
        );
        assert_eq!(
            sorted(&t, SortTarget::Mod, SortOrder::Descend),
            ["a", "foo", "fop", "foo/b", "foo/a"]
        );
        assert_eq!(
            sorted(&t, SortTarget::Create, SortOrder::Ascend),
            ["foo", "foo/a", "foo/b", "fop", "a"]
        );
        assert_eq!(
            sorted(&t, SortTarget::Create, SortOrder::Descend),
            ["a", "fop", "foo/b", "foo/a", "foo"]
        );
        // Stable: equal versions keep key order.
        assert_eq!(
            sorted(&t, SortTarget::Version, SortOrder::None),
            ["a", "foo/a", "foo/b", "fop", "foo"]
        );
        assert_eq!(
            sorted(&t, SortTarget::Version, SortOrder::Descend),
            ["foo", "a", "foo/a", "foo/b", "fop"]
        );
        // Values: 1 < baz < x < y < z.
        assert_eq!(sorted(&t, SortTarget::Value, SortOrder::None), by_key);
        assert_eq!(sorted(&t, SortTarget::Value, SortOrder::Descend), rev_key);
    }

    #[test]
    fn sort_then_limit() {
        let t = sample();
        let mut req = all();
        req.sort_target = SortTarget::Mod as i32;
        req.sort_order = SortOrder::Descend as i32;
        req.limit = 2;
        let r = t.range(req).unwrap();
        assert_eq!(
            (keys(&r), r.more, r.count),
            (vec!["a".into(), "foo".into()], true, 5)
        );
    }

    #[test]
    fn keys_only_and_count_only() {
        let t = sample();
        let mut req = all();
        req.keys_only = true;
        let r = t.range(req).unwrap();
        assert_eq!(r.kvs.len(), 5);
        assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.mod_revision > 0));
        let mut req = all();
        req.count_only = true;
        req.limit = 1;
        let r = t.range(req).unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 5, false));
        let mut req = range("foo", "fop");
        req.count_only = true;
        req.revision = 3;
        assert_eq!(t.range(req).unwrap().count, 2);
    }

    #[test]
    fn revision_filters() {
        let t = sample();
        let filtered = |f: &dyn Fn(&mut RangeRequest)| {
            let mut req = all();
            f(&mut req);
            let r = t.range(req).unwrap();
            (keys(&r), r.more, r.count)
        };
        let v = |ks: &[&str]| ks.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            filtered(&|r| r.max_mod_revision = 4),
            (v(&["foo/a", "foo/b"]), false, 5)
        );
        assert_eq!(
            filtered(&|r| r.min_mod_revision = 5),
            (v(&["a", "foo", "fop"]), false, 5)
        );
        assert_eq!(
            filtered(&|r| {
                r.min_create_revision = 3;
                r.max_create_revision = 5;
            }),
            (v(&["foo/a", "foo/b", "fop"]), false, 5)
        );
        assert_eq!(filtered(&|r| r.max_create_revision = 2), (v(&["foo"]), false, 5));
        // The limit applies after the filters.
        assert_eq!(
            filtered(&|r| {
                r.max_mod_revision = 4;
                r.limit = 1;
            }),
            (v(&["foo/a"]), true, 5)
        );
        assert_eq!(
            filtered(&|r| {
                r.min_mod_revision = 4;
                r.max_mod_revision = 5;
                r.limit = 2;
            }),
            (v(&["foo/b", "fop"]), false, 5)
        );
    }

    #[test]
    fn deleted_keys_are_invisible() {
        let t = sample();
        t.delete("foo/a", "").unwrap();
        let r = t.range(all()).unwrap();
        assert_eq!(
            (keys(&r), r.count),
            (vec!["a".into(), "foo".into(), "foo/b".into(), "fop".into()], 4)
        );
        let mut req = all();
        req.revision = 7;
        assert_eq!(t.range(req).unwrap().count, 5, "still there at 7");
    }

    #[test]
    fn invalid_requests() {
        let t = sample();
        assert_eq!(t.range(get("")), Err(MvccError::EmptyKey));
        let mut req = get("foo");
        req.sort_order = 7;
        assert_eq!(t.range(req), Err(MvccError::InvalidSortOption));
        let mut req = get("foo");
        req.sort_target = 9;
        assert_eq!(t.range(req), Err(MvccError::InvalidSortOption));
    }

    #[test]
    fn options_for_request() {
        let mut req = get("a");
        req.limit = 3;
        assert_eq!(RangeOptions::for_request(&req).limit, 4, "one extra for `more`");
        req.sort_order = SortOrder::Ascend as i32;
        assert_eq!(
            RangeOptions::for_request(&req).limit,
            0,
            "sorting fetches everything"
        );
        req.sort_order = 0;
        req.min_create_revision = 1;
        assert_eq!(
            RangeOptions::for_request(&req).limit,
            0,
            "filters fetch everything"
        );
        let neg = RangeRequest {
            limit: -5,
            ..get("a")
        };
        assert_eq!(RangeOptions::for_request(&neg).limit, -5);
    }
}

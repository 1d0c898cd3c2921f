//! Txn compares (etcd's `applyCompare` / `compareKV`).

use std::cmp::Ordering;

use concord_proto::etcdserverpb::Compare;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::mvccpb::KeyValue;

use super::error::MvccError;
use super::key_span::KeySpan;
use super::view::ReadView;

/// True when every compare holds (etcd's `applyCompares`); stops at the first that fails.
pub fn apply_compares<V: ReadView + ?Sized>(view: &V, cmps: &[Compare]) -> Result<bool, MvccError> {
    for c in cmps {
        if !apply_compare(view, c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One compare against every live key of its range (etcd's `applyCompare`).
///
/// Every key in the range must satisfy it. With no key in the range, a VALUE compare is false
/// (a missing value cannot be told from an empty one) and any other target compares against a
/// zero `KeyValue`: a missing key has version, create/mod revision and lease 0.
pub fn apply_compare<V: ReadView + ?Sized>(view: &V, c: &Compare) -> Result<bool, MvccError> {
    let kvs = view.range_kvs(KeySpan::new(&c.key, &c.range_end))?;
    if kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// One compare against one key-value (etcd's `compareKV`).
///
/// A `target_union` of the wrong kind counts as the zero value (an empty value for VALUE), an
/// unknown target compares as equal, and an unknown result holds, all as in etcd.
pub fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int = |pick: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(pick).unwrap_or(0);
    let result = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value[..].cmp(v)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(|t| match t {
            TargetUnion::CreateRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(|t| match t {
            TargetUnion::ModRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(|t| match t {
            TargetUnion::Lease(l) => Some(*l),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => result == Ordering::Equal,
        Ok(CompareResult::NotEqual) => result != Ordering::Equal,
        Ok(CompareResult::Greater) => result == Ordering::Greater,
        Ok(CompareResult::Less) => result == Ordering::Less,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv() -> KeyValue {
        KeyValue {
            key: concord_proto::Bytes::from_static(b"k"),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: concord_proto::Bytes::from_static(b"m"),
            lease: 7,
        }
    }

    fn cmp(target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(union),
        }
    }

    #[test]
    fn every_target_and_result() {
        use CompareResult::*;
        use CompareTarget as T;
        let cases: [(CompareTarget, TargetUnion, TargetUnion, TargetUnion); 5] = [
            (
                T::Version,
                TargetUnion::Version(2),
                TargetUnion::Version(3),
                TargetUnion::Version(4),
            ),
            (
                T::Create,
                TargetUnion::CreateRevision(1),
                TargetUnion::CreateRevision(2),
                TargetUnion::CreateRevision(3),
            ),
            (
                T::Mod,
                TargetUnion::ModRevision(4),
                TargetUnion::ModRevision(5),
                TargetUnion::ModRevision(6),
            ),
            (
                T::Value,
                TargetUnion::Value(b"a".to_vec()),
                TargetUnion::Value(b"m".to_vec()),
                TargetUnion::Value(b"z".to_vec()),
            ),
            (
                T::Lease,
                TargetUnion::Lease(6),
                TargetUnion::Lease(7),
                TargetUnion::Lease(8),
            ),
        ];
        for (target, below, same, above) in cases {
            let check = |result, union: &TargetUnion| compare_kv(&cmp(target, result, union.clone()), &kv());
            // kv's field is greater than `below`, equal to `same`, less than `above`.
            assert!(check(Greater, &below), "{target:?}");
            assert!(!check(Less, &below));
            assert!(!check(Equal, &below));
            assert!(check(NotEqual, &below));
            assert!(check(Equal, &same));
            assert!(!check(NotEqual, &same));
            assert!(!check(Greater, &same));
            assert!(!check(Less, &same));
            assert!(check(Less, &above));
            assert!(!check(Greater, &above));
        }
    }

    #[test]
    fn mismatched_union_is_zero() {
        let c = cmp(
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Lease(100),
        );
        assert!(compare_kv(&c, &kv()), "version 3 > 0");
        let mut c = cmp(
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Version(1),
        );
        assert!(!compare_kv(&c, &kv()));
        c.result = CompareResult::Greater as i32;
        assert!(compare_kv(&c, &kv()), "value > empty");
        let mut none = c.clone();
        none.target_union = None;
        assert!(compare_kv(&none, &kv()));
    }

    #[test]
    fn unknown_enums() {
        let mut c = cmp(
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(99),
        );
        c.result = 42;
        assert!(compare_kv(&c, &kv()), "unknown result holds");
        c.result = CompareResult::Equal as i32;
        c.target = 42;
        assert!(compare_kv(&c, &kv()), "unknown target compares equal");
    }
}

//! Key-range permissions: what a user's roles let it read and write, merged into disjoint
//! intervals, and whether a request's key or range lies inside them.
//!
//! A permission and a request name keys as etcd does: `range_end` empty is the single key,
//! `"\0"` is every key from `key` on, anything else is `[key, range_end)`. A range request is
//! allowed only if the whole range is covered (by one permission or by several that touch), so
//! a user with `app/` cannot read from `""` to the end.

use concord_proto::authpb::{Permission, Role, permission::Type};

/// What a request needs: to read or to write a key or a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read (range, watch, txn compares).
    Read,
    /// Write (put, delete).
    Write,
}

/// Where an interval ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// Before this key.
    Before(Vec<u8>),
    /// Past every key.
    Unbounded,
}

/// A half-open interval of keys `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: End,
}

impl Interval {
    /// The keys `key` and `range_end` name (etcd's conventions, see the module docs). An
    /// inverted range (`range_end <= key`) names no key beyond `key` itself, so it is checked
    /// as `key`.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => End::Before(successor(key)),
            [0] => End::Unbounded,
            end if end <= key => End::Before(successor(key)),
            end => End::Before(end.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Disjoint, sorted intervals: the union of some permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Union {
    intervals: Vec<Interval>,
}

impl Union {
    fn of(mut intervals: Vec<Interval>) -> Union {
        intervals.sort_by(|a, b| a.start.cmp(&b.start));
        let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
        for next in intervals {
            match merged.last_mut() {
                // Overlapping or touching: one interval.
                Some(last) if End::Before(next.start.clone()) <= last.end => {
                    if next.end > last.end {
                        last.end = next.end;
                    }
                }
                _ => merged.push(next),
            }
        }
        Union { intervals: merged }
    }

    /// Whether the union covers all of `wanted`.
    fn covers(&self, wanted: &Interval) -> bool {
        // The last interval starting at or before `wanted.start` is the only candidate: the
        // intervals are disjoint and do not touch.
        let at = self.intervals.partition_point(|i| i.start <= wanted.start);
        at > 0 && self.intervals[at - 1].end >= wanted.end
    }
}

/// What one user may read and write: the union of its roles' permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permits {
    read: Union,
    write: Union,
}

impl Permits {
    /// The permissions of `roles` together.
    pub fn of<'a>(roles: impl IntoIterator<Item = &'a Role>) -> Permits {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for perm in roles.into_iter().flat_map(|role| &role.key_permission) {
            let interval = Interval::of(&perm.key, &perm.range_end);
            match Type::try_from(perm.perm_type) {
                Ok(Type::Read) => read.push(interval),
                Ok(Type::Write) => write.push(interval),
                Ok(Type::Readwrite) => {
                    read.push(interval.clone());
                    write.push(interval);
                }
                Err(_) => {}
            }
        }
        Permits {
            read: Union::of(read),
            write: Union::of(write),
        }
    }

    /// Whether these permissions allow `access` to `key` (`range_end` as in a request).
    pub fn allow(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let union = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        union.covers(&Interval::of(key, range_end))
    }
}

/// Whether `perm` names a valid range: a non-empty key, and a `range_end` that is empty, `"\0"`
/// or after the key (etcd's `isValidPermissionRange`).
pub fn is_valid(perm: &Permission) -> bool {
    !perm.key.is_empty() && (perm.range_end.is_empty() || perm.range_end == [0] || perm.range_end > perm.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(perms: &[(Type, &str, &str)]) -> Role {
        Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(t, key, end)| Permission {
                    perm_type: *t as i32,
                    key: key.as_bytes().to_vec(),
                    range_end: end.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn keys_and_ranges_are_checked_as_etcd_checks_them() {
        let reader = role(&[(Type::Read, "foo", ""), (Type::Readwrite, "app/", "app0")]);
        let permits = Permits::of([&reader]);
        assert!(permits.allow(Access::Read, b"foo", b""));
        assert!(!permits.allow(Access::Write, b"foo", b""));
        assert!(!permits.allow(Access::Read, b"foo0", b""));
        assert!(!permits.allow(Access::Read, b"fo", b""));
        assert!(permits.allow(Access::Write, b"app/b", b""));
        assert!(permits.allow(Access::Read, b"app/", b"app0"));
        assert!(permits.allow(Access::Read, b"app/x", b"app/y"));
        assert!(!permits.allow(Access::Read, b"app/", b"app1"), "past the prefix");
        assert!(!permits.allow(Access::Read, b"\0", b"\0"), "everything");
        assert!(!permits.allow(Access::Read, b"app/", b"\0"), "from app/ on");
        assert!(!permits.allow(Access::Read, b"secret/s", b""));
    }

    #[test]
    fn touching_permissions_cover_a_range_together() {
        let split = role(&[
            (Type::Read, "a", "m"),
            (Type::Read, "m", "z"),
            (Type::Read, "z", "\0"),
        ]);
        let permits = Permits::of([&split]);
        assert!(permits.allow(Access::Read, b"b", b"y"));
        assert!(permits.allow(Access::Read, b"a", b"\0"));
        assert!(!permits.allow(Access::Read, b"\0", b"\0"), "below a");
        let gap = role(&[(Type::Read, "a", "l"), (Type::Read, "m", "z")]);
        assert!(!Permits::of([&gap]).allow(Access::Read, b"b", b"y"));
        // Roles add up.
        let first = role(&[(Type::Write, "a", "m")]);
        let second = role(&[(Type::Write, "k", "q")]);
        assert!(Permits::of([&first, &second]).allow(Access::Write, b"b", b"p"));
    }

    #[test]
    fn a_point_permission_covers_exactly_its_key() {
        let point = role(&[(Type::Write, "k", "")]);
        let permits = Permits::of([&point]);
        assert!(permits.allow(Access::Write, b"k", b""));
        assert!(permits.allow(Access::Write, b"k", b"k\0"));
        assert!(!permits.allow(Access::Write, b"k", b"k\0\0"));
        assert!(
            permits.allow(Access::Write, b"k", b"a"),
            "an inverted range names only its key"
        );
    }

    #[test]
    fn permission_ranges_are_validated() {
        let perm = |key: &str, end: &str| Permission {
            perm_type: 0,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        };
        assert!(is_valid(&perm("a", "")));
        assert!(is_valid(&perm("a", "b")));
        assert!(is_valid(&perm("a", "\0")));
        assert!(!is_valid(&perm("", "")));
        assert!(!is_valid(&perm("b", "a")));
        assert!(!is_valid(&perm("a", "a")));
    }
}

//! [`KeySpan`]: the keys a request names with etcd's `key` / `range_end` conventions.

use std::ops::Bound;

/// The keys addressed by a `key` and `range_end` pair (etcd's `mkGteRange` rules).
///
/// - `range_end` empty: the single key `key`;
/// - `range_end == "\0"`: every key `>= key` (so `key == "\0"` too means every key);
/// - otherwise the half-open interval `[key, range_end)`, empty when `range_end <= key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpan<'a> {
    /// Exactly one key.
    Single(&'a [u8]),
    /// Every key from `start` (inclusive) up to `end` (exclusive; `None` = no upper bound).
    Range {
        /// First key of the span.
        start: &'a [u8],
        /// First key past the span, or `None` for no upper bound.
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeySpan<'a> {
    /// The span of a request's `key` and `range_end`.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeySpan::Single(key),
            [0] => KeySpan::Range {
                start: key,
                end: None,
            },
            end => KeySpan::Range {
                start: key,
                end: Some(end),
            },
        }
    }

    /// True when the span cannot hold any key (`range_end <= key`).
    pub fn is_empty(&self) -> bool {
        matches!(self, KeySpan::Range { start, end: Some(end) } if end <= start)
    }

    /// True when `key` is in the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeySpan::Single(k) => k == key,
            KeySpan::Range { start, end } => key >= start && end.is_none_or(|e| key < e),
        }
    }

    /// The span as `BTreeMap::range` bounds; callers must skip empty spans first (a reversed
    /// range makes `BTreeMap::range` panic).
    pub fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeySpan::Single(k) => (Bound::Included(k), Bound::Included(k)),
            KeySpan::Range { start, end } => (
                Bound::Included(start),
                end.map_or(Bound::Unbounded, Bound::Excluded),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        assert_eq!(KeySpan::new(b"a", b""), KeySpan::Single(b"a"));
        assert_eq!(
            KeySpan::new(b"a", b"\0"),
            KeySpan::Range {
                start: b"a",
                end: None
            }
        );
        assert_eq!(
            KeySpan::new(b"a", b"c"),
            KeySpan::Range {
                start: b"a",
                end: Some(b"c")
            }
        );
    }

    #[test]
    fn membership() {
        let single = KeySpan::new(b"a", b"");
        assert!(single.contains(b"a"));
        assert!(!single.contains(b"ab"));

        let from = KeySpan::new(b"b", b"\0");
        assert!(!from.contains(b"a"));
        assert!(from.contains(b"b"));
        assert!(from.contains(b"zzzz"));

        let all = KeySpan::new(b"\0", b"\0");
        assert!(all.contains(b"\0"));
        assert!(all.contains(b"a"));

        let prefix = KeySpan::new(b"foo", b"fop");
        assert!(prefix.contains(b"foo"));
        assert!(prefix.contains(b"foo/bar"));
        assert!(!prefix.contains(b"fop"));
        assert!(!prefix.contains(b"fo"));
    }

    #[test]
    fn empty_spans() {
        assert!(KeySpan::new(b"b", b"a").is_empty());
        assert!(KeySpan::new(b"b", b"b").is_empty());
        assert!(!KeySpan::new(b"b", b"\0").is_empty());
        assert!(!KeySpan::new(b"b", b"").is_empty());
        assert!(!KeySpan::new(b"a", b"b").is_empty());
    }
}

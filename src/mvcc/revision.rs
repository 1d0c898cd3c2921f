//! [`Revision`]: the (main, sub) pair that orders every change, and its on-disk key encoding.

/// Length of an encoded revision: two big-endian `u64`s.
pub const REVISION_BYTES: usize = 16;

/// A point in the store's history, like etcd's `mvcc.Revision`.
///
/// `main` is bumped once per write request (put, delete, txn); `sub` numbers the keys changed
/// within that request, from 0. Revisions order first by `main`, then by `sub`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The revision of the write request.
    pub main: i64,
    /// The position of the change within its write request.
    pub sub: i64,
}

impl Revision {
    /// A revision from its two parts.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The history table key: `main` then `sub`, each 8 bytes big-endian, so byte order is
    /// revision order (for the non-negative revisions the store writes) and every write appends
    /// at the end of the table.
    pub fn to_bytes(self) -> [u8; REVISION_BYTES] {
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&encode_part(self.main));
        out[8..].copy_from_slice(&encode_part(self.sub));
        out
    }

    /// The inverse of [`Revision::to_bytes`].
    pub fn from_bytes(bytes: [u8; REVISION_BYTES]) -> Self {
        let mut main = [0u8; 8];
        let mut sub = [0u8; 8];
        main.copy_from_slice(&bytes[..8]);
        sub.copy_from_slice(&bytes[8..]);
        Revision {
            main: decode_part(main),
            sub: decode_part(sub),
        }
    }
}

// Stored revisions are never negative, so the plain two's-complement bits sort numerically (this is
// etcd's encoding too, less its separator byte).
fn encode_part(v: i64) -> [u8; 8] {
    (v as u64).to_be_bytes()
}

fn decode_part(b: [u8; 8]) -> i64 {
    u64::from_be_bytes(b) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for rev in [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(2, 7),
            Revision::new(i64::MAX, i64::MAX),
            Revision::new(-1, 3),
        ] {
            assert_eq!(Revision::from_bytes(rev.to_bytes()), rev);
        }
    }

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(255, 0),
            Revision::new(256, 0),
            Revision::new(1 << 40, 3),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_bytes() < pair[1].to_bytes(), "{pair:?}");
        }
    }

    #[test]
    fn ordering_is_main_then_sub() {
        assert!(Revision::new(1, 9) < Revision::new(2, 0));
        assert!(Revision::new(2, 0) < Revision::new(2, 1));
        assert_eq!(Revision::default(), Revision::new(0, 0));
    }
}

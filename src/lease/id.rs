//! Lease IDs chosen by the server, laid out as etcd lays them out.
//!
//! etcd's request-ID generator puts the low 16 bits of the member ID on top, then 40 bits of the
//! start time in milliseconds and an 8-bit counter (the counter carries into the time part).
//! IDs from different members differ in their prefix, and IDs of one member never repeat
//! across restarts unless the clock goes back. A lease ID is that value with the sign bit
//! cleared, so `etcdctl` prints familiar IDs such as `694d77aa9e38260f`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const TIME_BITS: u32 = 40;
const COUNTER_BITS: u32 = 8;
const SUFFIX_BITS: u32 = TIME_BITS + COUNTER_BITS;

/// Hands out lease IDs for one member.
#[derive(Debug)]
pub struct LeaseIdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

fn low_bits(value: u64, bits: u32) -> u64 {
    value & ((1u64 << bits) - 1)
}

impl LeaseIdGenerator {
    /// A generator for `member_id`, starting from the current time.
    pub fn new(member_id: u64) -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::starting_at(member_id, millis)
    }

    fn starting_at(member_id: u64, unix_millis: u64) -> Self {
        LeaseIdGenerator {
            prefix: member_id << SUFFIX_BITS,
            suffix: AtomicU64::new(low_bits(unix_millis, TIME_BITS) << COUNTER_BITS),
        }
    }

    /// The next ID: positive and never 0 (0 means "no lease").
    pub fn next(&self) -> i64 {
        loop {
            let suffix = self.suffix.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let id = (self.prefix | low_bits(suffix, SUFFIX_BITS)) & (i64::MAX as u64);
            if let Ok(id) = i64::try_from(id)
                && id != 0
            {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_member_prefix_and_increase() {
        let ids = LeaseIdGenerator::starting_at(0x8e9e_05c5_2164_694d, 0x0077_aa9e_3826);
        let first = ids.next();
        assert_eq!(format!("{first:016x}"), "694d77aa9e382601");
        assert_eq!(ids.next(), first + 1);
        assert!(first > 0);
    }

    #[test]
    fn the_sign_bit_is_cleared_and_zero_skipped() {
        let ids = LeaseIdGenerator::starting_at(0xffff, 0);
        assert!(ids.next() > 0);
        let zero = LeaseIdGenerator {
            prefix: 0,
            suffix: AtomicU64::new(u64::MAX),
        };
        assert_eq!(zero.next(), 1, "0 is not a lease ID");
    }
}

//! Leases: TTL-bound ownership of keys (etcd's `lessor`).
//!
//! - [`lessor`]: [`Lessor`], every lease with its keys, applied through Raft, and the leader's
//!   clock (deadlines, keepalives, what to expire and checkpoint).
//! - [`expiry`]: the task that proposes expiries and checkpoints while this member leads.
//! - [`table`]: the `leases` table in the state machine's database.
//! - [`id`]: server-chosen lease IDs, laid out as etcd's.
//!
//! The write path of a lease: the Lease service validates a request and proposes a command
//! (`src/api/lease.rs`), the state machine applies it to the [`Lessor`] and the MVCC store in
//! one redb transaction (`src/raft/state_machine.rs`), and watchers see the deleted keys.

pub mod expiry;
pub mod id;
pub mod lessor;
pub mod table;

use std::time::Duration;

pub use id::LeaseIdGenerator;
pub use lessor::{LeaseState, Lessor, Renewal, TimeToLive};

/// etcd's `MaxLeaseTTL`: the longest TTL a grant may ask for, in seconds.
pub const MAX_TTL_SECS: i64 = 9_000_000_000;

/// etcd's minimum lease TTL in whole seconds: 1.5 election timeouts counted in heartbeat
/// ticks, rounded up (2 s with the default 100 ms heartbeat and 1 s election timeout). Shorter
/// TTLs are raised to it, so a lease outlives the election that may follow a leader's death.
pub fn min_ttl_secs(heartbeat: Duration, election_timeout: Duration) -> i64 {
    let heartbeat_ms = heartbeat.as_millis().max(1);
    let election_ticks = election_timeout.as_millis() / heartbeat_ms;
    let min_ms = (3 * election_ticks / 2) * heartbeat_ms;
    i64::try_from(min_ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_ttl_matches_etcds() {
        let ms = Duration::from_millis;
        assert_eq!(min_ttl_secs(ms(100), ms(1000)), 2);
        assert_eq!(min_ttl_secs(ms(100), ms(500)), 1);
        assert_eq!(min_ttl_secs(ms(50), ms(300)), 1);
        assert_eq!(min_ttl_secs(ms(100), ms(5000)), 8);
    }
}

//! Lease safety, judged from what one client saw of one lease with one key attached:
//!
//! - **none expires early**: the key is there for every read that returned before the lease's
//!   earliest possible deadline (the send time of an acknowledged grant or keepalive plus the
//!   TTL it answered: the leader started counting after the request left the client), unless
//!   the lease was revoked; a keepalive answered "TTL 0" (lease gone) before that deadline is an
//!   early expiry too;
//! - **none outlives its lease by more than the tolerance**: the key is gone for every read that
//!   began later than the latest possible deadline (the end of the last renewal attempt,
//!   answered or not, plus the TTL) plus the [`Tolerance`], and after an acknowledged revoke at
//!   once.
//!
//! Every instant is the test process's monotonic clock; the members run on the same machine
//! and their lease clocks are monotonic too.

use std::time::{Duration, Instant};

/// A renewal that was answered with a TTL (a grant, or a keepalive).
#[derive(Debug, Clone, Copy)]
pub struct Renewed {
    /// When the request left the client.
    pub sent: Instant,
    /// The TTL the answer gave, in seconds (0: the lease was gone).
    pub ttl: i64,
    /// When the answer came.
    pub answered: Instant,
}

/// A read of the leased key.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    pub call: Instant,
    pub ret: Instant,
    /// Whether the key was there.
    pub present: bool,
}

/// What a client saw of one lease.
#[derive(Debug, Clone)]
pub struct Life {
    pub lease: i64,
    pub key: String,
    /// When the put of the key with the lease was acknowledged (`None`: it was not, and the key
    /// may or may not be there).
    pub put_acked: Option<Instant>,
    /// The grant and every answered keepalive, in order.
    pub renewals: Vec<Renewed>,
    /// When the last renewal attempt (answered or not) ended: no renewal can have been made
    /// by the client after this.
    pub last_attempt_end: Instant,
    /// When a revoke was sent, and when it was acknowledged (if it was).
    pub revoke_sent: Option<Instant>,
    pub revoke_acked: Option<Instant>,
    pub reads: Vec<Read>,
}

impl Life {
    /// Everything seen of the lease, in ms since `base`: for reports.
    pub fn describe(&self, base: Instant) -> String {
        let ms = |t: Instant| t.saturating_duration_since(base).as_millis();
        let renewals: Vec<String> = self
            .renewals
            .iter()
            .map(|r| format!("[{}..{}] TTL {}", ms(r.sent), ms(r.answered), r.ttl))
            .collect();
        let reads: Vec<String> = self
            .reads
            .iter()
            .map(|r| {
                format!(
                    "[{}..{}] {}",
                    ms(r.call),
                    ms(r.ret),
                    if r.present { "there" } else { "gone" }
                )
            })
            .collect();
        format!(
            "renewals {}; last attempt ended {}; put acknowledged {:?}; revoke sent {:?}, acknowledged {:?}; reads {}",
            renewals.join(", "),
            ms(self.last_attempt_end),
            self.put_acked.map(ms),
            self.revoke_sent.map(ms),
            self.revoke_acked.map(ms),
            reads.join(", ")
        )
    }
}

/// How much longer than its deadline a lease may live, as Concord states it
/// (`src/lease/lessor.rs`): a new leader continues from the remaining time last recorded, which
/// overstates the true one by at most the lease's *slack* (half its TTL, at least 1 s) plus the
/// time without a leader; leader changes in a row add up. So: the slack and the expiry's own
/// latency, plus for every fault in force between the last renewal and the read, its length,
/// an election, and the slack again.
pub struct Tolerance {
    /// The faults, from their start to their healing.
    pub faults: Vec<(Instant, Instant)>,
    /// How long an election and the new leader's start of its lease clock may take.
    pub election: Duration,
    /// How long after its deadline a leader may take to expire a lease.
    pub expiry_latency: Duration,
}

impl Tolerance {
    /// For a lease of `ttl` seconds whose deadline passed between `from` and `to`.
    fn allowed(&self, ttl: i64, from: Instant, to: Instant) -> Duration {
        let slack = Duration::from_millis((ttl.max(0) as u64 * 1000 / 2).clamp(1000, 60_000));
        let faults: Duration = self
            .faults
            .iter()
            .filter(|(start, healed)| *start < to && *healed > from)
            .map(|(start, healed)| (*healed - *start) + self.election + slack)
            .sum();
        slack + self.expiry_latency + faults
    }
}

/// Checks one lease's life; `Err` names the first read that breaks a rule. Reports give times
/// in ms since `base`.
pub fn check(life: &Life, tolerance: &Tolerance, base: Instant) -> Result<(), String> {
    let granted = life
        .renewals
        .iter()
        .filter(|r| r.ttl > 0)
        .map(|r| r.ttl)
        .max()
        .unwrap_or(0);
    let earliest_deadline = life
        .renewals
        .iter()
        .filter(|r| r.ttl > 0)
        .map(|r| r.sent + Duration::from_secs(r.ttl as u64))
        .max();
    let latest_deadline = life.last_attempt_end + Duration::from_secs(granted as u64);
    let revoke_sent = life.revoke_sent.unwrap_or(far_future());
    let name = format!("lease {:x} ({}; {})", life.lease, life.key, life.describe(base));
    if let Some(deadline) = earliest_deadline {
        // A keepalive told "gone" before the deadline of an earlier renewal.
        for (i, gone) in life.renewals.iter().enumerate().filter(|(_, r)| r.ttl == 0) {
            let before: Option<Instant> = life.renewals[..i]
                .iter()
                .filter(|r| r.ttl > 0)
                .map(|r| r.sent + Duration::from_secs(r.ttl as u64))
                .max();
            if let Some(before) = before.filter(|&d| gone.answered < d && gone.answered < revoke_sent) {
                return Err(format!(
                    "{name}: a keepalive answered TTL 0 (gone) {:?} before the deadline of its \
                     last renewal",
                    before - gone.answered
                ));
            }
        }
        if let Some(acked) = life.put_acked {
            for read in &life.reads {
                if !read.present && read.call > acked && read.ret < deadline && read.ret < revoke_sent {
                    return Err(format!(
                        "{name}: expired early: a read that returned {:?} before the lease's \
                         earliest deadline found no key",
                        deadline - read.ret
                    ));
                }
            }
        }
    }
    for read in &life.reads {
        let allowed = tolerance.allowed(granted, life.last_attempt_end, read.call);
        let must_be_gone = (latest_deadline + allowed).min(life.revoke_acked.unwrap_or(far_future()));
        if read.present && read.call > must_be_gone {
            return Err(format!(
                "{name}: outlived its lease: a read that began {:?} after {} still found the key",
                read.call - must_be_gone,
                if life.revoke_acked.is_some_and(|r| r <= must_be_gone) {
                    "the acknowledged revoke"
                } else {
                    "the latest deadline plus the tolerance"
                }
            ));
        }
    }
    Ok(())
}

/// An instant no run reaches.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 s of slack (TTL 2), no latency, no fault.
    fn quiet() -> Tolerance {
        Tolerance {
            faults: Vec::new(),
            election: Duration::from_secs(1),
            expiry_latency: Duration::ZERO,
        }
    }

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn life(base: Instant, reads: &[(u64, u64, bool)]) -> Life {
        Life {
            lease: 1,
            key: "k".into(),
            put_acked: Some(at(base, 10)),
            renewals: vec![
                Renewed {
                    sent: base,
                    ttl: 2,
                    answered: at(base, 5),
                },
                Renewed {
                    sent: at(base, 1000),
                    ttl: 2,
                    answered: at(base, 1005),
                },
            ],
            last_attempt_end: at(base, 1005),
            revoke_sent: None,
            revoke_acked: None,
            reads: reads
                .iter()
                .map(|&(call, ret, present)| Read {
                    call: at(base, call),
                    ret: at(base, ret),
                    present,
                })
                .collect(),
        }
    }

    #[test]
    fn a_lease_that_lives_its_time_and_goes_passes() {
        let base = Instant::now();
        let l = life(
            base,
            &[(1500, 1510, true), (2990, 2999, true), (3100, 3110, false)],
        );
        assert_eq!(check(&l, &quiet(), base), Ok(()));
    }

    #[test]
    fn a_key_gone_before_the_last_renewals_deadline_is_an_early_expiry() {
        let base = Instant::now();
        // Gone after the first deadline (2 s) but before the keepalive's (3 s).
        let l = life(base, &[(2500, 2510, false)]);
        let err = check(&l, &quiet(), base).unwrap_err();
        assert!(err.contains("expired early"), "{err}");
    }

    #[test]
    fn a_keepalive_told_gone_before_the_deadline_is_an_early_expiry() {
        let base = Instant::now();
        let mut l = life(base, &[]);
        l.renewals.push(Renewed {
            sent: at(base, 1900),
            ttl: 0,
            answered: at(base, 1910),
        });
        let err = check(&l, &quiet(), base).unwrap_err();
        assert!(err.contains("TTL 0"), "{err}");
    }

    #[test]
    fn a_key_seen_past_the_deadline_and_tolerance_outlived_its_lease() {
        let base = Instant::now();
        let l = life(base, &[(3900, 3910, true), (4100, 4110, true)]);
        let err = check(&l, &quiet(), base).unwrap_err();
        assert!(err.contains("outlived"), "{err}");
        // A fault of 500 ms before the read allows it 500 ms + an election + the slack more.
        let mut tolerance = quiet();
        tolerance.faults.push((at(base, 2000), at(base, 2500)));
        assert_eq!(check(&l, &tolerance, base), Ok(()));
        let late = life(base, &[(6600, 6610, true)]);
        assert!(check(&late, &tolerance, base).is_err());
    }

    #[test]
    fn after_an_acknowledged_revoke_the_key_is_gone_at_once_and_may_go_early() {
        let base = Instant::now();
        let mut l = life(base, &[(1300, 1310, false)]);
        l.revoke_sent = Some(at(base, 1100));
        l.revoke_acked = Some(at(base, 1200));
        assert_eq!(check(&l, &quiet(), base), Ok(()));
        l.reads.push(Read {
            call: at(base, 1250),
            ret: at(base, 1260),
            present: true,
        });
        let err = check(&l, &quiet(), base).unwrap_err();
        assert!(err.contains("acknowledged revoke"), "{err}");
    }
}

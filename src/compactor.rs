//! Auto-compaction (etcd's `--auto-compaction-mode` and `--auto-compaction-retention`): the
//! leader proposes compactions through Raft, so history does not grow without bound.
//!
//! - `periodic` (etcd's default mode): keep the history of the last retention period
//!   (`1h`, `30m`, `5s`; a bare number is hours, as in etcd). The current revision is sampled
//!   every tenth of the period (at most hourly), and the newest sample at least a period old is
//!   compacted to.
//! - `revision`: keep the last N revisions. Checked when this member becomes leader and every
//!   5 minutes (etcd's interval) after.
//!
//! A retention of 0 (the default) turns auto-compaction off.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::CompactionRequest;
use concord_proto::raftpb::command::Request;
use tokio::time::Instant;

use crate::api::Api;
use crate::config::parse_duration;

/// How often the revision mode checks (etcd's `revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The longest interval between samples in periodic mode.
const MAX_SAMPLE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// What is kept of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Everything (no auto-compaction).
    Off,
    /// The history of this last period.
    Periodic(Duration),
    /// This many last revisions.
    Revisions(i64),
}

impl AutoCompaction {
    /// Parses etcd's two flags.
    pub fn parse(mode: &str, retention: &str) -> Result<Self, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => parse_duration(retention)
                        .map_err(|e| format!("--auto-compaction-retention {retention:?}: {e}"))?,
                };
                Ok(if period.is_zero() {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Periodic(period)
                })
            }
            "revision" => {
                let kept = retention.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    format!("--auto-compaction-retention {retention:?} is not a number of revisions")
                })?;
                Ok(if kept == 0 {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Revisions(kept)
                })
            }
            other => Err(format!(
                "unknown --auto-compaction-mode {other:?} (expected \"periodic\" or \"revision\")"
            )),
        }
    }

    /// How often the compactor wakes up.
    fn interval(self) -> Duration {
        match self {
            AutoCompaction::Off => MAX_SAMPLE_INTERVAL,
            AutoCompaction::Periodic(period) => {
                (period / 10).clamp(Duration::from_millis(10), MAX_SAMPLE_INTERVAL)
            }
            AutoCompaction::Revisions(_) => REVISION_INTERVAL,
        }
    }
}

/// Which revision to compact to in periodic mode: remembers the revisions it sampled.
#[derive(Debug, Default)]
struct Samples(VecDeque<(Instant, i64)>);

impl Samples {
    /// Records `revision` at `now` and returns the newest revision sampled at least `period`
    /// ago, dropping the samples older than it.
    fn record(&mut self, now: Instant, revision: i64, period: Duration) -> Option<i64> {
        self.0.push_back((now, revision));
        let old_enough = |(at, _): &(Instant, i64)| now.duration_since(*at) >= period;
        let newest_old = self.0.iter().rposition(old_enough)?;
        let (_, target) = self.0[newest_old];
        self.0.drain(..newest_old);
        Some(target)
    }
}

/// Runs the compactor until `stop` completes. Only the leader proposes; a member that stops
/// leading forgets its samples (the next leader has its own).
pub async fn run(api: Arc<Api>, policy: AutoCompaction, stop: impl std::future::Future<Output = ()>) {
    if policy == AutoCompaction::Off {
        return;
    }
    tracing::info!(?policy, "auto-compaction on");
    tokio::pin!(stop);
    let mut samples = Samples::default();
    let mut ticks = tokio::time::interval(policy.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            now = ticks.tick() => {
                let leads = api.node().with_metrics(|m| m.state.is_leader());
                if !leads {
                    samples = Samples::default();
                    continue;
                }
                let store = api.store();
                let current = store.current_revision();
                let target = match policy {
                    AutoCompaction::Off => None,
                    AutoCompaction::Periodic(period) => samples.record(now, current, period),
                    AutoCompaction::Revisions(kept) => Some(current - kept),
                };
                if let Some(target) = target.filter(|t| *t > store.compacted_revision().max(0)) {
                    compact(&api, target).await;
                }
            }
        }
    }
}

async fn compact(api: &Api, revision: i64) {
    let request = Request::Compaction(CompactionRequest {
        revision,
        physical: false,
    });
    match api.propose(request, 0).await {
        Ok(_) => tracing::info!(revision, "auto-compacted"),
        Err(err) => tracing::warn!(revision, error = %err, "auto-compaction failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcds() {
        let parse = AutoCompaction::parse;
        assert_eq!(parse("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(
            parse("periodic", "1"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(parse("revision", "1000"), Ok(AutoCompaction::Revisions(1000)));
        assert!(parse("revision", "1h").is_err());
        assert!(parse("revision", "-5").is_err());
        assert!(parse("weekly", "1").is_err());
        assert!(parse("periodic", "soon").is_err());
        assert_eq!(
            AutoCompaction::Periodic(Duration::from_secs(10 * 3600)).interval(),
            MAX_SAMPLE_INTERVAL
        );
        assert_eq!(
            AutoCompaction::Periodic(Duration::from_secs(10)).interval(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn periodic_mode_compacts_to_the_newest_revision_a_period_old() {
        let period = Duration::from_secs(10);
        let start = Instant::now();
        let mut samples = Samples::default();
        assert_eq!(
            samples.record(start, 5, period),
            None,
            "nothing is a period old yet"
        );
        assert_eq!(samples.record(start + Duration::from_secs(5), 9, period), None);
        assert_eq!(
            samples.record(start + Duration::from_secs(10), 20, period),
            Some(5)
        );
        assert_eq!(
            samples.record(start + Duration::from_secs(16), 30, period),
            Some(9)
        );
        assert_eq!(samples.0.len(), 3, "older samples are dropped");
    }
}

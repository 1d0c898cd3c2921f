//! The figures a run reports: per fault, how long it lasted and the longest time without a
//! successful write from its start to the next fault's; per kind, the worst of those.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::nemesis::{Injected, Kind};

/// A fault as it went.
pub struct Done {
    pub injected: Injected,
    /// From its start to its healing.
    pub healed_after: Duration,
}

/// Prints a line per fault and per kind; `successes` are the instants writes were
/// acknowledged (sorted), `load_end` when the load stopped.
pub fn print(done: &[Done], successes: &[Instant], load_end: Instant) {
    let mut by_kind: BTreeMap<Kind, (usize, Duration)> = BTreeMap::new();
    for (i, fault) in done.iter().enumerate() {
        let until = done.get(i + 1).map_or(load_end, |next| next.injected.started);
        let outage = longest_gap(successes, fault.injected.started, until);
        let entry = by_kind.entry(fault.injected.kind).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(outage);
        let injected = &fault.injected;
        println!(
            "  fault {:?} {}on {:?}: healed after {:?}; longest time without a successful write {outage:?}",
            injected.kind,
            if injected.detail.is_empty() {
                String::new()
            } else {
                format!("{} ", injected.detail)
            },
            injected.targets,
            fault.healed_after,
        );
    }
    for (kind, (count, worst)) in &by_kind {
        println!("  {kind:?}: {count} injected, longest time without a successful write {worst:?}");
    }
}

/// The longest stretch of `[from, until)` without an instant of `sorted`.
fn longest_gap(sorted: &[Instant], from: Instant, until: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    let mut previous = from;
    for &at in sorted.iter().filter(|&&at| at > from && at < until) {
        longest = longest.max(at - previous);
        previous = at;
    }
    longest.max(until.saturating_duration_since(previous))
}

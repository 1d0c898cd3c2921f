//! Test-only crash points, like etcd's gofail failpoints: a named place in the server that
//! fails when the `CONCORD_FAILPOINTS` environment variable arms it. Only debug builds read the
//! variable; in release builds [`hit`] is an empty inline function.
//!
//! `CONCORD_FAILPOINTS` is a comma-separated list of `name[=action][@N]`: the failpoint `name`
//! fires at its `N`th hit (the first without `@N`). The action `panic` (the default) panics
//! there; `abort` ends the process at once, as `kill -9` would: nothing is unwound or flushed.
//!
//! Places:
//! - `apply`: the state machine, before it applies a client's command;
//! - `wal-before-write`, `wal-before-sync`, `wal-after-sync`: the WAL thread, before a batch's
//!   write, between the write and its fdatasync, and after the fdatasync but before anyone is
//!   told the batch is durable.

/// Fires the failpoint `name` if it is armed and this is the hit it waits for (debug builds
/// only).
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<armed::Armed>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("CONCORD_FAILPOINTS")
            .map(|v| armed::parse(&v))
            .unwrap_or_default()
    });
    for point in armed.iter().filter(|a| a.name == name) {
        point.hit();
    }
}

/// Does nothing: failpoints are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}

#[cfg(debug_assertions)]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// One armed failpoint.
    #[derive(Debug)]
    pub struct Armed {
        pub name: String,
        abort: bool,
        /// The hit (1-based) it fires at.
        at: u64,
        hits: AtomicU64,
    }

    impl Armed {
        /// Counts a hit; fires on the one it waits for.
        pub fn hit(&self) {
            if self.hits.fetch_add(1, Ordering::SeqCst) + 1 != self.at {
                return;
            }
            if self.abort {
                eprintln!("failpoint {} hit {}: aborting", self.name, self.at);
                std::process::abort();
            }
            panic!("failpoint {} hit", self.name);
        }
    }

    /// Parses `CONCORD_FAILPOINTS`; a malformed entry panics (only tests set it).
    pub fn parse(spec: &str) -> Vec<Armed> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let (point, at) = match entry.split_once('@') {
                    Some((point, n)) => (
                        point,
                        n.parse()
                            .unwrap_or_else(|_| panic!("bad failpoint hit in {entry}")),
                    ),
                    None => (entry, 1),
                };
                let (name, action) = point.split_once('=').unwrap_or((point, "panic"));
                let abort = match action {
                    "abort" => true,
                    "panic" => false,
                    _ => panic!("bad failpoint action in {entry}"),
                };
                assert!(!name.is_empty(), "failpoint without a name: {entry}");
                Armed {
                    name: name.to_string(),
                    abort,
                    at,
                    hits: AtomicU64::new(0),
                }
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn entries_name_an_action_and_a_hit() {
            let armed = parse("apply, wal-after-sync=abort@37,wal-before-write=panic@2");
            let got: Vec<_> = armed.iter().map(|a| (a.name.as_str(), a.abort, a.at)).collect();
            assert_eq!(
                got,
                [
                    ("apply", false, 1),
                    ("wal-after-sync", true, 37),
                    ("wal-before-write", false, 2)
                ]
            );
        }

        #[test]
        fn a_failpoint_fires_at_its_hit_only() {
            let armed = parse("x@3");
            armed[0].hit();
            armed[0].hit();
            let third = std::panic::catch_unwind(|| armed[0].hit());
            assert!(third.is_err());
            armed[0].hit(); // past it: nothing
        }
    }
}

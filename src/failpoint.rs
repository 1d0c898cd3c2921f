//! Test-only crash points, like etcd's gofail failpoints: a named place in the server that
//! fails when a test arms it. Only debug builds look; in release builds [`hit`] is an empty
//! inline function.
//!
//! Two ways to arm them:
//! - `CONCORD_FAILPOINTS`, read once at start: a comma-separated list of `name[=action][@N]`;
//! - `CONCORD_FAILPOINT_FILE`, a file the member reads again at most every 20 ms, so a test can
//!   arm points in a running cluster: one `PEER_URL name[=action][@N]` a line, each armed only
//!   on the member whose advertised peer URL it names (see [`init`]). Hits are counted from the
//!   moment a line appears; a line that goes away disarms its point.
//!
//! The failpoint `name` fires at its `N`th hit (the first without `@N`). The action `panic`
//! (the default) panics there; `abort` ends the process at once, as `kill -9` would: nothing is
//! unwound or flushed; `error` makes the operation there fail, from its `N`th hit on, as a
//! failing disk would (only at the places that ask [`fails`]).
//!
//! Places:
//! - `apply`: the state machine, before it applies a client's command;
//! - `apply-after`: the state machine, after a batch is committed to the database but before
//!   its answers and watch events go out;
//! - `wal-before-write`, `wal-before-sync`, `wal-after-sync`: the WAL thread, before a batch's
//!   write, between the write and its fdatasync, and after the fdatasync but before anyone is
//!   told the batch is durable;
//! - `wal-sync` (with `error`): the WAL's fdatasync fails;
//! - `snapshot-build`: a snapshot's copy is made but not yet renamed into place;
//! - `snapshot-send`: the leader has handed a chunk of a snapshot to the stream to a follower;
//! - `snapshot-install`: a follower is installing a received snapshot: its contents are in
//!   the open write transaction, not committed;
//! - `compaction`: a compaction has removed history rows, before its batch commits;
//! - `defrag`: the defragmented copy has been renamed over the database, before the directory
//!   is synced and the store switches to it.

/// Fires the failpoint `name` if it is armed and this is the hit it waits for (debug builds
/// only).
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    fails(name);
}

/// [`hit`] at a place that can fail: true when the operation there must fail (the point is
/// armed with `error` and reached its hit). Always false in release builds.
#[cfg(debug_assertions)]
pub fn fails(name: &str) -> bool {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<armed::Armed>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("CONCORD_FAILPOINTS")
            .map(|v| armed::parse(&v))
            .unwrap_or_default()
    });
    let mut failing = false;
    for point in armed.iter().filter(|a| a.name == name) {
        failing |= point.hit();
    }
    failing | file::hit(name)
}

/// Never fails: failpoints are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fails(_name: &str) -> bool {
    false
}

/// Records this member's advertised peer URL: the lines of `CONCORD_FAILPOINT_FILE` that name
/// it are armed here.
#[cfg(debug_assertions)]
pub fn init(own_peer_url: &str) {
    file::init(own_peer_url);
}

/// Records nothing: failpoints are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn init(_own_peer_url: &str) {}

#[cfg(debug_assertions)]
pub(crate) mod control_file;

/// The points armed through `CONCORD_FAILPOINT_FILE`.
#[cfg(debug_assertions)]
mod file {
    use super::armed::{self, Armed};
    use super::control_file::ControlFile;

    static FILE: ControlFile<Vec<Armed>> = ControlFile::new("CONCORD_FAILPOINT_FILE", |text, own| {
        own.map(|own| armed::parse(&specs_for(text, own)))
            .unwrap_or_default()
    });

    pub fn init(own_peer_url: &str) {
        FILE.init(own_peer_url);
    }

    /// The specs of `text` for the member at `own`.
    pub fn specs_for(text: &str, own: &str) -> String {
        text.lines()
            .filter_map(|line| {
                let (url, spec) = line.trim().split_once(char::is_whitespace)?;
                (url == own).then(|| spec.trim().to_string())
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn hit(name: &str) -> bool {
        let Some(mut current) = FILE.current() else {
            return false;
        };
        let mut failing = false;
        for point in current.parsed().iter().filter(|a| a.name == name) {
            failing |= point.hit();
        }
        failing
    }
}

/// Does nothing: failpoints are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}

#[cfg(debug_assertions)]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// What an armed failpoint does when it fires.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Action {
        Panic,
        Abort,
        /// The operation fails, from the hit on.
        Error,
    }

    /// One armed failpoint.
    #[derive(Debug)]
    pub struct Armed {
        pub name: String,
        pub action: Action,
        /// The hit (1-based) it fires at.
        pub at: u64,
        hits: AtomicU64,
    }

    impl Armed {
        /// Counts a hit; fires on the one it waits for. True when the operation must fail.
        pub fn hit(&self) -> bool {
            let hit = self.hits.fetch_add(1, Ordering::SeqCst) + 1;
            match self.action {
                Action::Error => {
                    if hit == self.at {
                        eprintln!("failpoint {} hit {}: failing", self.name, self.at);
                    }
                    hit >= self.at
                }
                _ if hit != self.at => false,
                Action::Abort => {
                    eprintln!("failpoint {} hit {}: aborting", self.name, self.at);
                    std::process::abort();
                }
                Action::Panic => panic!("failpoint {} hit", self.name),
            }
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
                let action = match action {
                    "abort" => Action::Abort,
                    "panic" => Action::Panic,
                    "error" => Action::Error,
                    _ => panic!("bad failpoint action in {entry}"),
                };
                assert!(!name.is_empty(), "failpoint without a name: {entry}");
                Armed {
                    name: name.to_string(),
                    action,
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
            let armed = parse("apply, wal-after-sync=abort@37,wal-before-write=panic@2,wal-sync=error@5");
            let got: Vec<_> = armed.iter().map(|a| (a.name.as_str(), a.action, a.at)).collect();
            assert_eq!(
                got,
                [
                    ("apply", Action::Panic, 1),
                    ("wal-after-sync", Action::Abort, 37),
                    ("wal-before-write", Action::Panic, 2),
                    ("wal-sync", Action::Error, 5)
                ]
            );
        }

        #[test]
        fn the_file_arms_only_the_lines_naming_this_member() {
            let text = "http://a:1 apply=abort@3\nhttp://b:2 wal-after-sync\n\nhttp://a:1  defrag=abort\n";
            assert_eq!(
                super::super::file::specs_for(text, "http://a:1"),
                "apply=abort@3,defrag=abort"
            );
            assert_eq!(super::super::file::specs_for(text, "http://c:3"), "");
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

        #[test]
        fn an_error_fails_from_its_hit_on() {
            let armed = parse("x=error@2");
            let fates: Vec<bool> = (0..4).map(|_| armed[0].hit()).collect();
            assert_eq!(fates, [false, true, true, true]);
        }
    }
}

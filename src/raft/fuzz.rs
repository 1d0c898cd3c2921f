//! Property tests over everything a member decodes from outside (issue 11): client requests,
//! peer messages, WAL records and snapshots. Whatever the input, it is refused with an error, or
//! applied and then replayable after a restart; nothing panics.
//!
//! # Layout
//! - [`strategies`]: hostile commands of every kind, log entries, mutations of valid encodings;
//! - [`apply`]: commands in the log, applied as the state machine does and replayed after a
//!   restart (on a store and a lessor on one redb file, like a member's), and snapshots;
//! - [`decode`]: log entries, peer messages and client requests, from their bytes;
//! - [`wal`]: WAL segments damaged on disk, then opened again.
//!
//! Case counts are kept small so that the module runs in seconds in a debug build, in CI with the
//! other unit tests; set `PROPTEST_CASES` for a longer run. Failing inputs are not persisted (no
//! `proptest-regressions` files in the tree): proptest prints the shrunk input instead, and a
//! bug found is pinned by a plain test of that input. A property that finds a bug not yet fixed
//! is `#[ignore]`d with the bug named; `cargo test raft::fuzz -- --ignored` runs them.

mod apply;
mod decode;
mod strategies;
mod wal;

use proptest::test_runner::Config as ProptestConfig;

use super::Command;
use super::admission::{Admission, Origin};
use crate::config::Config;

/// `cases` cases, unless `PROPTEST_CASES` asks for another number; nothing written to the
/// checkout.
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        failure_persistence: None,
        ..base
    }
}

fn admission() -> Admission {
    Admission::new(&Config::default())
}

fn admitted(command: &Command) -> bool {
    admission().check(&command.0, Origin::Peer).is_ok()
}

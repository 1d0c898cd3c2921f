//! Test-only crash points, like etcd's gofail failpoints: a named place in the server that
//! panics when the `CONCORD_FAILPOINTS` environment variable (comma-separated names) arms it.
//! Only debug builds read the variable; in release builds [`hit`] is an empty inline function.
//!
//! Places: `apply` (the state machine, before it applies a client's command).

/// Panics if the failpoint `name` is armed (debug builds only).
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("CONCORD_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|a| a == name) {
        panic!("failpoint {name} hit");
    }
}

/// Does nothing: failpoints are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}

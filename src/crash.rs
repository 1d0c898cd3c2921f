//! What a member does when it cannot go on: say why in one log line and end the process, so
//! that a supervisor restarts it, instead of staying up and serving nothing.
//!
//! A panic anywhere in the server (the Raft core, the state machine, the WAL thread, a request
//! handler) may leave shared state half-changed, locks poisoned and tasks waiting for answers
//! that never come: the member would look alive and answer every request with an error. etcd
//! (Go) dies on a panic; so does Concord, through [`exit_on_panic`]. Raft stopping on its own
//! (a storage failure) ends the process the same way ([`exit`]); see `crate::raft::watchdog`.

use std::panic;

/// The exit status of a member that stopped because it could not go on (a panic's, as Rust's
/// default).
pub const EXIT_STATUS: i32 = 101;

/// Makes every panic end the process after logging it (message, place, thread) as an error.
/// Called once by the `concord` binary; the library never installs it on its own, so tests
/// and embedders keep the default behaviour.
pub fn exit_on_panic() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let place = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            at = %place,
            "panicked: {message}; stopping this member"
        );
        default_hook(info);
        std::process::exit(EXIT_STATUS);
    }));
}

/// Ends the process after logging `reason` as an error.
pub fn exit(reason: &str) -> ! {
    tracing::error!("{reason}; stopping this member");
    std::process::exit(EXIT_STATUS)
}

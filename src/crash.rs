//! What a member does when it cannot go on: say why in one log line and end the process, so
//! that a supervisor restarts it, instead of staying up and serving nothing.
//!
//! A panic anywhere in the server (the Raft core, the state machine, the WAL thread, a request
//! handler) may leave shared state half-changed, locks poisoned and tasks waiting for answers
//! that never come: the member would look alive and answer every request with an error. etcd
//! (Go) dies on a panic; so does Concord, through [`exit_on_panic`]. Raft stopping on its own
//! (a storage failure) ends the process the same way ([`exit`]); see `crate::raft::watchdog`.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

/// The exit status of a member that stopped because it could not go on (a panic's, as Rust's
/// default).
pub const EXIT_STATUS: i32 = 101;

thread_local! {
    /// Set while this thread runs [`contain`]: a panic there is an error, not the end.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Makes every panic end the process after logging it (message, place, thread) as an error,
/// except inside [`contain`]. Called once by the `concord` binary; the library never installs
/// it on its own, so tests and embedders keep the default behaviour.
pub fn exit_on_panic() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if CONTAINED.get() {
            return; // `contain` returns it as an error
        }
        let thread = std::thread::current();
        let place = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let message = message(info.payload());
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

/// Runs `f`, turning a panic inside it into an error instead of the end of the process. This
/// is for third-party code that reads bytes from outside and may panic on bad ones (redb
/// opening a snapshot another member sent): the bytes are refused, the member goes on. `what`
/// names the work in the error.
pub fn contain<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = CONTAINED.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.set(outer);
    result.map_err(|payload| format!("{what} panicked: {}", message(payload.as_ref())))
}

/// A panic's message.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error() {
        let caught = contain("reading", || -> u8 { panic!("bad bytes") });
        assert_eq!(caught, Err("reading panicked: bad bytes".to_string()));
        assert_eq!(contain("reading", || 7), Ok(7));
        assert!(!CONTAINED.get(), "the thread is no longer contained");
    }
}

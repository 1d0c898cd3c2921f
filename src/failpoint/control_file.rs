//! A test-only control file: named by an environment variable, read again at most every
//! [`RELOAD_EVERY`], and parsed for this member, which knows itself by its advertised peer URL
//! once [`ControlFile::init`] has said it. The failpoint file and the peer fault file
//! (`crate::raft::network::faults`) are two of them. Debug builds only.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How often a member looks at a control file again.
pub const RELOAD_EVERY: Duration = Duration::from_millis(20);

/// A control file whose contents parse to a `T`; kept in a `static`.
pub struct ControlFile<T> {
    /// The environment variable that names the file.
    var: &'static str,
    /// Parses the file's text for the member at the given peer URL (`None`: not known yet).
    parse: fn(&str, Option<&str>) -> T,
    state: OnceLock<Option<Mutex<State<T>>>>,
}

struct State<T> {
    path: PathBuf,
    own: Option<String>,
    /// The text and the peer URL of the last parse: the file is parsed again only when one of
    /// them changes, so what `T` counts (a failpoint's hits) lasts while the line stays.
    parsed_from: Option<(String, Option<String>)>,
    parsed: T,
    read_at: Option<Instant>,
}

/// A control file's parse, locked for a moment, and this member's peer URL.
pub struct Current<'a, T> {
    state: MutexGuard<'a, State<T>>,
}

impl<T> Current<'_, T> {
    /// What the file says.
    pub fn parsed(&mut self) -> &mut T {
        &mut self.state.parsed
    }

    /// This member's advertised peer URL, once known.
    pub fn own(&self) -> Option<&str> {
        self.state.own.as_deref()
    }
}

impl<T: Default> ControlFile<T> {
    /// The file named by `var`, parsed with `parse`.
    pub const fn new(var: &'static str, parse: fn(&str, Option<&str>) -> T) -> Self {
        ControlFile {
            var,
            parse,
            state: OnceLock::new(),
        }
    }

    fn state(&self) -> Option<&Mutex<State<T>>> {
        self.state
            .get_or_init(|| {
                let path = std::env::var_os(self.var)?;
                Some(Mutex::new(State {
                    path: path.into(),
                    own: None,
                    parsed_from: None,
                    parsed: T::default(),
                    read_at: None,
                }))
            })
            .as_ref()
    }

    /// Records this member's advertised peer URL.
    pub fn init(&self, own_peer_url: &str) {
        if let Some(state) = self.state() {
            state.lock().unwrap_or_else(|p| p.into_inner()).own = Some(own_peer_url.to_string());
        }
    }

    /// The file's parse as it is now (read again if it is due); `None` when the variable is
    /// not set.
    pub fn current(&self) -> Option<Current<'_, T>> {
        let mut state = self.state()?.lock().unwrap_or_else(|p| p.into_inner());
        if state.read_at.is_none_or(|at| at.elapsed() >= RELOAD_EVERY) {
            state.read_at = Some(Instant::now());
            let text = std::fs::read_to_string(&state.path).unwrap_or_default();
            let from = (text, state.own.clone());
            if state.parsed_from.as_ref() != Some(&from) {
                state.parsed = (self.parse)(&from.0, from.1.as_deref());
                state.parsed_from = Some(from);
            }
        }
        Some(Current { state })
    }
}

//! Wall-clock jumps of members, through libfaketime (`apt-get install libfaketime`, which
//! `scripts/install-deps.sh` does): every member runs with it preloaded and reads its own offset
//! file (`clock-m0`, ...) at most once a second. Its monotonic clock is left alone, as a real
//! step of the wall clock (NTP, an operator's `date -s`) leaves it.

use std::path::{Path, PathBuf};

/// libfaketime's library, if it is installed.
pub fn library() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("faketime").join("libfaketime.so.1"))
        .find(|path| path.exists())
}

/// The members' wall-clock offsets.
pub struct Clocks {
    dir: PathBuf,
    library: PathBuf,
}

impl Clocks {
    /// Offsets kept in `dir`, every member's 0 until [`Clocks::set`]; `None` without
    /// libfaketime.
    pub fn new(dir: &Path, names: impl IntoIterator<Item = String>) -> Option<Clocks> {
        let clocks = Clocks {
            dir: dir.to_path_buf(),
            library: library()?,
        };
        for name in names {
            clocks.set(&name, 0);
        }
        Some(clocks)
    }

    /// The environment that makes a member follow its offset file (`{name}`: the harness puts
    /// the member's name there).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.dir.join("clock-{name}").display().to_string(),
            ),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// Sets member `name`'s wall clock `offset_secs` away from the real one.
    pub fn set(&self, name: &str, offset_secs: i64) {
        let file = self.dir.join(format!("clock-{name}"));
        let next = file.with_extension("next");
        std::fs::write(&next, format!("{offset_secs:+}\n")).expect("write a clock offset");
        std::fs::rename(&next, &file).expect("replace a clock offset");
    }
}

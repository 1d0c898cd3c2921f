//! Making file-system changes durable: directory fsync and atomic whole-file replacement.
//!
//! A file's fsync covers its contents, not its name: creating, renaming or removing a directory
//! entry is durable only once the directory itself is fsynced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// fsyncs the directory `dir`, making the creation, renaming or removal of its entries durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, "fsync of directory", dir))
}

/// Replaces `path` with `bytes` atomically and durably: the bytes go to a temp file beside it,
/// which is fsynced, renamed over `path`, and then the directory is fsynced. A crash leaves
/// either the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let write = || -> io::Result<()> {
        let mut file = File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| with_path(e, "write", tmp))?;
    fs::rename(tmp, path).map_err(|e| with_path(e, "rename to", path))?;
    sync_dir(dir)
}

/// Adds what was being done, and to which path, to an I/O error's message (keeping its kind).
pub fn with_path(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("identity.json")]);
    }
}

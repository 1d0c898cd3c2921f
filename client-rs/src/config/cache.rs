//! The last-good-config cache file: one JSON document holding the last applied version and a
//! checksum over it, written atomically (a temporary file renamed over the old one), so a
//! half-written or edited file is noticed and ignored rather than trusted.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the cache holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cached {
    pub(crate) namespace: String,
    pub(crate) key: String,
    pub(crate) version: u64,
    pub(crate) revision: i64,
    pub(crate) format: String,
    pub(crate) value: String,
}

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(flatten)]
    cached: Cached,
    /// FNV-1a (64 bits, hex) of the cached fields as JSON.
    checksum: String,
}

/// Writes `cached` to `path`, atomically.
pub(crate) fn store(path: &Path, cached: &Cached) -> std::io::Result<()> {
    let file = File {
        cached: cached.clone(),
        checksum: checksum(cached)?,
    };
    let bytes = serde_json::to_vec_pretty(&file)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// The cache at `path` if it exists, is intact, and is of `namespace`/`key`.
pub(crate) fn load(path: &Path, namespace: &str, key: &str) -> Option<Cached> {
    let bytes = std::fs::read(path).ok()?;
    let file: File = match serde_json::from_slice(&bytes) {
        Ok(file) => file,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "ignoring an unreadable config cache");
            return None;
        }
    };
    if checksum(&file.cached).ok()? != file.checksum {
        tracing::warn!(path = %path.display(), "ignoring a config cache whose checksum does not match");
        return None;
    }
    (file.cached.namespace == namespace && file.cached.key == key).then_some(file.cached)
}

fn checksum(cached: &Cached) -> std::io::Result<String> {
    let bytes = serde_json::to_vec(cached)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("{hash:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_cache_loads_and_a_damaged_or_foreign_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.json");
        let cached = Cached {
            namespace: "app".into(),
            key: "limits".into(),
            version: 3,
            revision: 42,
            format: "json".into(),
            value: r#"{"max": 7}"#.into(),
        };
        store(&path, &cached).unwrap();
        assert_eq!(load(&path, "app", "limits"), Some(cached));
        assert_eq!(load(&path, "app", "other"), None);

        let edited = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\\\"max\\\": 7", "\\\"max\\\": 8");
        std::fs::write(&path, edited).unwrap();
        assert_eq!(load(&path, "app", "limits"), None);
        std::fs::write(&path, "{ half").unwrap();
        assert_eq!(load(&path, "app", "limits"), None);
        assert_eq!(load(&dir.path().join("missing"), "app", "limits"), None);
    }
}

//! `concord snapshot status`: what a backup holds, as `etcdutl snapshot status` prints it.

use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTableMetadata};
use serde::Serialize;

use super::file::{self, BackupError};
use crate::mvcc::MvccStore;
use crate::mvcc::history::HISTORY;

/// A backup's summary (etcd's `snapshot.Status`; the JSON names are etcd's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The hash of the history up to `revision`: what `HashKV` answered on the member at that
    /// revision, so a backup can be matched to the cluster it came from.
    pub hash: u32,
    /// The newest revision the backup holds.
    pub revision: i64,
    /// How many key revisions (history rows) it holds.
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    /// Size of its database in bytes (the checksum not counted).
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Checks `path` and describes it. The database is read from a scratch copy, so the file is
/// never changed.
pub fn status(path: &Path, skip_hash_check: bool) -> Result<Status, BackupError> {
    let db_len = file::verify(path, skip_hash_check)?;
    let scratch = tempfile::tempdir().map_err(BackupError::io(path))?;
    let copy = scratch.path().join("db");
    file::extract(path, db_len, &copy)?;
    let db = Arc::new(file::open_checked(&copy)?);
    let not_a_snapshot = |e: String| BackupError::NotASnapshot(path.to_path_buf(), e);
    let rows = {
        let read = db.begin_read().map_err(|e| not_a_snapshot(e.to_string()))?;
        let history = read
            .open_table(HISTORY)
            .map_err(|e| not_a_snapshot(e.to_string()))?;
        history.len().map_err(|e| not_a_snapshot(e.to_string()))?
    };
    let store = MvccStore::open(db).map_err(|e| not_a_snapshot(e.to_string()))?;
    let hashed = store.hash_kv(0).map_err(|e| not_a_snapshot(e.to_string()))?;
    Ok(Status {
        hash: hashed.hash,
        revision: hashed.revision,
        total_key: rows,
        total_size: db_len,
    })
}

/// `bytes` as etcd prints sizes (`humanize.Bytes`: SI units, e.g. `2.1 MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = bytes as f64 / 1000f64.powi(exponent as i32);
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

impl Status {
    /// The status in `format`: `simple` (etcd's default: `hash, revision, keys, size`),
    /// `json` or `table`.
    pub fn render(&self, format: &str) -> Result<String, BackupError> {
        let hash = format!("{:x}", self.hash);
        let size = human_size(self.total_size);
        match format {
            "simple" => Ok(format!("{hash}, {}, {}, {size}", self.revision, self.total_key)),
            "json" => serde_json::to_string(self).map_err(|e| BackupError::Flags(e.to_string())),
            "table" => Ok(table(
                &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                &[hash, self.revision.to_string(), self.total_key.to_string(), size],
            )),
            other => Err(BackupError::Flags(format!(
                "unknown output format {other:?} (expected simple, json or table)"
            ))),
        }
    }
}

/// A one-row table framed as etcdctl frames them.
fn table(headers: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(row)
        .map(|(h, v)| h.len().max(v.len()) + 2)
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(*w)))
        .collect::<String>()
        + "+";
    let centered = |cells: Vec<String>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("|{c:^w$}"))
            .collect::<String>()
            + "|"
    };
    let header = centered(headers.iter().map(|h| (*h).to_string()).collect());
    let values = centered(row.to_vec());
    format!("{rule}\n{header}\n{rule}\n{values}\n{rule}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcds() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(2_150_400), "2.2 MB");
        assert_eq!(human_size(20_480), "20 kB");
    }

    #[test]
    fn statuses_render_in_every_format() {
        let status = Status {
            hash: 0xfe01cf57,
            revision: 10,
            total_key: 7,
            total_size: 20_480,
        };
        assert_eq!(status.render("simple").unwrap(), "fe01cf57, 10, 7, 20 kB");
        assert_eq!(
            status.render("json").unwrap(),
            r#"{"hash":4261531479,"revision":10,"totalKey":7,"totalSize":20480}"#
        );
        let table = status.render("table").unwrap();
        assert!(table.contains("| fe01cf57 |"), "{table}");
        assert!(status.render("yaml").is_err());
    }
}

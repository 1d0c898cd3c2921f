//! The `process_*` family, read from `/proc/self` when scraped (Linux; elsewhere they stay 0).

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Metrics;

/// When this process started (close enough: when metrics were first touched).
static STARTED: LazyLock<f64> = LazyLock::new(|| {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
});

/// Clock ticks per second of `/proc/self/stat` (Linux's USER_HZ is 100 everywhere it runs).
const TICKS_PER_SECOND: f64 = 100.0;
/// Page size of `/proc/self/stat`'s resident set count.
const PAGE_BYTES: i64 = 4096;

/// Reads the process's CPU time, memory and file descriptors into `metrics`.
pub fn refresh(metrics: &Metrics) {
    metrics.process_start_time.set(*STARTED);
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15, vsize 23, rss 24 (proc(5), counting from 1).
        metrics
            .process_cpu_seconds
            .set((field(14) + field(15)) as f64 / TICKS_PER_SECOND);
        metrics.process_virtual_memory.set(field(23));
        metrics.process_resident_memory.set(field(24) * PAGE_BYTES);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics.process_open_fds.set(fds.count() as i64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(line) = limits.lines().find(|l| l.starts_with("Max open files"))
        && let Some(soft) = line.split_whitespace().nth(3).and_then(|v| v.parse::<i64>().ok())
    {
        metrics.process_max_fds.set(soft);
    }
}

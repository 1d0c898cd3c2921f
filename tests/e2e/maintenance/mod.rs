//! Maintenance end to end: backups, hashes, and what operators run every day.

mod alarms;
pub mod backup;
mod compaction;
mod corruption;
mod defrag;
mod hash;
mod observability;

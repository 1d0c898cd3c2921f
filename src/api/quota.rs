//! The backend quota (etcd's `quotaKVServer`): a write that adds data is refused with
//! `etcdserver: mvcc: database space exceeded` once the database would outgrow
//! `--quota-backend-bytes`, and the NOSPACE alarm is raised through Raft, so every member
//! refuses such writes until an operator makes room (compact, defragment) and disarms it.
//!
//! The file size is checked first (a `stat`, taken again for every write once the file is past
//! half the quota, and at most every 100 ms below that: a write path should not pay a system
//! call for a limit it is nowhere near). redb grows its file by doubling (up to 4 GiB at a
//! time), so a file past the quota may be half empty: only then are the bytes in use counted
//! (redb's page statistics, which take its writer lock for a moment), at most every few
//! seconds, and they decide.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::AlarmType;
use concord_proto::raftpb::AlarmChange;
use concord_proto::raftpb::command::Request;
use concord_proto::txn::{put_bytes, put_cost};

use super::Api;
use crate::error::Error;
use crate::mvcc::MvccError;

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Above this, etcd warns that the quota is too large for good performance: 8 GiB.
pub const MAX_QUOTA_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// What a lease grant costs in the quota (etcd's `leaseOverhead`).
const LEASE_OVERHEAD_BYTES: u64 = 64;

/// What `request` may add to the database, in etcd's accounting (0: it adds nothing).
pub fn cost(request: &Request) -> u64 {
    match request {
        Request::Put(put) => put_bytes(put.key.len(), put.value.len()),
        Request::Txn(txn) => put_cost(txn),
        Request::LeaseGrant(_) => LEASE_OVERHEAD_BYTES,
        _ => 0,
    }
}

/// How long a count of the bytes in use is trusted.
const IN_USE_FRESH: Duration = Duration::from_secs(5);

/// How long a file size under half the quota is trusted.
const FILE_SIZE_FRESH: Duration = Duration::from_millis(100);

/// The quota of one member, and whether it is already raising the alarm.
#[derive(Debug)]
pub struct Quota {
    /// The largest the database may grow; `None`: no quota.
    limit: Option<u64>,
    raising: AtomicBool,
    /// The last count of bytes in use, and when it was taken.
    in_use: Mutex<Option<(Instant, u64)>>,
    /// The file size last read, and when (milliseconds after `created`; 0: never).
    file_size: AtomicU64,
    file_size_at: AtomicU64,
    created: Instant,
}

impl Quota {
    /// etcd's rule for `--quota-backend-bytes`: 0 is the default (2 GiB), negative is no quota.
    pub fn from_flag(bytes: i64) -> Self {
        let limit = match bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            b if b < 0 => None,
            b => Some(b as u64),
        };
        if limit.is_some_and(|l| l > MAX_QUOTA_BYTES) {
            tracing::warn!(
                quota = bytes,
                max = MAX_QUOTA_BYTES,
                "--quota-backend-bytes exceeds the maximum recommended size"
            );
        }
        Quota {
            limit,
            raising: AtomicBool::new(false),
            in_use: Mutex::new(None),
            file_size: AtomicU64::new(0),
            file_size_at: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// The quota in bytes (`None`: no quota).
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The file size read by `stat` if it may matter: a size under half of `limit` read less
    /// than [`FILE_SIZE_FRESH`] ago is reused.
    fn file_size(&self, limit: u64, stat: impl FnOnce() -> u64) -> u64 {
        let now = self.created.elapsed().as_millis() as u64 + 1;
        let (size, at) = (
            self.file_size.load(Ordering::Relaxed),
            self.file_size_at.load(Ordering::Relaxed),
        );
        if at != 0 && size < limit / 2 && now.saturating_sub(at) < FILE_SIZE_FRESH.as_millis() as u64 {
            return size;
        }
        let size = stat();
        self.file_size.store(size, Ordering::Relaxed);
        self.file_size_at.store(now, Ordering::Relaxed);
        size
    }
}

impl Api {
    /// Refuses `request` if it adds data while NOSPACE is raised, or would take the database
    /// past the quota; in that case it first raises NOSPACE (one writer at a time does), so
    /// the refusal is seen by every member before the client hears of it.
    pub(crate) async fn check_quota(&self, request: &Request) -> Result<(), Error> {
        let cost = cost(request);
        if cost == 0 {
            return Ok(());
        }
        if self.node().alarms.no_space() {
            return Err(MvccError::NoSpace.into());
        }
        let Some(limit) = self.quota().limit() else {
            return Ok(());
        };
        if self.quota().file_size(limit, || self.db_size()) + cost <= limit {
            return Ok(());
        }
        if self.db_in_use().await + cost <= limit {
            return Ok(());
        }
        self.raise_no_space().await;
        Err(MvccError::NoSpace.into())
    }

    /// Size of the database file in bytes.
    pub fn db_size(&self) -> u64 {
        std::fs::metadata(&self.node().db_path).map_or(0, |m| m.len())
    }

    /// The bytes of the database in use, as last counted (the file size if never counted).
    pub fn db_in_use_last(&self) -> u64 {
        let counted = self.quota().in_use.lock().ok().and_then(|c| *c);
        counted.map_or_else(|| self.db_size(), |(_, bytes)| bytes)
    }

    /// The bytes of the database in use: counted again if the last count is stale.
    async fn db_in_use(&self) -> u64 {
        if let Some((at, bytes)) = self.quota().in_use.lock().ok().and_then(|c| *c)
            && at.elapsed() < IN_USE_FRESH
        {
            return bytes;
        }
        let db = self.store().database();
        let counted = tokio::task::spawn_blocking(move || -> Result<u64, redb::Error> {
            let txn = db.begin_write()?;
            let stats = txn.stats()?;
            txn.abort()?;
            Ok(stats.allocated_pages() * stats.page_size() as u64)
        })
        .await;
        match counted {
            Ok(Ok(bytes)) => {
                if let Ok(mut cached) = self.quota().in_use.lock() {
                    *cached = Some((Instant::now(), bytes));
                }
                bytes
            }
            // Count the file then: refusing a write is better than outgrowing the quota.
            other => {
                tracing::warn!(error = ?other.map(|r| r.err()), "cannot count the database's bytes in use");
                self.db_size()
            }
        }
    }

    /// Proposes the NOSPACE alarm for this member, unless another writer already is.
    async fn raise_no_space(&self) {
        let raising = &self.quota().raising;
        if raising.swap(true, Ordering::AcqRel) {
            return;
        }
        let change = AlarmChange {
            member_id: self.node().identity.member_id,
            alarm: AlarmType::Nospace as i32,
            activate: true,
        };
        tracing::warn!(size = self.db_size(), quota = ?self.quota().limit(), "database space exceeded: raising NOSPACE");
        if let Err(err) = Box::pin(self.propose(Request::Alarm(change), 0)).await {
            tracing::warn!(error = %err, "cannot raise the NOSPACE alarm");
        }
        raising.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use concord_proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, PutRequest};

    use super::*;

    #[test]
    fn only_what_adds_data_costs() {
        let put = Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: vec![0; 10],
            ..Default::default()
        });
        assert_eq!(cost(&put), 11 + 256);
        assert_eq!(cost(&Request::LeaseGrant(LeaseGrantRequest::default())), 64);
        assert_eq!(cost(&Request::DeleteRange(DeleteRangeRequest::default())), 0);
        assert_eq!(Quota::from_flag(0).limit(), Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(Quota::from_flag(-1).limit(), None);
        assert_eq!(Quota::from_flag(4096).limit(), Some(4096));
    }

    #[test]
    fn the_file_is_read_again_near_the_quota_and_otherwise_now_and_then() {
        let mut quota = Quota::from_flag(1000);
        // A member up for a second, so that a read "long ago" can be set below.
        quota.created = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        let reads = std::cell::Cell::new(0);
        let stat = |size: u64| {
            reads.set(reads.get() + 1);
            size
        };
        assert_eq!(quota.file_size(1000, || stat(100)), 100);
        assert_eq!(
            quota.file_size(1000, || stat(900)),
            100,
            "far below: the last size"
        );
        assert_eq!(reads.get(), 1);
        quota.file_size_at.store(1, Ordering::Relaxed); // as if read a second ago
        assert_eq!(quota.file_size(1000, || stat(600)), 600, "stale: read again");
        assert_eq!(
            quota.file_size(1000, || stat(700)),
            700,
            "past half: read every time"
        );
        assert_eq!(reads.get(), 3);
    }
}

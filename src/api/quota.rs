//! The backend quota (etcd's `quotaKVServer`): a write that adds data is refused with
//! `etcdserver: mvcc: database space exceeded` once the database file would outgrow
//! `--quota-backend-bytes`, and the NOSPACE alarm is raised through Raft, so every member
//! refuses such writes until an operator makes room (compact, defragment) and disarms it.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// The quota of one member, and whether it is already raising the alarm.
#[derive(Debug)]
pub struct Quota {
    /// The largest the database may grow; `None`: no quota.
    limit: Option<u64>,
    raising: AtomicBool,
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
        }
    }

    /// The quota in bytes (`None`: no quota).
    pub fn limit(&self) -> Option<u64> {
        self.limit
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
        if self.db_size() + cost <= limit {
            return Ok(());
        }
        self.raise_no_space().await;
        Err(MvccError::NoSpace.into())
    }

    /// Size of the database file in bytes.
    pub fn db_size(&self) -> u64 {
        std::fs::metadata(&self.node().db_path).map_or(0, |m| m.len())
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
}

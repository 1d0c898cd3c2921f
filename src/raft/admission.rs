//! What a command must satisfy before it is proposed, wherever it enters: a client's request
//! at this member's edge (`crate::api`), or a follower's `Forward` to the leader
//! (`super::peer_service`). Apply trusts what passed: the log only ever holds commands that
//! every member can decode, replay and apply.

use concord_proto::etcdserverpb::TxnRequest;
use concord_proto::raftpb::command::Request;
use concord_proto::raftpb::{Command, LeaseCheckpoint};
use prost::Message;

use crate::config::Config;
use crate::error::Error;
use crate::lease::MAX_TTL_SECS;
use crate::mvcc::check::{self, TooManyOps};

/// The most checkpoints one command may carry: a keepalive proposes one, the leader's clock
/// at most `lease::expiry`'s batch (far below this).
const MAX_CHECKPOINTS: usize = 100_000;

/// Where a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client of this member (its request already decoded and size-checked by the edge).
    Client,
    /// A follower forwarding its client's write.
    Peer,
}

/// The request limits of this member (`--max-request-bytes`, `--max-txn-ops`).
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    max_request_bytes: usize,
    max_txn_ops: usize,
}

impl Admission {
    /// The limits `config` sets.
    pub fn new(config: &Config) -> Self {
        Self {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
        }
    }

    /// The most operations a txn may carry.
    pub fn max_txn_ops(&self) -> usize {
        self.max_txn_ops
    }

    /// Rejects requests larger than `--max-request-bytes`.
    pub fn check_size(&self, request: &impl Message) -> Result<(), Error> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        Ok(())
    }

    /// Checks a txn with etcd's rules (`checkTxnRequest` with `--max-txn-ops`, then
    /// `checkIntervals`), and Concord's nesting limit: the store's own checks, so a txn the
    /// store would refuse takes no Raft entry. A read-only txn, served without Raft, is checked
    /// with this too.
    pub fn check_txn(&self, txn: &TxnRequest) -> Result<(), Error> {
        self.check_size(txn)?;
        check::check_txn_limits(txn, self.max_txn_ops).map_err(|TooManyOps| Error::TooManyOps)?;
        check::check_txn_request(txn)?;
        Ok(())
    }

    /// Checks `command` with etcd's rules for the request it carries; see the module docs.
    pub fn check(&self, command: &Command, origin: Origin) -> Result<(), Error> {
        let Some(request) = &command.request else {
            return Err(Error::Rejected("empty command"));
        };
        match request {
            Request::Put(put) => {
                self.check_size(put)?;
                check::check_put_request(put)?;
            }
            Request::DeleteRange(delete) => {
                self.check_size(delete)?;
                check::check_delete_request(delete)?;
            }
            Request::Txn(txn) => self.check_txn(txn)?,
            Request::Compaction(compaction) => self.check_size(compaction)?,
            // The proposer picks the ID and raises the TTL to the minimum.
            Request::LeaseGrant(grant) => {
                if grant.id == 0 || grant.ttl < 1 {
                    return Err(Error::Rejected("lease grant without an ID or a positive TTL"));
                }
                if grant.ttl > MAX_TTL_SECS {
                    return Err(Error::LeaseTtlTooLarge);
                }
            }
            Request::LeaseRevoke(_) => {}
            Request::Auth(change) => self.check_size(change)?,
            Request::Alarm(_) => {}
            // A keepalive's record of a lease's full TTL (the leader's clock proposes its own
            // checkpoints without passing here).
            Request::LeaseCheckpoints(checkpoints) => {
                let valid =
                    |c: &LeaseCheckpoint| c.remaining_ms >= 1 && c.remaining_ms / 1000 <= MAX_TTL_SECS;
                if checkpoints.checkpoints.len() > MAX_CHECKPOINTS
                    || !checkpoints.checkpoints.iter().all(valid)
                {
                    return Err(Error::Rejected("malformed lease checkpoints"));
                }
            }
            // Only the leader's own clock expires leases.
            Request::LeaseExpiry(_) => return Err(Error::Rejected("lease expiry from outside the leader")),
        }
        if origin == Origin::Peer && command.encoded_len() > self.max_request_bytes + PEER_OVERHEAD_BYTES {
            return Err(Error::RequestTooLarge);
        }
        Ok(())
    }
}

/// What wrapping a request in a command adds to its size, at most.
const PEER_OVERHEAD_BYTES: usize = 64;

#[cfg(test)]
mod tests;

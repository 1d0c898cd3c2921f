//! The gRPC edge: one file per etcd service, each thin over [`Api`].
//!
//! A write is turned into a `Command`, checked (`crate::raft::admission`: size, txn ops, empty
//! keys) and proposed to Raft; a read waits for a read index (linearizable) or reads locally
//! (serializable). Whatever needs the leader goes through [`leader`]. Errors become
//! `tonic::Status` in exactly one place, `crate::error`.

pub mod access;
pub mod answer;
pub mod auth;
pub mod batched;
pub mod cluster;
pub mod config_center;
pub mod election;
pub mod health;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod local_kv;
pub mod lock;
pub mod maintenance;
pub mod metrics;
pub mod pubsub;
pub mod quota;
pub mod registry;
pub mod transport_errors;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use concord_proto::etcdserverpb::ResponseHeader;
use concord_proto::raftpb::command::Request;
use prost::Message;

use crate::config::Config;
use crate::error::Error;
use crate::member::Member;
use crate::mvcc::MvccStore;
use crate::raft::admission::Admission;

/// What every service needs: the Raft member, its store and the request limits.
pub struct Api {
    node: Member,
    admission: Admission,
    quota: quota::Quota,
    request_timeout: Duration,
    /// How recent a majority's acknowledgement must be for this leader to count as confirmed
    /// without a read index (see [`Api::confirm_leadership`]).
    quorum_fresh_for: Duration,
    /// The term in which this member started handing leadership over (0: none): voters may
    /// elect the transferee at once, so in that term leadership is confirmed by a read index.
    transfer_term: AtomicU64,
}

impl Api {
    /// Wraps a started Raft member.
    pub fn new(node: Member, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            node,
            admission: Admission::new(config),
            quota: quota::Quota::from_flag(config.quota_backend_bytes),
            // etcd: 5 s plus two election timeouts.
            request_timeout: Duration::from_secs(5) + 2 * config.election_timeout,
            quorum_fresh_for: config.election_timeout / 2,
            transfer_term: AtomicU64::new(0),
        })
    }

    /// The Raft member.
    pub fn node(&self) -> &Member {
        &self.node
    }

    /// The MVCC store.
    pub fn store(&self) -> &MvccStore {
        &self.node.store
    }

    /// A response header with this member's ids and the current term.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.node.identity.cluster_id,
            member_id: self.node.identity.member_id,
            revision,
            raft_term: self.node.current_term(),
        }
    }

    /// A response header at the store's current revision.
    pub fn current_header(&self) -> Option<ResponseHeader> {
        Some(self.header(self.store().current_revision()))
    }

    /// Fills the ids and term into a header the store produced (keeping its revision).
    pub fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.store().current_revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// Rejects requests larger than `--max-request-bytes`.
    pub fn check_size(&self, request: &impl Message) -> Result<(), Error> {
        self.admission.check_size(request)
    }

    /// The checks every write passes before it is proposed.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// [`MvccStore::hash_kv`] on a blocking thread (it reads the whole history).
    pub async fn hash_kv(self: &Arc<Self>, revision: i64) -> Result<crate::mvcc::KvHash, Error> {
        let api = self.clone();
        tokio::task::spawn_blocking(move || api.store().hash_kv(revision))
            .await
            .map_err(|e| Error::Raft(format!("hashing the store: {e}")))?
            .map_err(Error::from)
    }

    /// The backend quota.
    pub fn quota(&self) -> &quota::Quota {
        &self.quota
    }

    /// How long a request may wait for Raft.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Proposes `request` checked at `auth_revision` (see [`Api::propose`]) and returns its
    /// typed response with the header filled in.
    pub async fn answer<T: answer::Answer>(&self, request: Request, auth_revision: u64) -> Result<T, Error> {
        let response = self.propose(request, auth_revision).await?;
        let mut answer = T::from_response(response).ok_or_else(|| {
            Error::Raft(format!(
                "the state machine answered a {} with something else",
                T::REQUEST
            ))
        })?;
        self.fill_header(answer.header_mut());
        Ok(answer)
    }
}

//! The gRPC edge: one file per etcd service, each thin over [`Api`].
//!
//! A write is turned into a [`Command`], checked (`crate::raft::admission`: size, txn ops, empty
//! keys) and proposed to Raft; a read waits for a read index (linearizable) or reads locally (serializable). Errors
//! become `tonic::Status` in exactly one place, `crate::error`.

pub mod answer;
pub mod cluster;
pub mod election;
pub mod health;
pub mod kv;
pub mod lease;
pub mod local_kv;
pub mod lock;
pub mod maintenance;
pub mod metrics;
pub mod transport_errors;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::ResponseHeader;
use concord_proto::raftpb::{command::Request, command_response::Response};
use openraft::ReadPolicy;
use openraft::errors::ForwardToLeader;
use prost::Message;

use crate::config::Config;
use crate::error::Error;
use crate::member::Member;
use crate::mvcc::MvccStore;
use crate::raft::admission::{Admission, Origin};
use crate::raft::membership::{self, MembershipChange};
use crate::raft::peer_error::PeerError;
use crate::raft::{Command, CommandResult, MemberNode};

/// What every service needs: the Raft member, its store and the request limits.
pub struct Api {
    node: Member,
    admission: Admission,
    request_timeout: Duration,
}

impl Api {
    /// Wraps a started Raft member.
    pub fn new(node: Member, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            node,
            admission: Admission::new(config),
            // etcd: 5 s plus two election timeouts.
            request_timeout: Duration::from_secs(5) + 2 * config.election_timeout,
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
            raft_term: self.node.with_metrics(|m| m.current_term),
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

    /// How long a request may wait for Raft.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Checks a write with [`Admission`], proposes it through Raft and waits for it to be
    /// applied. On a follower the command is forwarded to the leader, which checks it again,
    /// proposes it and relays the answer (stock etcd clients do not follow redirects).
    pub async fn propose(&self, request: Request) -> Result<Response, Error> {
        let command = &Command::from(request);
        self.admission.check(&command.0, Origin::Client)?;
        let result = self
            .until_leader_answers(move || async move {
                let leader = match self.node.raft.client_write(command.clone()).await {
                    Ok(applied) => return Attempt::Done(Ok(applied.data)),
                    Err(err) => match Attempt::leader(err.forward_to_leader(), &err) {
                        Ok(leader) => leader,
                        Err(again_or_done) => return again_or_done,
                    },
                };
                match self.node.peers.forward(&leader, command).await {
                    Ok(result) => Attempt::Done(Ok(result)),
                    Err(err) => Attempt::after_peer_failure(err),
                }
            })
            .await?;
        match result {
            CommandResult::Applied(response) => response
                .response
                .ok_or_else(|| Error::Raft("state machine returned an empty response".into())),
            CommandResult::Rejected(err) => Err(err.into()),
            CommandResult::Empty => Err(Error::Raft("state machine returned no result".into())),
        }
    }

    /// Proposes `request` (see [`Api::propose`]) and returns its typed response with the
    /// header filled in.
    pub async fn answer<T: answer::Answer>(&self, request: Request) -> Result<T, Error> {
        let response = self.propose(request).await?;
        let mut answer = T::from_response(response).ok_or_else(|| {
            Error::Raft(format!(
                "the state machine answered a {} with something else",
                T::REQUEST
            ))
        })?;
        self.fill_header(answer.header_mut());
        Ok(answer)
    }

    /// Waits until this member may serve a linearizable read: on the leader, leadership
    /// confirmed by a read index and the state machine applied up to it; on a follower, the
    /// leader's read index, then the same wait for the local state machine.
    pub async fn linearizable_read(&self) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let raft = &self.node.raft;
        let index = self
            .until_leader_answers(move || async move {
                let leader = match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                    Ok(_) => return Attempt::Done(Ok(None)),
                    Err(err) => match Attempt::leader(err.forward_to_leader(), &err) {
                        Ok(leader) => leader,
                        Err(again_or_done) => return again_or_done,
                    },
                };
                match self.node.peers.read_index(&leader).await {
                    Ok(index) => Attempt::Done(Ok(Some(index))),
                    Err(err) => Attempt::after_peer_failure(err),
                }
            })
            .await?;
        let Some(index) = index else {
            return Ok(()); // the leader itself: ensure_linearizable waited for apply
        };
        let applied = raft
            .wait(Some(self.request_timeout.saturating_sub(started.elapsed())))
            .applied_index_at_least(Some(index), "linearizable read")
            .await;
        match applied {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(Error::Timeout),
            Err(err) => Err(Error::Raft(err.to_string())),
        }
    }

    /// Runs `attempt` until it is done, pausing between attempts that reached no leader,
    /// within the request timeout. A request that timed out while no leader was known fails
    /// with etcd's `no leader`, otherwise with `request timed out`.
    async fn until_leader_answers<T, F>(&self, mut attempt: impl FnMut() -> F) -> Result<T, Error>
    where
        F: Future<Output = Attempt<T>>,
    {
        let mut no_leader = false;
        let attempts = async {
            loop {
                match attempt().await {
                    Attempt::Done(result) => return result,
                    Attempt::Again { no_leader: none } => {
                        no_leader = none;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, attempts).await {
            Ok(result) => result,
            Err(_) if no_leader => Err(Error::NoLeader),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Runs a membership change on the leader (forwarding it there from a follower).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), Error> {
        let raft = &self.node.raft;
        let run = async {
            // Copy what is needed: `member` reads the metrics again, and nesting two reads
            // of the metrics channel could deadlock against Raft publishing new metrics.
            let (is_leader, leader_id) = self
                .node
                .with_metrics(|m| (m.state.is_leader(), m.current_leader));
            if is_leader {
                return membership::apply(raft, change).await;
            }
            let (leader, _) = leader_id
                .and_then(|id| membership::member(raft, id))
                .ok_or(Error::NoLeader)?;
            self.node
                .peers
                .change_membership(&leader, &change)
                .await
                .map_err(Error::from)
        };
        tokio::time::timeout(self.request_timeout, run)
            .await
            .map_err(|_| Error::Timeout)?
    }
}

/// What one attempt to have the leader do something came to.
enum Attempt<T> {
    /// Done, or failed for good.
    Done(Result<T, Error>),
    /// Nothing happened anywhere (the request was refused before it entered any log): try
    /// again after a pause. `no_leader`: because no leader is known at the moment.
    Again {
        /// No member is known to lead (an election is under way, or quorum is lost).
        no_leader: bool,
    },
}

impl<T> Attempt<T> {
    /// The leader to hand a request to, after Raft refused it here with `err`; otherwise what
    /// the attempt came to.
    fn leader(
        forward: Option<&ForwardToLeader<crate::raft::TypeConfig>>,
        err: &impl std::fmt::Display,
    ) -> Result<MemberNode, Self> {
        match forward {
            Some(ForwardToLeader {
                leader_node: Some(leader),
                ..
            }) => Ok(leader.clone()),
            Some(_) => Err(Attempt::Again { no_leader: true }),
            None => Err(Attempt::Done(Err(Error::Raft(err.to_string())))),
        }
    }

    /// What a request handed to the leader came to when it failed with `err`. A leader that
    /// could not be connected to never saw the request, and one that is no longer leader
    /// refused it before its log took it: both are safe to ask again.
    fn after_peer_failure(err: PeerError) -> Self {
        match err {
            PeerError::Unreachable(_) => Attempt::Again { no_leader: false },
            PeerError::NotLeader | PeerError::NoLeader => Attempt::Again { no_leader: true },
            err => Attempt::Done(Err(err.into())),
        }
    }
}

/// How long a member waits before asking again for a leader it could not reach.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

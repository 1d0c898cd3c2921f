//! etcd's `Lease` service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases.
//!
//! Grants and revokes go through Raft. Keepalives are answered by the leader's clock
//! ([`Lessor::renew`](crate::lease::Lessor::renew)) without a Raft round trip, except when the
//! lease's recorded remaining time must first be raised back to its full TTL (see
//! `crate::lease::lessor`). A follower relays keepalives, TimeToLive and Leases to the leader's
//! client API, as etcd does.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::lease_server::Lease;
use concord_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use concord_proto::raftpb::LeaseCheckpoints;
use concord_proto::raftpb::command::Request as Cmd;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::config::Config;
use crate::error::Error;
use crate::lease::{LeaseIdGenerator, MAX_TTL_SECS, Renewal, expiry, min_ttl_secs};
use crate::mvcc::MvccError;
use crate::raft::membership;

/// How many times a grant retries with a fresh server-chosen ID that turned out to be taken.
const GRANT_ATTEMPTS: usize = 3;
/// Keepalive answers buffered per stream.
const KEEPALIVE_BUFFER: usize = 16;

/// The Lease service over the shared [`Api`].
#[derive(Clone)]
pub struct LeaseService {
    api: Arc<Api>,
    ids: Arc<LeaseIdGenerator>,
    min_ttl: i64,
    /// How long a keepalive waits for this member's lease clock to start (after an election).
    promotion_wait: Duration,
}

impl LeaseService {
    /// A Lease service for `api`, with the minimum TTL derived from `config`'s Raft timing.
    pub fn new(api: Arc<Api>, config: &Config) -> Self {
        let ids = Arc::new(LeaseIdGenerator::new(api.node().identity.member_id));
        LeaseService {
            api,
            ids,
            min_ttl: min_ttl_secs(config.heartbeat_interval, config.election_timeout),
            promotion_wait: 3 * config.election_timeout,
        }
    }

    /// Where requests that need the leader's clock go: here, or the leader's client API.
    /// A leader that has just started may not have published its client URLs yet: this waits
    /// for them up to `promotion_wait`.
    async fn clock(&self) -> Result<Clock, Error> {
        let node = self.api.node();
        let (is_leader, leader) = node.with_metrics(|m| (m.state.is_leader(), m.current_leader));
        if is_leader {
            return Ok(Clock::Here);
        }
        let leader = leader.ok_or(Error::NoLeader)?;
        let published = |m: &openraft::RaftMetrics<crate::raft::TypeConfig>| {
            m.current_leader != Some(leader)
                || membership::members_in(m)
                    .iter()
                    .any(|(id, n, _)| *id == leader && !n.client_urls.is_empty())
        };
        let _ = node
            .raft
            .wait(Some(self.promotion_wait))
            .metrics(published, "the leader's client URLs")
            .await;
        let url = membership::member(&node.raft, leader)
            .and_then(|(member, _)| member.client_urls.first().cloned())
            .ok_or(Error::NoLeader)?;
        let channel = node.peers.channel(&url).map_err(Error::Raft)?;
        Ok(Clock::Leader(LeaseClient::new(channel)))
    }

    /// Waits until this member's lease clock runs for the term it leads.
    async fn await_clock(&self) -> Result<(), Error> {
        let node = self.api.node();
        let mut promoted = node.lessor.watch_promotion();
        let wait = async {
            loop {
                let term = *promoted.borrow_and_update();
                if term.is_some() && term == expiry::leader_term(&node.raft) {
                    return Ok(());
                }
                if promoted.changed().await.is_err() {
                    return Err(Error::Stopped);
                }
            }
        };
        match tokio::time::timeout(self.promotion_wait, wait).await {
            Ok(result) => result,
            Err(_) => {
                let leader_known = node.with_metrics(|m| m.current_leader.is_some());
                Err(if leader_known {
                    Error::NotLeader
                } else {
                    Error::NoLeader
                })
            }
        }
    }

    /// One keepalive: the lease's TTL after renewing it, or 0 if it does not exist. A follower
    /// relays it to the leader, whose clock it is.
    pub(crate) async fn keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        if let Clock::Leader(mut leader) = self.clock().await? {
            let request = LeaseKeepAliveRequest { id };
            let mut answers = leader
                .lease_keep_alive(tokio_stream::iter([request]))
                .await
                .map_err(relay_error)?
                .into_inner();
            return answers
                .message()
                .await
                .map_err(relay_error)?
                .ok_or_else(|| Error::Raft("the leader closed the keepalive stream".into()));
        }
        self.await_clock().await?;
        let ttl = match self.api.node().lessor.renew(id) {
            Renewal::NotFound => 0,
            Renewal::Renewed { ttl, record } => {
                if let Some(checkpoint) = record {
                    self.api
                        .propose(Cmd::LeaseCheckpoints(LeaseCheckpoints {
                            checkpoints: vec![checkpoint],
                        }))
                        .await?;
                }
                ttl
            }
        };
        Ok(LeaseKeepAliveResponse {
            header: self.api.current_header(),
            id,
            ttl,
        })
    }
}

/// Where lease requests that need the leader's clock are served.
enum Clock {
    /// This member leads.
    Here,
    /// Another member leads: relay to its client API.
    Leader(LeaseClient<Channel>),
}

/// A relayed request's failure, as this member's client should see it.
fn relay_error(status: Status) -> Error {
    match status.code() {
        tonic::Code::Unavailable => Error::NoLeader,
        _ => Error::Raft(format!("relaying to the leader: {}", status.message())),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        if req.ttl > MAX_TTL_SECS {
            return Err(Error::LeaseTtlTooLarge.into());
        }
        let ttl = req.ttl.max(self.min_ttl);
        let server_chosen = req.id == 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let id = if server_chosen { self.ids.next() } else { req.id };
            match self
                .api
                .answer(Cmd::LeaseGrant(LeaseGrantRequest { ttl, id }))
                .await
            {
                Ok(granted) => return Ok(Response::new(granted)),
                Err(Error::Mvcc(MvccError::LeaseExists)) if server_chosen && attempts < GRANT_ATTEMPTS => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.api.answer(Cmd::LeaseRevoke(req)).await?))
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (responses, outbound) = mpsc::channel(KEEPALIVE_BUFFER);
        let service = self.clone();
        tokio::spawn(async move {
            // Ends when the client closes its side, the stream breaks, or a keepalive fails
            // (the error is the stream's last message, as with etcd).
            while let Ok(Some(req)) = inbound.message().await {
                let answer = service.keep_alive_once(req.id).await.map_err(Status::from);
                let failed = answer.is_err();
                if responses.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        if let Clock::Leader(mut leader) = self.clock().await? {
            return leader
                .lease_time_to_live(req)
                .await
                .map_err(|s| relay_error(s).into());
        }
        let resp = match self.api.node().lessor.time_to_live(req.id, req.keys) {
            Some(found) => LeaseTimeToLiveResponse {
                header: self.api.current_header(),
                id: req.id,
                ttl: found.remaining,
                granted_ttl: found.granted,
                keys: found.keys,
            },
            // etcd answers a missing lease with TTL -1 rather than an error.
            None => LeaseTimeToLiveResponse {
                header: self.api.current_header(),
                id: req.id,
                ttl: -1,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        if let Clock::Leader(mut leader) = self.clock().await? {
            return leader
                .lease_leases(request.into_inner())
                .await
                .map_err(|s| relay_error(s).into());
        }
        let leases = self
            .api
            .node()
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.api.current_header(),
            leases,
        }))
    }
}

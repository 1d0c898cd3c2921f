//! etcd's `Lease` service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases.
//!
//! Grants and revokes go through Raft. Keepalives are answered by the leader's clock
//! ([`Lessor::renew`](crate::lease::Lessor::renew)) without a Raft round trip, except when the
//! lease's recorded remaining time must first be raised back to its full TTL (see
//! `crate::lease::lessor`). A follower relays keepalives, TimeToLive and Leases to the leader
//! over the peer link (`super::leader`), as etcd does; the leader answers them from its
//! [`LeaseClock`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use super::leader::Here;
use crate::config::Config;
use crate::error::Error;
use crate::lease::{LeaseIdGenerator, MAX_TTL_SECS, Renewal, expiry, min_ttl_secs};
use crate::mvcc::MvccError;
use crate::raft::peer_service::LeaseClock;

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
        let peers = &self.api.node().peers;
        self.api
            .on_leader(
                || self.here(|| self.keep_alive_here(id)),
                |leader| async move { peers.lease_keep_alive(&leader, id).await },
            )
            .await
    }

    /// Serves a request on this member's clock if it leads; otherwise says whom to ask.
    async fn here<T, F>(&self, serve: impl FnOnce() -> F) -> Here<T>
    where
        F: Future<Output = Result<T, Error>>,
    {
        match self.api.elsewhere() {
            Some(elsewhere) => elsewhere,
            None => Here::Done(serve().await),
        }
    }

    /// A keepalive on this member's clock (it leads). The leadership is confirmed first: a
    /// leader cut off from the others may not know yet that they elected another, whose clock
    /// rules, and a deadline it promised would not be kept (the lease would expire early for
    /// the client; etcd's issue 15247, which etcd 3.6 fixes the same way).
    async fn keep_alive_here(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        self.await_clock().await?;
        self.api.confirm_leadership().await?;
        let ttl = match self.api.node().lessor.renew(id) {
            Renewal::NotFound => 0,
            Renewal::Renewed { ttl, record } => {
                if let Some(checkpoint) = record {
                    self.api
                        .propose(
                            Cmd::LeaseCheckpoints(LeaseCheckpoints {
                                checkpoints: vec![checkpoint],
                            }),
                            0,
                        )
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

    /// A lease's time to live on this member's clock (it leads).
    fn time_to_live_here(&self, req: &LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse {
        match self.api.node().lessor.time_to_live(req.id, req.keys) {
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
        }
    }

    /// Every lease, as this member (it leads) knows them.
    fn leases_here(&self) -> LeaseLeasesResponse {
        let leases = self
            .api
            .node()
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        LeaseLeasesResponse {
            header: self.api.current_header(),
            leases,
        }
    }
}

/// The leader's side of the lease relays (see `crate::raft::peer_service`).
#[tonic::async_trait]
impl LeaseClock for LeaseService {
    async fn keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error> {
        self.here(|| self.keep_alive_here(id)).await.served()
    }

    async fn time_to_live(&self, request: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse, Error> {
        self.here(|| async { Ok(self.time_to_live_here(&request)) })
            .await
            .served()
    }

    async fn leases(&self) -> Result<LeaseLeasesResponse, Error> {
        self.here(|| async { Ok(self.leases_here()) }).await.served()
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let revision = self.api.authorize(&self.api.caller(&request)?, &[])?;
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
                .answer(Cmd::LeaseGrant(LeaseGrantRequest { ttl, id }), revision)
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
        let caller = self.api.caller(&request)?;
        let req = request.into_inner();
        self.api.authorize_lease_keys(&caller, req.id)?;
        let revision = self.api.authorize(&caller, &[])?;
        Ok(Response::new(
            self.api.answer(Cmd::LeaseRevoke(req), revision).await?,
        ))
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        // The caller's token is checked for every keepalive: one that lapsed or was
        // invalidated (the user deleted, its password changed) ends the stream with the error.
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (responses, outbound) = mpsc::channel(KEEPALIVE_BUFFER);
        let service = self.clone();
        tokio::spawn(async move {
            // Ends when the client closes its side, the stream breaks, or a keepalive fails
            // (the error is the stream's last message, as with etcd).
            while let Ok(Some(req)) = inbound.message().await {
                let answer = match service.api.auth().caller_of(&metadata) {
                    Ok(_) => service.keep_alive_once(req.id).await.map_err(Status::from),
                    Err(err) => Err(Status::from(Error::from(err))),
                };
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
        let req = &request.into_inner();
        let peers = &self.api.node().peers;
        let answer = self
            .api
            .on_leader(
                || self.here(|| async { Ok(self.time_to_live_here(req)) }),
                |leader| async move { peers.lease_time_to_live(&leader, *req).await },
            )
            .await?;
        Ok(Response::new(answer))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let peers = &self.api.node().peers;
        let answer = self
            .api
            .on_leader(
                || self.here(|| async { Ok(self.leases_here()) }),
                |leader| async move { peers.lease_leases(&leader).await },
            )
            .await?;
        Ok(Response::new(answer))
    }
}

//! etcd's `v3electionpb.Election` service: Campaign, Proclaim, Leader, Observe and Resign, on
//! the recipes crate's [`Election`].
//!
//! A campaign is held with the caller's lease (a campaign without one gets a 60 s lease of its
//! own, as in etcd): the candidate key `name/<lease hex>` lives until Resign deletes it or the
//! lease ends, and the next candidate leads as soon as that delete is applied.

use std::pin::Pin;

use concord_proto::rpctypes;
use concord_proto::v3electionpb::election_server::Election as ElectionRpc;
use concord_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use concord_recipes::election::{self, Election};
use concord_recipes::session::Session;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::local_kv::LocalKv;
use crate::metrics;

/// The Election service.
#[derive(Clone)]
pub struct ElectionService {
    kv: LocalKv,
}

impl ElectionService {
    /// An Election service whose recipes run on `kv`.
    pub fn new(kv: LocalKv) -> Self {
        Self { kv }
    }

    /// The election a leader key belongs to, resumed with the key's lease, on `kv`.
    fn resume(kv: LocalKv, leader: Option<LeaderKey>) -> Result<Election<LocalKv>, Status> {
        let leader = leader.ok_or_else(|| rpctypes::MISSING_LEADER_KEY.status())?;
        let session = Session::from_lease(kv, leader.lease);
        Ok(Election::resume(
            &session,
            election::LeaderKey {
                name: leader.name,
                key: leader.key,
                rev: leader.rev,
                lease: leader.lease,
            },
        ))
    }
}

#[tonic::async_trait]
impl ElectionRpc for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let session = kv.session(request.lease).await?;
        let mut election = Election::new(&session, request.name);
        let waiting = metrics::Raised::new(&metrics::get().campaigns_waiting);
        let (leader, header) = election
            .campaign(request.value)
            .await
            .map_err(|e| e.to_status())?;
        drop(waiting);
        metrics::get().leaderships_won.inc();
        Ok(Response::new(CampaignResponse {
            header: Some(header),
            leader: Some(LeaderKey {
                name: leader.name,
                key: leader.key,
                rev: leader.rev,
                lease: leader.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let election = Self::resume(kv, request.leader)?;
        let header = election
            .proclaim(request.value)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(ProclaimResponse { header: Some(header) }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let access = self.kv.acting_for(&request)?;
        let name = request.into_inner().name;
        let (header, kv) = Election::leader(&access, name).await.map_err(|e| e.to_status())?;
        Ok(Response::new(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }))
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let name = request.into_inner().name;
        let changes = Election::observe(kv, name).map(|change| {
            change
                .map(|(header, kv)| LeaderResponse {
                    header: Some(header),
                    kv: Some(kv),
                })
                .map_err(|e| e.to_status())
        });
        Ok(Response::new(Box::pin(changes)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let mut election = Self::resume(kv, request.into_inner().leader)?;
        let header = election.resign().await.map_err(|e| e.to_status())?;
        Ok(Response::new(ResignResponse { header: Some(header) }))
    }
}

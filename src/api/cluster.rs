//! etcd's `Cluster` service: MemberList, MemberAdd (voters and learners), MemberRemove,
//! MemberUpdate, MemberPromote. Changes run on the leader (see `crate::raft::membership`).

use std::collections::BTreeMap;
use std::sync::Arc;

use concord_proto::etcdserverpb::cluster_server::Cluster;
use concord_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, ResponseHeader,
};
use concord_proto::rpctypes;
use openraft::async_runtime::WatchReceiver;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::Need;
use crate::config::Config;
use crate::error::Error;
use crate::raft::MemberNode;
use crate::raft::identity::member_id;
use crate::raft::membership::{self, MembershipChange};

/// The Cluster service over the shared [`Api`].
#[derive(Clone)]
pub struct ClusterService {
    api: Arc<Api>,
    token: String,
}

impl ClusterService {
    /// A Cluster service for `api`; added members get IDs derived with `config`'s cluster token.
    pub fn new(api: Arc<Api>, config: &Config) -> Self {
        ClusterService {
            api,
            token: config.initial_cluster_token.clone(),
        }
    }

    /// Waits (bounded) until this member's view of the membership satisfies `applied`: a
    /// change forwarded to the leader reaches a follower a moment after the leader answers, and
    /// the response lists the members as they are after the change (as etcd's does).
    async fn await_view(&self, applied: impl Fn(&BTreeMap<u64, (MemberNode, bool)>) -> bool + Send + Sync) {
        let view = |m: &openraft::RaftMetrics<crate::raft::TypeConfig>| {
            let members: BTreeMap<u64, (MemberNode, bool)> = membership::members_in(m)
                .into_iter()
                .map(|(id, node, learner)| (id, (node, learner)))
                .collect();
            applied(&members)
        };
        let waited = self
            .api
            .node()
            .raft
            .wait(Some(self.api.request_timeout()))
            .metrics(view, "membership change applied here")
            .await;
        if waited.is_err() {
            tracing::warn!("membership change not visible on this member yet");
        }
    }

    /// The header of every Cluster answer: like etcd's, without a revision (membership is not
    /// part of the key space).
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.api.header(0))
    }

    /// Every member, in ID order.
    fn members(&self) -> Vec<Member> {
        membership::members(&self.api.node().raft)
            .into_iter()
            .map(|(id, node, is_learner)| member(id, node, is_learner))
            .collect()
    }
}

fn member(id: u64, node: MemberNode, is_learner: bool) -> Member {
    Member {
        id,
        name: node.name,
        peer_ur_ls: node.peer_urls,
        client_ur_ls: node.client_urls,
        is_learner,
    }
}

fn bad_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(rpctypes::MEMBER_PEER_URLS_MISSING.status());
    }
    for url in urls {
        let ok = url.starts_with("http://") || url.starts_with("https://");
        if !ok {
            return Err(Status::invalid_argument(format!(
                "etcdserver: invalid peer URL {url}: URLs must start with http:// or https://"
            )));
        }
    }
    Ok(())
}

impl ClusterService {
    /// Membership changes are root's while auth is on (etcd's rule); listing is anyone's.
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Error> {
        let caller = self.api.caller(request)?;
        self.api.authorize(&caller, &[Need::Admin])?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admin(&request)?;
        let req = request.into_inner();
        bad_urls(&req.peer_ur_ls)?;
        let id = member_id(&req.peer_ur_ls, &self.token);
        let node = MemberNode {
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: Vec::new(),
        };
        let change = MembershipChange::Add {
            id,
            node: node.clone(),
            learner: req.is_learner,
        };
        self.api.change_membership(change).await?;
        self.await_view(|m| m.contains_key(&id)).await;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member(id, node, req.is_learner)),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin(&request)?;
        let id = request.into_inner().id;
        self.api.change_membership(MembershipChange::Remove(id)).await?;
        self.await_view(|m| !m.contains_key(&id)).await;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin(&request)?;
        let req = request.into_inner();
        bad_urls(&req.peer_ur_ls)?;
        let (id, urls) = (req.id, req.peer_ur_ls.clone());
        let change = MembershipChange::UpdatePeerUrls(req.id, req.peer_ur_ls);
        self.api.change_membership(change).await?;
        self.await_view(|m| m.get(&id).is_some_and(|(node, _)| node.peer_urls == urls))
            .await;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.api.linearizable_read().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin(&request)?;
        let id = request.into_inner().id;
        self.api.change_membership(MembershipChange::Promote(id)).await?;
        self.await_view(|m| m.get(&id).is_some_and(|(_, learner)| !learner))
            .await;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}

/// Publishes this member's name and client URLs to the cluster whenever they differ from
/// what the membership records (every member but the bootstrapping one starts without them;
/// a membership change racing with another can lose them). Sets `published` once the
/// membership shows them. Runs until `stop` completes.
pub async fn publish(
    api: Arc<Api>,
    config: &Config,
    published: tokio::sync::watch::Sender<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    let me = api.node().identity.member_id;
    let want = (config.name.clone(), config.advertise_client_urls.clone());
    // Raft's view of the membership changes with its server metrics: look again as soon as
    // they change (a new member learns the membership moments after it starts, a new cluster
    // commits its first membership), or after a pause at the latest.
    let mut raft_changes = api.node().raft.server_metrics();
    let mut waited_a_pause = false;
    tokio::pin!(stop);
    loop {
        let known = membership::member(&api.node().raft, me).map(|(node, _)| (node.name, node.client_urls));
        // A change proposed while another is uncommitted is refused (and openraft logs that as
        // an error): wait for the one under way, unless it has already taken a whole pause.
        let settled = {
            let metrics = raft_changes.borrow_watched();
            metrics.membership_config.log_id() == metrics.committed_membership_config.log_id()
        };
        if known.as_ref() == Some(&want) {
            published.send_if_modified(|done| !std::mem::replace(done, true));
        }
        let pause = if known.is_none() || known.as_ref() == Some(&want) || !(settled || waited_a_pause) {
            std::time::Duration::from_secs(1)
        } else {
            let change = MembershipChange::Publish(me, want.0.clone(), want.1.clone());
            match api.change_membership(change).await {
                Ok(()) => tracing::info!(client_urls = ?want.1, "published this member's client URLs"),
                Err(err) => tracing::debug!(error = %err, "publishing client URLs"),
            }
            std::time::Duration::from_millis(200)
        };
        waited_a_pause = false;
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(pause) => waited_a_pause = true,
            changed = raft_changes.changed() => {
                if changed.is_err() {
                    // Raft has stopped: nothing will change any more until `stop`.
                    stop.as_mut().await;
                    return;
                }
            }
        }
    }
}

//! The peer transport, server side: `concordraftpb.RaftPeer` on the peer URLs, handing
//! openraft's RPCs to the local Raft and serving followers' forwarded writes and read indexes
//! when this member leads.

use std::path::PathBuf;
use std::time::Duration;

use concord_proto::raftpb::raft_peer_server::RaftPeer;
use concord_proto::raftpb::{
    self, AppendEntriesMessage, ClusterInfoRequest, ClusterInfoResponse, ForwardResponse, JsonMessage,
    ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use openraft::ReadPolicy;
use openraft::errors::ForwardToLeader;
use openraft::raft::AppendEntriesRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::admission::{Admission, Origin};
use super::codec::decode_entry;
use super::membership;
use super::snapshot::SnapshotFile;
use super::{Command, Raft, SnapshotMeta, TypeConfig, Vote};
use crate::error::{ERR_NO_LEADER, ERR_NOT_LEADER, ERR_TIMEOUT};

/// Serves other members.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    cluster_id: u64,
    snapshot_dir: PathBuf,
    request_timeout: Duration,
    admission: Admission,
}

impl PeerService {
    /// A peer service over `raft` in cluster `cluster_id`; incoming snapshots are written into
    /// `snapshot_dir`; forwarded writes pass `admission` and give up after `request_timeout`.
    pub fn new(
        raft: Raft,
        cluster_id: u64,
        snapshot_dir: PathBuf,
        request_timeout: Duration,
        admission: Admission,
    ) -> Self {
        PeerService {
            raft,
            cluster_id,
            snapshot_dir,
            request_timeout,
            admission,
        }
    }
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("bad {what}: {e}")))
}

fn answer<T: Serialize>(value: &T) -> Result<Response<JsonMessage>, Status> {
    let json = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(JsonMessage { json }))
}

/// etcd's text for a request Raft refused here with `err`: `not leader` / `no leader` when
/// this member does not lead.
fn refusal(forward: Option<&ForwardToLeader<TypeConfig>>, err: &impl std::fmt::Display) -> String {
    match forward {
        Some(forward) if forward.leader_id.is_some() => ERR_NOT_LEADER.to_string(),
        Some(_) => ERR_NO_LEADER.to_string(),
        None => format!("etcdserver: raft: {err}"),
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<AppendEntriesMessage>,
    ) -> Result<Response<JsonMessage>, Status> {
        let m = request.into_inner();
        let mut entries = Vec::with_capacity(m.entries.len());
        for bytes in &m.entries {
            entries.push(decode_entry(bytes).map_err(|e| Status::invalid_argument(e.to_string()))?);
        }
        let rpc = AppendEntriesRequest {
            vote: decode("vote", &m.vote_json)?,
            prev_log_id: decode("prev_log_id", &m.prev_log_id_json)?,
            leader_commit: decode("leader_commit", &m.leader_commit_json)?,
            entries,
        };
        answer(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<JsonMessage>) -> Result<Response<JsonMessage>, Status> {
        let rpc = decode("vote request", &request.into_inner().json)?;
        answer(&self.raft.vote(rpc).await)
    }

    async fn transfer_leader(&self, request: Request<JsonMessage>) -> Result<Response<JsonMessage>, Status> {
        let rpc = decode("transfer leader request", &request.into_inner().json)?;
        let result = self.raft.handle_transfer_leader(rpc).await;
        answer(&result.map_err(openraft::errors::RaftError::<super::TypeConfig>::Fatal))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<JsonMessage>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let vote: Vote = decode("vote", &first.vote_json)?;
        let meta: SnapshotMeta = decode("snapshot meta", &first.meta_json)?;
        let path = self
            .snapshot_dir
            .join(format!("{}.incoming", incoming_name(&meta)));
        let storage = |e: std::io::Error| Status::internal(format!("receiving snapshot: {e}"));
        let mut file = tokio::fs::File::create(&path).await.map_err(storage)?;
        file.write_all(&first.data).await.map_err(storage)?;
        while let Some(chunk) = chunks.message().await? {
            file.write_all(&chunk.data).await.map_err(storage)?;
        }
        file.sync_all().await.map_err(storage)?;
        drop(file);
        let snapshot = openraft::alias::SnapshotOf::<super::TypeConfig, SnapshotFile> {
            meta,
            snapshot: SnapshotFile { path: path.clone() },
        };
        let result = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        // Installed snapshots are moved away; a refused one is left behind.
        let _ = tokio::fs::remove_file(&path).await;
        answer(&result)
    }

    async fn forward(&self, request: Request<raftpb::Command>) -> Result<Response<ForwardResponse>, Status> {
        let command = Command(request.into_inner());
        if let Err(err) = self.admission.check(&command.0, Origin::Peer) {
            return Ok(Response::new(ForwardResponse {
                error: err.to_string(),
                ..Default::default()
            }));
        }
        let write = tokio::time::timeout(self.request_timeout, self.raft.client_write(command));
        let response = match write.await {
            Err(_) => ForwardResponse {
                error: ERR_TIMEOUT.into(),
                ..Default::default()
            },
            Ok(Err(err)) => ForwardResponse {
                error: refusal(err.forward_to_leader(), &err),
                ..Default::default()
            },
            Ok(Ok(applied)) => ForwardResponse {
                result_json: serde_json::to_vec(&applied.data)
                    .map_err(|e| Status::internal(e.to_string()))?,
                error: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn change_membership(
        &self,
        request: Request<JsonMessage>,
    ) -> Result<Response<JsonMessage>, Status> {
        let change = decode("membership change", &request.into_inner().json)?;
        let applied = tokio::time::timeout(self.request_timeout, membership::apply(&self.raft, change))
            .await
            .unwrap_or_else(|_| Err(ERR_TIMEOUT.to_string()));
        answer(&applied)
    }

    async fn cluster_info(
        &self,
        _request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: self.cluster_id,
        }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let read = tokio::time::timeout(
            self.request_timeout,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        );
        let response = match read.await {
            Err(_) => ReadIndexResponse {
                error: ERR_TIMEOUT.into(),
                ..Default::default()
            },
            Ok(Err(err)) => ReadIndexResponse {
                error: refusal(err.forward_to_leader(), &err),
                ..Default::default()
            },
            Ok(Ok(read_log_id)) => ReadIndexResponse {
                index: read_log_id.index(),
                error: String::new(),
            },
        };
        Ok(Response::new(response))
    }
}

/// A name for an incoming snapshot file that no other transfer uses at the same time.
fn incoming_name(meta: &SnapshotMeta) -> String {
    let (index, term) = meta
        .last_log_id
        .as_ref()
        .map_or((0, 0), |id| (id.index, id.leader_id.term));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{index:020}-{term:020}-{nanos}")
}

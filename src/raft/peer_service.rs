//! The peer transport, server side: `concordraftpb.RaftPeer` on the peer URLs, handing
//! openraft's RPCs to the local Raft and serving followers' forwarded writes, read indexes,
//! membership changes and lease requests when this member leads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};
use concord_proto::raftpb::forward_response::Outcome;
use concord_proto::raftpb::lease_relay_response::Outcome as LeaseOutcome;
use concord_proto::raftpb::raft_peer_server::RaftPeer;
use concord_proto::raftpb::read_index_response::Outcome as ReadOutcome;
use concord_proto::raftpb::{
    self, AppendEntriesMessage, ChangeMembershipResponse, ClusterInfoRequest, ClusterInfoResponse,
    ForwardResponse, JsonMessage, LeaseRelayResponse, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, SnapshotResponse, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::admission::{Admission, Origin};
use super::codec::decode_entry;
use super::membership;
use super::peer_error::{self, PeerError};
use super::peer_gate::{Call, PeerGate};
use super::snapshot::{self, SnapshotFile};
use super::{Command, Raft, SnapshotMeta, TypeConfig, Vote};
use crate::error::Error;
use crate::mvcc::MvccStore;

mod stream_append;

/// The leader's lease clock, as this member serves it to followers relaying their clients'
/// lease requests (the Lease service implements it).
#[tonic::async_trait]
pub trait LeaseClock: Send + Sync + 'static {
    /// A keepalive on this member's clock; `NotLeader` or `NoLeader` when it does not lead.
    async fn keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Error>;
    /// A lease's time to live on this member's clock.
    async fn time_to_live(&self, request: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse, Error>;
    /// Every lease, as this member (the leader) knows them.
    async fn leases(&self) -> Result<LeaseLeasesResponse, Error>;
}

/// Serves other members.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    store: Arc<MvccStore>,
    gate: Arc<PeerGate>,
    clock: Arc<dyn LeaseClock>,
    snapshot_dir: PathBuf,
    request_timeout: Duration,
    admission: Admission,
}

impl PeerService {
    /// A peer service over `raft` (and `store`, for hashes), admitting callers of its cluster through `gate` and
    /// answering lease relays from `clock`; incoming snapshots are written into
    /// `snapshot_dir`; forwarded writes pass `admission` and give up after `request_timeout`.
    pub fn new(
        raft: Raft,
        store: Arc<MvccStore>,
        gate: PeerGate,
        clock: Arc<dyn LeaseClock>,
        snapshot_dir: PathBuf,
        request_timeout: Duration,
        admission: Admission,
    ) -> Self {
        PeerService {
            raft,
            store,
            gate: Arc::new(gate),
            clock,
            snapshot_dir,
            request_timeout,
            admission,
        }
    }
}

/// Decodes an AppendEntries request that member `sender` sent; it must be sent by the leader
/// it names.
fn append_request(m: &AppendEntriesMessage, sender: u64) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    let mut entries = Vec::with_capacity(m.entries.len());
    for bytes in &m.entries {
        entries.push(decode_entry(bytes).map_err(|e| Status::invalid_argument(e.to_string()))?);
    }
    let vote: Vote = decode("vote", &m.vote_json)?;
    claimed_by(&vote, sender)?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id: decode("prev_log_id", &m.prev_log_id_json)?,
        leader_commit: decode("leader_commit", &m.leader_commit_json)?,
        entries,
    })
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("bad {what}: {e}")))
}

fn answer<T: Serialize>(value: &T) -> Result<Response<JsonMessage>, Status> {
    let json = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(JsonMessage { json }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<AppendEntriesMessage>,
    ) -> Result<Response<JsonMessage>, Status> {
        let sender = self.gate.admit(request.metadata(), Call::Raft).await?;
        let rpc = append_request(&request.into_inner(), sender)?;
        answer(&self.raft.append_entries(rpc).await)
    }

    type StreamAppendStream = stream_append::Answers;

    async fn stream_append(
        &self,
        request: Request<Streaming<AppendEntriesMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let sender = self.gate.admit(request.metadata(), Call::Raft).await?;
        Ok(Response::new(stream_append::serve(
            &self.raft,
            request.into_inner(),
            sender,
        )))
    }

    async fn vote(&self, request: Request<JsonMessage>) -> Result<Response<JsonMessage>, Status> {
        let sender = self.gate.admit(request.metadata(), Call::Raft).await?;
        let rpc: VoteRequest<TypeConfig> = decode("vote request", &request.into_inner().json)?;
        claimed_by(&rpc.vote, sender)?;
        answer(&self.raft.vote(rpc).await)
    }

    async fn transfer_leader(&self, request: Request<JsonMessage>) -> Result<Response<JsonMessage>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        let rpc = decode("transfer leader request", &request.into_inner().json)?;
        let result = self.raft.handle_transfer_leader(rpc).await;
        answer(&result.map_err(openraft::errors::RaftError::<super::TypeConfig>::Fatal))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<JsonMessage>, Status> {
        let sender = self.gate.admit(request.metadata(), Call::Raft).await?;
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let vote: Vote = decode("vote", &first.vote_json)?;
        let meta: SnapshotMeta = decode("snapshot meta", &first.meta_json)?;
        claimed_by(&vote, sender)?;
        // openraft's own rule, before a byte is written: a snapshot from a leader whose vote is
        // older than ours is answered with ours (the sender then steps down).
        let mine = self.raft.metrics().borrow_watched().vote;
        if vote.partial_cmp(&mine).is_none_or(|order| order.is_lt()) {
            return answer(&Ok::<_, String>(SnapshotResponse::<TypeConfig>::new(mine)));
        }
        let incoming = Incoming(snapshot::incoming_path(&self.snapshot_dir, &meta));
        let storage = |e: std::io::Error| Status::internal(format!("receiving snapshot: {e}"));
        let mut file = tokio::fs::File::create(&incoming.0).await.map_err(storage)?;
        file.write_all(&first.data).await.map_err(storage)?;
        while let Some(chunk) = chunks.message().await? {
            file.write_all(&chunk.data).await.map_err(storage)?;
        }
        file.sync_all().await.map_err(storage)?;
        drop(file);
        // openraft stops for good when a snapshot cannot be installed: check it first.
        let path = incoming.0.clone();
        let checked = {
            let meta = meta.clone();
            tokio::task::spawn_blocking(move || snapshot::validate(&path, &meta))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        };
        if let Err(err) = checked {
            tracing::warn!(from = %format!("{sender:x}"), error = %err, "refused a malformed snapshot");
            return answer(&Err::<SnapshotResponse<TypeConfig>, String>(format!(
                "malformed snapshot: {err}"
            )));
        }
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotFile> {
            meta,
            snapshot: SnapshotFile {
                path: incoming.0.clone(),
            },
        };
        // In a task of its own: once Raft has the snapshot, its state machine may install it
        // after this call is gone (the leader gave up waiting, the connection broke), and the
        // file must stay until it has. An installed snapshot was moved into place by then;
        // `incoming` removes one that was refused.
        let raft = self.raft.clone();
        let install = tokio::spawn(async move {
            let result = raft.install_full_snapshot(vote, snapshot).await;
            drop(incoming);
            result.map_err(|e| e.to_string())
        });
        let result = install.await.map_err(|e| Status::internal(e.to_string()))?;
        answer(&result)
    }

    async fn forward(&self, request: Request<raftpb::Command>) -> Result<Response<ForwardResponse>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        let command = Command(request.into_inner());
        let outcome = match self.admission.check(&command.0, Origin::Peer) {
            Err(err) => Outcome::Failed(PeerError::from(err).to_proto()),
            Ok(()) => {
                let write = tokio::time::timeout(self.request_timeout, self.raft.client_write(command));
                match write.await {
                    Err(_) => Outcome::Failed(PeerError::Timeout.to_proto()),
                    Ok(Err(err)) => Outcome::Failed(
                        match peer_error::write_refused(&err) {
                            Ok(forward) => PeerError::from_raft(forward, &err),
                            Err(unknown) => PeerError::from(unknown),
                        }
                        .to_proto(),
                    ),
                    Ok(Ok(applied)) => applied.data.to_forward(),
                }
            }
        };
        Ok(Response::new(ForwardResponse {
            outcome: Some(outcome),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<JsonMessage>,
    ) -> Result<Response<ChangeMembershipResponse>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        let change = decode("membership change", &request.into_inner().json)?;
        let applied = tokio::time::timeout(self.request_timeout, membership::apply(&self.raft, change))
            .await
            .unwrap_or(Err(Error::Timeout));
        Ok(Response::new(ChangeMembershipResponse {
            failed: applied.err().map(|err| PeerError::from(err).to_proto()),
        }))
    }

    async fn cluster_info(
        &self,
        request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        self.gate.admit(request.metadata(), Call::ClusterInfo).await?;
        let member_ids = membership::members(&self.raft)
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: self.gate.cluster_id(),
            member_ids,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        let revision = request.into_inner().revision;
        let store = self.store.clone();
        let hashed = tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::from(crate::error::Error::from(e)))?;
        Ok(Response::new(HashKvResponse {
            header: Some(ResponseHeader {
                member_id: self.gate.me(),
                cluster_id: self.gate.cluster_id(),
                revision: self.store.current_revision(),
                raft_term: 0,
            }),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.revision,
        }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseRelayResponse>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        let answer = self.clock.keep_alive(request.into_inner().id).await;
        Ok(relayed(answer.map(LeaseOutcome::KeepAlive)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseRelayResponse>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        let answer = self.clock.time_to_live(request.into_inner()).await;
        Ok(relayed(answer.map(LeaseOutcome::TimeToLive)))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseRelayResponse>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        Ok(relayed(self.clock.leases().await.map(LeaseOutcome::Leases)))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        self.gate.admit(request.metadata(), Call::Raft).await?;
        let read = tokio::time::timeout(
            self.request_timeout,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        );
        let outcome = match read.await {
            Err(_) => ReadOutcome::Failed(PeerError::Timeout.to_proto()),
            Ok(Err(err)) => {
                ReadOutcome::Failed(PeerError::from_raft(err.forward_to_leader(), &err).to_proto())
            }
            Ok(Ok(read_log_id)) => ReadOutcome::Index(read_log_id.index()),
        };
        let response = ReadIndexResponse {
            outcome: Some(outcome),
        };
        Ok(Response::new(response))
    }
}

/// The answer to a relayed lease request.
fn relayed(answer: Result<LeaseOutcome, Error>) -> Response<LeaseRelayResponse> {
    let outcome = answer.unwrap_or_else(|err| LeaseOutcome::Failed(PeerError::from(err).to_proto()));
    Response::new(LeaseRelayResponse {
        outcome: Some(outcome),
    })
}

/// A snapshot file being received: removed when the call ends, whichever way (a completed one
/// has been moved into place by then).
struct Incoming(PathBuf);

impl Drop for Incoming {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => tracing::debug!(file = %self.0.display(), "removed an unused incoming snapshot"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(file = %self.0.display(), error = %err, "cannot remove an incoming snapshot")
            }
        }
    }
}

/// Refuses a call whose vote names another leader than the member that sent it.
fn claimed_by(vote: &Vote, sender: u64) -> Result<(), Status> {
    if vote.leader_id.node_id != sender {
        return Err(Status::permission_denied(format!(
            "member {sender:x} sent a message of leader {:x}",
            vote.leader_id.node_id
        )));
    }
    Ok(())
}

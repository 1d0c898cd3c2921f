//! The peer transport, client side: openraft's RPCs to other members over gRPC
//! (`concordraftpb.RaftPeer` on their peer URLs), plus the calls a follower makes to the leader
//! on a client's behalf (forwarded writes, read indexes, membership changes, lease relays).
//!
//! One lazily connected tonic channel per peer URL is cached in [`Peers`] and shared by every
//! replication stream and forwarder. openraft's request and response types travel as JSON
//! (they are small); log entries travel in the WAL's protobuf encoding; snapshots are streamed
//! from their file in chunks, never loaded whole. openraft sends AppendEntries on streams
//! (`stream_append`): replication keeps one open per follower and pipelines on it, a heartbeat
//! is a stream of one request. The single AppendEntries call is still served, so a member of
//! an older version can lead this one (the other way round needs the new call).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use concord_proto::raftpb::lease_relay_response::Outcome as LeaseOutcome;
use concord_proto::raftpb::raft_peer_client::RaftPeerClient;
use concord_proto::raftpb::{
    AppendEntriesMessage, ClusterInfoResponse, JsonMessage, LeaseRelayResponse, ReadIndexRequest,
    SnapshotChunk, read_index_response,
};
use futures::Stream;
use openraft::OptionalSend;
use openraft::base::BoxFuture;
use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::codec::encode_entry;
use super::membership::MembershipChange;
use super::peer_error::PeerError;
use super::snapshot::SnapshotFile;
use super::{Command, CommandResult, MemberNode, TypeConfig, Vote};

pub mod faults;
mod stream_append;

use self::faults::Fate;

/// Largest gRPC message between members (a batch of log entries, a snapshot chunk).
pub const PEER_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Size of one streamed snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Metadata naming the sender's member ID (hex) on every peer call.
pub const MEMBER_HEADER: &str = "concord-member-id";
/// Metadata naming the sender's cluster ID (hex) on every peer call but the first ClusterInfo
/// of a joining member.
pub const CLUSTER_HEADER: &str = "concord-cluster-id";

/// A client of another member's peer service, whose calls carry this member's credentials.
pub type PeerRpc = RaftPeerClient<InterceptedService<Channel, Credentials>>;

/// Who this member is, as every peer call says it (see `super::peer_gate`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    headers: Arc<Mutex<CredentialHeaders>>,
}

#[derive(Debug, Default)]
struct CredentialHeaders {
    member: Option<MetadataValue<Ascii>>,
    cluster: Option<MetadataValue<Ascii>>,
}

fn hex_header(id: u64) -> MetadataValue<Ascii> {
    // A hex number is always valid ASCII metadata.
    MetadataValue::try_from(format!("{id:x}")).unwrap_or_else(|_| MetadataValue::from_static("0"))
}

impl Credentials {
    /// From now on, calls name `member` of `cluster` (unknown yet while joining).
    pub fn set(&self, member: u64, cluster: Option<u64>) {
        let mut headers = self.headers.lock().unwrap_or_else(|p| p.into_inner());
        headers.member = Some(hex_header(member));
        headers.cluster = cluster.map(hex_header);
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let headers = self.headers.lock().unwrap_or_else(|p| p.into_inner());
        let metadata = request.metadata_mut();
        if let Some(member) = &headers.member {
            metadata.insert(MEMBER_HEADER, member.clone());
        }
        if let Some(cluster) = &headers.cluster {
            metadata.insert(CLUSTER_HEADER, cluster.clone());
        }
        drop(headers);
        Ok(request)
    }
}

/// The cached channels to other members, by peer URL, and the credentials peer calls carry.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    credentials: Credentials,
    /// TLS for `https://` peer URLs (`--peer-cert-file` and friends).
    tls: Option<ClientTlsConfig>,
}

impl Peers {
    /// No channels yet; `https://` peers are reached with `tls`.
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            tls,
            ..Self::default()
        }
    }

    /// The cached channel to `url` (created, lazily connecting, on first use).
    fn channel(&self, url: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad URL {url}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let tls = self
                .tls
                .clone()
                .ok_or_else(|| format!("{url} needs --peer-cert-file and --peer-key-file"))?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS for {url}: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(url.to_string(), channel.clone());
        Ok(channel)
    }

    /// The credentials this member's peer calls carry.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// A client for the member reachable at `node`'s first peer URL.
    pub fn client(&self, node: &MemberNode) -> Result<PeerRpc, String> {
        let url = node
            .peer_urls
            .first()
            .ok_or_else(|| format!("member {} has no peer URL", node.name))?;
        Ok(
            RaftPeerClient::with_interceptor(self.channel(url)?, self.credentials.clone())
                .max_decoding_message_size(PEER_MESSAGE_BYTES)
                .max_encoding_message_size(PEER_MESSAGE_BYTES),
        )
    }

    /// Calls `rpc` on the member at `node`: its answer, or why there is none (a member that
    /// could not be reached never saw the call).
    async fn ask<T, F, Fut>(&self, node: &MemberNode, rpc: F) -> Result<T, PeerError>
    where
        F: FnOnce(PeerRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(node).map_err(PeerError::Unreachable)?;
        let url = node.peer_urls.first().map_or("", String::as_str);
        if faults::outbound(url).await == Fate::Lost {
            return Err(PeerError::Unreachable(format!(
                "the link to {url} is cut (test fault)"
            )));
        }
        let answer = rpc(client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| PeerError::from_call(&status))?;
        if faults::inbound(url) == Fate::Lost {
            return Err(PeerError::Failed(format!(
                "the answer from {url} was lost (test fault)"
            )));
        }
        Ok(answer)
    }

    /// Relays a client's lease request to the leader at `leader` with `rpc`; `pick` takes the
    /// answer it expects out of the leader's.
    async fn relay<T, F, Fut>(
        &self,
        leader: &MemberNode,
        rpc: F,
        pick: fn(LeaseOutcome) -> Option<T>,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(PeerRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<LeaseRelayResponse>, tonic::Status>>,
    {
        match self.ask(leader, rpc).await?.outcome {
            Some(LeaseOutcome::Failed(failed)) => Err(PeerError::from_proto(failed)),
            Some(outcome) => {
                pick(outcome).ok_or_else(|| PeerError::Failed("the leader answered something else".into()))
            }
            None => Err(PeerError::Failed("the leader answered nothing".into())),
        }
    }

    /// Hands `command` to the leader at `leader` and returns what its state machine answered.
    pub async fn forward(&self, leader: &MemberNode, command: &Command) -> Result<CommandResult, PeerError> {
        let command = command.0.clone();
        let answer = self
            .ask(leader, |mut c| async move { c.forward(command).await })
            .await?;
        CommandResult::from_forward(answer.outcome)
    }

    /// Hands a membership change to the leader at `leader`.
    pub async fn change_membership(
        &self,
        leader: &MemberNode,
        change: &MembershipChange,
    ) -> Result<(), PeerError> {
        let request = JsonMessage { json: json(change) };
        let answer = self
            .ask(leader, |mut c| async move { c.change_membership(request).await })
            .await?;
        answer
            .failed
            .map_or(Ok(()), |failed| Err(PeerError::from_proto(failed)))
    }

    /// Asks the member at `node` for the cluster's ID and its members' IDs.
    pub async fn cluster_info(&self, node: &MemberNode) -> Result<ClusterInfoResponse, PeerError> {
        let mut request = tonic::Request::new(concord_proto::raftpb::ClusterInfoRequest {});
        request.set_timeout(CONNECT_TIMEOUT);
        self.ask(node, |mut c| async move { c.cluster_info(request).await })
            .await
    }

    /// `node`'s HashKV at `revision` (see [`crate::mvcc::MvccStore::hash_kv`]).
    pub async fn hash_kv(
        &self,
        node: &MemberNode,
        revision: i64,
        timeout: Duration,
    ) -> Result<HashKvResponse, PeerError> {
        let mut request = tonic::Request::new(HashKvRequest { revision });
        request.set_timeout(timeout);
        self.ask(node, |mut c| async move { c.hash_kv(request).await })
            .await
    }

    /// Relays a client's keepalive of lease `id` to the leader at `leader`.
    pub async fn lease_keep_alive(
        &self,
        leader: &MemberNode,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, PeerError> {
        let rpc = |mut c: PeerRpc| async move { c.lease_keep_alive(LeaseKeepAliveRequest { id }).await };
        self.relay(leader, rpc, |outcome| match outcome {
            LeaseOutcome::KeepAlive(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    /// Relays a client's time-to-live request to the leader at `leader`.
    pub async fn lease_time_to_live(
        &self,
        leader: &MemberNode,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, PeerError> {
        let rpc = |mut c: PeerRpc| async move { c.lease_time_to_live(request).await };
        self.relay(leader, rpc, |outcome| match outcome {
            LeaseOutcome::TimeToLive(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    /// Relays a client's request for every lease to the leader at `leader`.
    pub async fn lease_leases(&self, leader: &MemberNode) -> Result<LeaseLeasesResponse, PeerError> {
        let rpc = |mut c: PeerRpc| async move { c.lease_leases(LeaseLeasesRequest {}).await };
        self.relay(leader, rpc, |outcome| match outcome {
            LeaseOutcome::Leases(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    /// Asks the leader at `leader` for a read index.
    pub async fn read_index(&self, leader: &MemberNode) -> Result<u64, PeerError> {
        let answer = self
            .ask(
                leader,
                |mut c| async move { c.read_index(ReadIndexRequest {}).await },
            )
            .await?;
        match answer.outcome {
            Some(read_index_response::Outcome::Index(index)) => Ok(index),
            Some(read_index_response::Outcome::Failed(failed)) => Err(PeerError::from_proto(failed)),
            None => Err(PeerError::Failed("the leader answered no read index".into())),
        }
    }
}

/// Creates [`PeerClient`]s for openraft.
#[derive(Debug, Clone, Default)]
pub struct PeerNetwork {
    peers: Peers,
}

impl PeerNetwork {
    /// A network over the shared channel cache.
    pub fn new(peers: Peers) -> Self {
        PeerNetwork { peers }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: u64,
    /// The peer URL it is reached at.
    url: String,
    client: Result<PeerRpc, String>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Self::Network {
        PeerClient {
            target,
            url: node.peer_urls.first().cloned().unwrap_or_default(),
            client: self.peers.client(node),
        }
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // openraft's messages always serialise; an empty body would be refused by the peer.
    serde_json::to_vec(value).unwrap_or_default()
}

fn io(err: impl ToString) -> std::io::Error {
    std::io::Error::other(err.to_string())
}

/// What a failed call to a peer means to openraft: a transport failure (connection refused,
/// peer down) is `Unreachable` (back off), anything else a retryable network error.
fn rpc_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
            RPCError::Unreachable(Unreachable::new(&io(status.message())))
        }
        _ => RPCError::Network(NetworkError::new(&io(status.message()))),
    }
}

/// Records a round trip to member `target` that began at `sent`
/// (`etcd_network_peer_round_trip_time_seconds`).
fn observe_round_trip(target: u64, sent: std::time::Instant) {
    let peer = crate::metrics::ToLabel {
        To: format!("{target:x}"),
    };
    crate::metrics::observe(
        &crate::metrics::get().peer_round_trip.get_or_create(&peer),
        sent.elapsed(),
    );
}

/// An AppendEntries request as it travels: openraft's fields in JSON, the entries in the WAL's
/// encoding.
fn append_message(rpc: &AppendEntriesRequest<TypeConfig>) -> std::io::Result<AppendEntriesMessage> {
    let mut entries = Vec::with_capacity(rpc.entries.len());
    for entry in &rpc.entries {
        entries.push(encode_entry(entry)?);
    }
    Ok(AppendEntriesMessage {
        vote_json: json(&rpc.vote),
        prev_log_id_json: json(&rpc.prev_log_id),
        leader_commit_json: json(&rpc.leader_commit),
        entries,
    })
}

/// Decodes a peer's JSON answer: `Result<T, RaftError>`.
fn decode<T: DeserializeOwned>(answer: JsonMessage) -> Result<T, RPCError<TypeConfig>> {
    let result: Result<T, RaftError<TypeConfig>> = serde_json::from_slice(&answer.json)
        .map_err(|e| RPCError::Network(NetworkError::new(&io(format!("bad answer from peer: {e}")))))?;
    result.map_err(|e| RPCError::Network(NetworkError::new(&io(format!("peer failed: {e}")))))
}

impl PeerClient {
    /// Fails when a test fault loses the request on its way (see [`faults`]).
    async fn send_fault(&self) -> Result<(), Unreachable<TypeConfig>> {
        match faults::outbound(&self.url).await {
            Fate::Delivered => Ok(()),
            Fate::Lost => Err(Unreachable::new(&io(format!(
                "the link to member {:x} is cut (test fault)",
                self.target
            )))),
        }
    }

    /// Fails when a test fault loses the answer on its way back (see [`faults`]).
    fn answer_fault(&self) -> Result<(), NetworkError<TypeConfig>> {
        match faults::inbound(&self.url) {
            Fate::Delivered => Ok(()),
            Fate::Lost => Err(NetworkError::new(&io(format!(
                "the answer from member {:x} was lost (test fault)",
                self.target
            )))),
        }
    }

    fn client(&self) -> Result<PeerRpc, RPCError<TypeConfig>> {
        self.client.clone().map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&io(format!("member {:x}: {e}", self.target))))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let message = append_message(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        let client = self.client()?;
        self.send_fault().await.map_err(RPCError::Unreachable)?;
        let sent = std::time::Instant::now();
        let answer = client
            .clone()
            .append_entries(request)
            .await
            .map_err(|s| rpc_error(&s))?;
        self.answer_fault().map_err(RPCError::Network)?;
        observe_round_trip(self.target, sent);
        decode(answer.into_inner())
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<stream_append::Results<'s>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let client = self.client();
        let (target, url) = (self.target, self.url.clone());
        Box::pin(async move {
            let results: stream_append::Results<'s> =
                stream_append::open(client?, target, url, input, option).await?;
            Ok(results)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut request = tonic::Request::new(JsonMessage { json: json(&rpc) });
        request.set_timeout(option.hard_ttl());
        let client = self.client()?;
        self.send_fault().await.map_err(RPCError::Unreachable)?;
        let answer = client.clone().vote(request).await.map_err(|s| rpc_error(&s))?;
        self.answer_fault().map_err(RPCError::Network)?;
        decode(answer.into_inner())
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut request = tonic::Request::new(JsonMessage { json: json(&req) });
        request.set_timeout(option.hard_ttl());
        let client = self.client()?;
        self.send_fault().await.map_err(RPCError::Unreachable)?;
        let answer = client
            .clone()
            .transfer_leader(request)
            .await
            .map_err(|s| rpc_error(&s))?;
        self.answer_fault().map_err(RPCError::Network)?;
        decode(answer.into_inner())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let unreachable = |e: String| StreamingError::Unreachable(Unreachable::new(&io(e)));
        let mut client = self.client.clone().map_err(unreachable)?;
        self.send_fault().await.map_err(StreamingError::Unreachable)?;
        let mut file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(|e| unreachable(format!("open snapshot: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let header = SnapshotChunk {
            vote_json: json(&vote),
            meta_json: json(&snapshot.meta),
            data: Vec::new(),
        };
        // Reads the file chunk by chunk while the call sends them.
        let reader = async move {
            if tx.send(header).await.is_err() {
                return Ok(());
            }
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let n = file.read(&mut data).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                data.truncate(n);
                let chunk = SnapshotChunk {
                    data,
                    ..Default::default()
                };
                if tx.send(chunk).await.is_err() {
                    return Ok(());
                }
                crate::failpoint::hit("snapshot-send");
            }
        };
        let reader = tokio::spawn(reader);
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let answer = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            answer = call => answer,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unreachable(format!("read snapshot: {e}"))),
            Err(e) => return Err(unreachable(format!("snapshot reader: {e}"))),
        }
        let answer = answer.map_err(|s| unreachable(s.message().to_string()))?;
        self.answer_fault().map_err(StreamingError::Network)?;
        let result: Result<SnapshotResponse<TypeConfig>, String> =
            serde_json::from_slice(&answer.into_inner().json).map_err(|e| unreachable(e.to_string()))?;
        result.map_err(unreachable)
    }
}

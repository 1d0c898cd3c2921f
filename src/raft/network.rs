//! The peer transport between Raft members.
//!
//! Concord runs single-member clusters today: this network has no peers to reach, so every RPC
//! reports the target unreachable (openraft then retries with backoff). Configuration refuses a
//! multi-member `--initial-cluster` until the gRPC peer transport lands, so no cluster can rely
//! on this placeholder.

use std::future::Future;

use openraft::OptionalSend;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use super::snapshot::SnapshotFile;
use super::{MemberNode, TypeConfig, Vote};

/// Creates [`PeerClient`]s.
#[derive(Debug, Default, Clone)]
pub struct PeerNetwork;

/// A connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: u64,
}

impl PeerClient {
    fn unreachable(&self) -> Unreachable<TypeConfig> {
        let msg = format!(
            "member {:x}: no peer transport (single-member cluster)",
            self.target
        );
        Unreachable::new(&std::io::Error::other(msg))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, _node: &MemberNode) -> Self::Network {
        PeerClient { target }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}

//! etcd's `Maintenance` service.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use concord_proto::etcdserverpb::maintenance_server::Maintenance;
use concord_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, alarm_request::AlarmAction,
};
use concord_proto::raftpb::AlarmChange;
use concord_proto::raftpb::command::Request as Cmd;
use concord_proto::raftpb::command_response::Response as Applied;
use concord_proto::rpctypes;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::Need;
use crate::backup::save;
use crate::error::Error;
use crate::raft::membership;

/// The etcd API version Concord implements, reported by Status.
pub const SERVER_VERSION: &str = "3.5.0";

/// The Maintenance service over the shared [`Api`].
#[derive(Clone)]
pub struct MaintenanceService {
    api: Arc<Api>,
    defragmenting: Arc<tokio::sync::Mutex<()>>,
}

impl MaintenanceService {
    /// A Maintenance service for `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self {
            api,
            defragmenting: Arc::default(),
        }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented by concord yet"))
}

impl MaintenanceService {
    /// Whether the caller of `request` has `need` (while auth is on).
    fn allow<T>(&self, request: &Request<T>, need: Need<'_>) -> Result<(), Error> {
        let caller = self.api.caller(request)?;
        self.api.authorize(&caller, &[need])?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// etcd's Alarm: GET lists the raised alarms (of one type, or all for NONE); ACTIVATE and
    /// DEACTIVATE raise or clear one through Raft, answering with it.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // Listing alarms needs some user, changing them root (etcd's rules).
        let action = request.get_ref().action();
        match action {
            AlarmAction::Get => self.allow(&request, Need::User)?,
            _ => self.allow(&request, Need::Admin)?,
        }
        let request = request.into_inner();
        if action == AlarmAction::Get {
            return Ok(Response::new(AlarmResponse {
                header: self.api.current_header(),
                alarms: self.api.node().alarms.list(request.alarm()),
            }));
        }
        let change = AlarmChange {
            member_id: request.member_id,
            alarm: request.alarm,
            activate: action == AlarmAction::Activate,
        };
        let response = self.api.propose(Cmd::Alarm(change), 0).await?;
        let Applied::Alarm(mut answer) = response else {
            return Err(Error::Raft("the state machine answered an alarm with something else".into()).into());
        };
        answer.header = self.api.current_header();
        Ok(Response::new(answer))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.allow(&request, Need::User)?;
        let node = self.api.node();
        let leader = node.leader().unwrap_or(0);
        let (raft_index, raft_term, applied) = node.with_metrics(|m| {
            (
                m.last_log_index.unwrap_or(0),
                m.current_term,
                m.last_applied.as_ref().map_or(0, |id| id.index),
            )
        });
        let me = node.identity.member_id;
        let is_learner = membership::member(&node.raft, me).is_some_and(|(_, learner)| learner);
        let db_size = self.api.db_size() as i64;
        // redb counts the pages in use only inside a write transaction: rather than stall
        // writers for a status call, report the quota's last count (the file size if none).
        let db_size_in_use = self.api.db_in_use_last() as i64;
        Ok(Response::new(StatusResponse {
            header: self.api.current_header(),
            version: SERVER_VERSION.to_string(),
            db_size,
            leader,
            raft_index,
            raft_term,
            raft_applied_index: applied,
            errors: Vec::new(),
            db_size_in_use,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.allow(&request, Need::Admin)?;
        // One at a time; reads and writes go on meanwhile (see crate::defrag).
        let _one = self.defragmenting.lock().await;
        let api = self.api.clone();
        let report =
            tokio::task::spawn_blocking(move || crate::defrag::defragment(api.store(), &api.node().db_path))
                .await
                .map_err(|e| Error::Raft(format!("defragmenting: {e}")))?
                .map_err(Error::Io)?;
        tracing::info!(
            before = report.size_before,
            after = report.size_after,
            took_ms = report.took.as_millis() as u64,
            paused_ms = report.paused.as_millis() as u64,
            "defragment"
        );
        Ok(Response::new(DefragmentResponse {
            header: self.api.current_header(),
        }))
    }

    /// The hash of this member's whole history up to its current revision (etcd's is of its
    /// backend file; both are for comparing members).
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.allow(&request, Need::Admin)?;
        let hashed = self.api.hash_kv(0).await?;
        Ok(Response::new(HashResponse {
            header: Some(self.api.header(hashed.revision)),
            hash: hashed.hash,
        }))
    }

    /// etcd's HashKV: the hash of the history up to `revision` (0: the current one), with the
    /// compacted revision it was taken at; equal on members that applied the same log.
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.allow(&request, Need::Admin)?;
        let hashed = self.api.hash_kv(request.get_ref().revision).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.api.header(self.api.store().current_revision())),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.allow(&request, Need::Admin)?;
        let node = self.api.node();
        let dir = node.db_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let api = self.api.clone();
        let backup = save::build_async(self.api.store().database(), dir, move || {
            api.store().current_revision()
        })
        .await
        .map_err(Error::Io)?;
        tracing::info!(
            bytes = backup.size,
            revision = backup.revision,
            "sending a backup"
        );
        let mut header = Some(self.api.header(backup.revision));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        backup.stream(tx);
        let stream = ReceiverStream::new(rx).map(move |chunk| {
            let chunk = chunk.map_err(|e| Status::from(Error::Io(e)))?;
            // etcd's first message carries the header and the server's version.
            let first = header.take();
            Ok(SnapshotResponse {
                version: first
                    .as_ref()
                    .map(|_| SERVER_VERSION.to_string())
                    .unwrap_or_default(),
                header: first,
                remaining_bytes: chunk.remaining_bytes,
                blob: chunk.blob,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// etcd's MoveLeader: sent to the leader (etcdctl finds it), hands leadership to a voter
    /// and waits until it has taken over.
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.allow(&request, Need::Admin)?;
        let target = request.into_inner().target_id;
        let raft = &self.api.node().raft;
        if !self.api.node().with_metrics(|m| m.state.is_leader()) {
            return Err(Error::NotLeader.into());
        }
        let voter = membership::member(raft, target).is_some_and(|(_, learner)| !learner);
        if !voter {
            return Err(rpctypes::BAD_LEADER_TRANSFEREE.status());
        }
        if target != self.api.node().identity.member_id {
            let term = self.api.node().with_metrics(|m| m.current_term);
            self.api.transferring_leadership(term);
            raft.trigger()
                .transfer_leader(target)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
            let moved = raft
                .wait(Some(self.api.request_timeout()))
                .current_leader(target, "move leader")
                .await;
            moved.map_err(|_| Error::Timeout)?;
        }
        // etcd answers without a header, whether leadership moved or stayed.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.allow(&request, Need::Admin)?;
        Err(not_yet("Downgrade"))
    }
}

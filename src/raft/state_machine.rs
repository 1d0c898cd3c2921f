//! The Raft state machine: applies committed commands to the MVCC store.
//!
//! A batch of committed entries is applied in one redb write transaction that also records the
//! last applied log id and membership, so the store and its applied index never disagree. Those
//! commits skip the fsync (`Durability::None`): the Raft log is the durability point, and on
//! restart openraft re-applies everything after the durable applied index up to the saved
//! committed index. A durable commit is made periodically, and before every snapshot, so that
//! replay stays short and the log can be purged safely.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::{LeaseGrantResponse, LeaseRevokeResponse, ResponseHeader};
use concord_proto::raftpb::{CommandResponse, command::Request, command_response::Response};
use futures::StreamExt;
use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::impls::EntryPayload;
use openraft::storage::{EntryResponder, RaftStateMachine};
use redb::Durability;

use super::applied::{read_applied_state, storage_err, write_applied_state};
use super::snapshot::{self, SnapshotBuilder, SnapshotFile};
use super::{Command, CommandResult, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::alarm::{AlarmBatch, AlarmStore};
use crate::auth::{AuthBatch, AuthStore, Need};
use crate::lease::{LeaseState, Lessor};
use crate::mvcc::{MvccError, MvccStore, WriteBatch, response_header};
use crate::watch::WatchHub;

/// How often an applied batch is committed with an fsync even without a snapshot.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// openraft's state machine over the MVCC store.
pub struct StateMachine {
    store: Arc<MvccStore>,
    lessor: Arc<Lessor>,
    auth: Arc<AuthStore>,
    alarms: Arc<AlarmStore>,
    hub: Arc<WatchHub>,
    snapshot_dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    last_sync: Instant,
}

impl StateMachine {
    /// Opens the state machine over `store`, the leases in `lessor`, the users and roles in
    /// `auth` and the raised `alarms`; committed changes are handed to `hub`; snapshots go to
    /// `snapshot_dir`.
    pub fn open(
        store: Arc<MvccStore>,
        lessor: Arc<Lessor>,
        auth: Arc<AuthStore>,
        alarms: Arc<AlarmStore>,
        hub: Arc<WatchHub>,
        snapshot_dir: PathBuf,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::sweep_unfinished(&snapshot_dir)?;
        let (applied, membership) = read_applied_state(&store.database())?;
        Ok(Self {
            store,
            lessor,
            auth,
            alarms,
            hub,
            snapshot_dir,
            applied,
            membership,
            last_sync: Instant::now(),
        })
    }

    /// Cancels every watcher whose owner may no longer read what it watches (after an auth
    /// change).
    fn cancel_refused_watchers(&self) {
        let auth = &self.auth;
        self.hub.cancel_where(|watch| {
            auth.authorize(&watch.owner, &[Need::Read(&watch.key, &watch.range_end)])
                .err()
                .map(|err| err.to_string())
        });
    }

    /// Commits an empty transaction durably: every earlier non-durable commit reaches the disk.
    fn sync(&mut self) -> io::Result<()> {
        let mut txn = self.store.database().begin_write().map_err(storage_err)?;
        txn.set_durability(Durability::Immediate).map_err(storage_err)?;
        txn.commit().map_err(storage_err)?;
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// Applies one command inside the batch, with the lease table and the auth state. Store-level
/// rejections are answers, not failures; only a storage failure aborts the batch (and stops
/// Raft: the lease table in memory may then be ahead of the database, so the member must
/// restart).
pub(super) fn apply_command(
    batch: &mut WriteBatch<'_>,
    leases: &mut LeaseState,
    auth: &mut AuthBatch<'_>,
    alarms: &mut AlarmBatch<'_>,
    cmd: &Command,
) -> io::Result<CommandResult> {
    crate::failpoint::hit("apply");
    if let Some(request) = &cmd.0.request {
        if let Err(err) = auth.admit(cmd.0.auth_revision) {
            return Ok(CommandResult::Rejected(MvccError::Auth(err)));
        }
        if let Err(err) = alarms.admit(request) {
            return Ok(CommandResult::Rejected(err));
        }
    }
    let from = batch.event_count();
    let outcome = match &cmd.0.request {
        Some(Request::Put(req)) => batch.put(req, &*leases).map(Response::Put),
        Some(Request::DeleteRange(req)) => batch.delete_range(req).map(Response::DeleteRange),
        Some(Request::Txn(req)) => batch.txn(req, &*leases).map(Response::Txn),
        Some(Request::Compaction(req)) => batch.compact(req).map(Response::Compaction),
        Some(Request::LeaseGrant(req)) => leases.grant(batch.transaction(), req.id, req.ttl).map(|()| {
            Response::LeaseGrant(LeaseGrantResponse {
                header: response_header(batch.current_revision()),
                id: req.id,
                ttl: req.ttl,
                error: String::new(),
            })
        }),
        Some(Request::LeaseRevoke(req)) => leases.revoke(batch, req.id).map(|()| {
            Response::LeaseRevoke(LeaseRevokeResponse {
                header: response_header(batch.current_revision()),
            })
        }),
        Some(Request::LeaseCheckpoints(req)) => leases
            .checkpoint(batch.transaction(), &req.checkpoints)
            .map(|()| Response::LeaseInternal(ResponseHeader::default())),
        Some(Request::LeaseExpiry(req)) => expire(batch, leases, &req.ids),
        Some(Request::Auth(change)) => auth.apply(batch.transaction(), change).map(|revision| {
            Response::Auth(ResponseHeader {
                revision: i64::try_from(revision).unwrap_or(i64::MAX),
                ..Default::default()
            })
        }),
        Some(Request::Alarm(change)) => alarms.apply(batch.transaction(), change).map(Response::Alarm),
        None => return Ok(CommandResult::Empty),
    };
    leases.track(batch.events_since(from));
    match outcome {
        Ok(response) => Ok(CommandResult::Applied(CommandResponse {
            response: Some(response),
        })),
        Err(MvccError::Storage(msg)) => Err(storage_err(msg)),
        Err(err) => Ok(CommandResult::Rejected(err)),
    }
}

/// Revokes the leases the leader found expired; those already gone are skipped.
fn expire(batch: &mut WriteBatch<'_>, leases: &mut LeaseState, ids: &[i64]) -> Result<Response, MvccError> {
    for &id in ids {
        match leases.revoke(batch, id) {
            Ok(()) | Err(MvccError::LeaseNotFound) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Response::LeaseInternal(ResponseHeader {
        revision: batch.current_revision(),
        ..Default::default()
    }))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut pending = Vec::new();
        while let Some(item) = entries.next().await {
            pending.push(item?);
        }
        if pending.is_empty() {
            return Ok(());
        }
        let mut applied = self.applied;
        // Written only if the batch changes it (see `write_applied_state`).
        let mut new_membership = None;
        let mut leases = self.lessor.lock();
        let mut auth = AuthBatch::new(&self.auth);
        let mut alarms = AlarmBatch::new(&self.alarms);
        let mut batch = self.store.begin_write().map_err(storage_err)?;
        let mut answers = Vec::with_capacity(pending.len());
        for (entry, responder) in pending {
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::Empty,
                EntryPayload::Normal(cmd) => {
                    apply_command(&mut batch, &mut leases, &mut auth, &mut alarms, cmd)?
                }
                EntryPayload::Membership(m) => {
                    new_membership = Some(StoredMembership::new(Some(entry.log_id()), m.clone()));
                    CommandResult::Empty
                }
            };
            applied = Some(entry.log_id());
            answers.push((responder, result));
        }
        write_applied_state(batch.transaction(), &applied, new_membership.as_ref())?;
        let durable = self.last_sync.elapsed() >= SYNC_INTERVAL;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        let started = Instant::now();
        let committed = batch.commit(durability).map_err(storage_err)?;
        crate::metrics::observe(&crate::metrics::get().backend_commit, started.elapsed());
        crate::failpoint::hit("apply-after");
        drop(leases);
        alarms.publish();
        if auth.publish() {
            // Before this batch's events go out: no watcher sees a change after losing the
            // right to.
            self.cancel_refused_watchers();
        }
        self.hub.notify(committed.revision, &committed.events);
        if durable {
            self.last_sync = Instant::now();
        }
        self.applied = applied;
        if let Some(membership) = new_membership {
            self.membership = membership;
        }
        for (responder, result) in answers {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Make everything applied so far durable, so the log a snapshot lets openraft purge is
        // never needed to rebuild our own state after a crash.
        if let Err(err) = self.sync() {
            tracing::error!(error = %err, "durable commit before snapshot failed");
        }
        SnapshotBuilder::new(self.store.clone(), self.snapshot_dir.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        // The file in place first, durably. A member that crashed after the store took the
        // snapshot's contents but before the file was kept would restart with a state that no
        // snapshot and no log explains (openraft purges its log up to the applied index it
        // finds, then finds an older snapshot, and stops for good). The other way round,
        // openraft finds the kept snapshot newer than the store at start and installs it again.
        let installed = snapshot::keep(&self.snapshot_dir, meta, snapshot)?;
        let kept = SnapshotFile {
            path: installed.clone(),
        };
        snapshot::install(&self.store, meta, &kept)?;
        // Watchers catch up on the revisions the snapshot brought, which no notify carried.
        self.hub.restored();
        self.lessor.reload(&self.store).map_err(storage_err)?;
        let db = self.store.database();
        self.auth.reload(&db).map_err(storage_err)?;
        self.alarms.reload(&db).map_err(storage_err)?;
        self.cancel_refused_watchers();
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.last_sync = Instant::now();
        tracing::info!(snapshot = %installed.display(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        snapshot::current(&self.snapshot_dir)
    }
}

//! A member, assembled in one place, top to bottom (as openraft's examples keep it in one
//! `app.rs`): its identity, the Raft log, the state's database with the MVCC store, the lessor
//! and the watch hub over it, the state machine that applies to them, the network to the other
//! members, and Raft over all of it. `crate::server` then serves it.
//!
//! Layout of `--data-dir`:
//! - `member/identity.json`: this member's identity, written once at bootstrap;
//! - `member/wal/`: the Raft log, vote and committed log id (see [`crate::raft::wal`]);
//! - `member/db.redb`: the state machine (MVCC tables + applied log id), no fsync per commit;
//! - `member/snap/`: the newest snapshot.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use openraft::RaftMetrics;
use openraft::async_runtime::WatchReceiver;
use redb::Database;

use crate::alarm::AlarmStore;
use crate::auth::AuthStore;
use crate::config::{ClusterState, Config};
use crate::error::Error;
use crate::lease::Lessor;
use crate::mvcc::MvccStore;
use crate::raft::durable::sync_dir;
use crate::raft::identity::{self, Identity};
use crate::raft::log_store::{InPlace, LogStore};
use crate::raft::network::{PeerNetwork, Peers};
use crate::raft::state_machine::StateMachine;
use crate::raft::{Raft, TypeConfig, timing};
use crate::watch::WatchHub;

/// A running member: Raft and the store it applies to.
pub struct Member {
    /// The openraft handle.
    pub raft: Raft,
    /// The MVCC store the state machine applies to; reads go straight to it.
    pub store: Arc<MvccStore>,
    /// Every lease and its keys.
    pub lessor: Arc<Lessor>,
    /// Users, roles and permissions, and the tokens this member issued.
    pub auth: Arc<AuthStore>,
    /// The raised alarms.
    pub alarms: Arc<AlarmStore>,
    /// Delivers committed changes to watchers.
    pub hub: Arc<WatchHub>,
    /// Who we are.
    pub identity: Identity,
    /// Path of the state machine's database file.
    pub db_path: std::path::PathBuf,
    /// Directory of snapshots (incoming ones are received there too).
    pub snapshot_dir: std::path::PathBuf,
    /// Channels to the other members.
    pub peers: Peers,
    /// Set once an orderly shutdown begins (Raft stopping is then expected).
    pub stopping: Arc<AtomicBool>,
    /// What the hot paths ask of Raft's state, kept by [`follow_server_metrics`].
    raft_view: Arc<RaftView>,
}

/// Raft's term and whether this member leads, copied out of openraft's metrics as they change:
/// every answer's header carries the term and every write asks whether to forward, and reading
/// either from the metrics takes their lock.
#[derive(Debug)]
struct RaftView {
    term: AtomicU64,
    leading: AtomicBool,
}

/// Name of the state machine's database in the member directory.
pub const DB_FILE: &str = "db.redb";

fn storage(err: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(err.to_string()))
}

fn open_db(path: &Path) -> Result<Database, Error> {
    crate::mvcc::open_database(path).map_err(|e| storage(format!("{}: {e}", path.display())))
}

/// Keeps the log store told whether this member is the only voter (its own fdatasync then
/// commits, so its appends may be written in place), and `view` at Raft's current term and
/// role, until Raft stops.
async fn follow_server_metrics(raft: Raft, in_place: Arc<InPlace>, view: Arc<RaftView>) {
    let mut server = raft.server_metrics();
    loop {
        let (voters, current_term, leading) = {
            let metrics = server.borrow_watched();
            let voters = metrics.membership_config.membership().voter_ids().count();
            (voters, metrics.vote.leader_id.term, metrics.state.is_leader())
        };
        in_place.set_lone_voter(voters == 1);
        view.term.store(current_term, Ordering::Relaxed);
        view.leading.store(leading, Ordering::Relaxed);
        if server.changed().await.is_err() {
            return;
        }
    }
}

impl Member {
    /// Opens (or creates) the data directory and starts Raft; bootstraps a new cluster on first
    /// start.
    pub async fn start(config: &Config) -> Result<Self, Error> {
        // The data directory.
        let member_dir = config.data_dir.join("member");
        if !member_dir.exists() {
            std::fs::create_dir_all(&member_dir)?;
            sync_dir(&config.data_dir)?;
        }
        // Who this member is (a member joining an existing cluster asks it for its ID), and the
        // credentials its calls to other members carry.
        let peer_tls = config
            .peer_tls
            .as_ref()
            .map(|tls| tls.client_config())
            .transpose()?;
        let peers = Peers::new(peer_tls);
        if let Some(own) = config.advertise_peer_urls.first() {
            crate::raft::network::faults::init(own);
            crate::failpoint::init(own);
        }
        let derived = identity::member_id(&config.advertise_peer_urls, &config.initial_cluster_token);
        peers.credentials().set(derived, None);
        let identity = identity::load_identity(&member_dir.join("identity.json"), config, &peers).await?;
        peers
            .credentials()
            .set(identity.member_id, Some(identity.cluster_id));
        // The Raft log.
        let log_store = LogStore::open(&member_dir.join("wal"), config.log_cache_bytes)?;
        let in_place = log_store.in_place();
        in_place.set_member_id(identity.member_id);

        // The state: one database for the MVCC store and the lease table, the watch hub fed
        // from it, and the state machine that applies committed commands to all three.
        let db_path = member_dir.join(DB_FILE);
        crate::backup::save::sweep(&member_dir)?;
        crate::defrag::sweep(&db_path)?;
        let db = Arc::new(open_db(&db_path)?);
        let store = Arc::new(MvccStore::open(db.clone())?);
        let lessor = Arc::new(Lessor::open(&store)?);
        let auth = AuthStore::open(&db, config.auth.clone())?;
        let alarms = AlarmStore::open(&db)?;
        let snapshot_dir = member_dir.join("snap");
        let hub = WatchHub::new(store.clone(), config.max_request_bytes);
        let state_machine = StateMachine::open(
            store.clone(),
            lessor.clone(),
            auth.clone(),
            alarms.clone(),
            hub.clone(),
            snapshot_dir.clone(),
        )?;

        // Raft over the log, the state machine and the network to the other members.
        let raft = Raft::new(
            identity.member_id,
            Arc::new(timing::raft_config(config)?),
            PeerNetwork::new(peers.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        let raft_view = Arc::new(RaftView {
            term: AtomicU64::new(raft.metrics().borrow_watched().current_term),
            leading: AtomicBool::new(false),
        });
        tokio::spawn(follow_server_metrics(raft.clone(), in_place, raft_view.clone()));

        // A member of a new cluster bootstraps it on its first start.
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        // A member restored from a backup (`concord snapshot restore`) bootstraps with the
        // membership the restore recorded, whatever the flags say (as etcd's restored WAL does).
        let restored = identity::read_bootstrap(&member_dir)?;
        let was_restored = restored.is_some();
        let bootstrap = match restored {
            Some(members) => Some(members),
            None if config.initial_cluster_state == ClusterState::New => {
                Some(identity::initial_members(config))
            }
            None => None,
        };
        if let Some(members) = bootstrap.filter(|_| !initialized) {
            let voters: BTreeSet<u64> = members.keys().copied().collect();
            tracing::info!(member = %format!("{:x}", identity.member_id), ?voters, restored = was_restored, "bootstrapping a new cluster");
            raft.initialize(members)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        if was_restored {
            // Raft's log holds the membership now.
            std::fs::remove_file(member_dir.join(identity::BOOTSTRAP_FILE))?;
            sync_dir(&member_dir)?;
        }
        Ok(Self {
            raft,
            store,
            lessor,
            auth,
            alarms,
            hub,
            identity,
            db_path,
            snapshot_dir,
            peers,
            stopping: Arc::new(AtomicBool::new(false)),
            raft_view,
        })
    }

    /// Raft's current term, as response headers report it (it may trail a term change by the
    /// moment the change takes to be observed, as etcd's header may).
    pub fn current_term(&self) -> u64 {
        self.raft_view.term.load(Ordering::Relaxed)
    }

    /// Whether this member leads, as last observed (it may trail a change of role by the
    /// moment the change takes to be observed: use it to pick a path, never to decide that a
    /// write is safe).
    pub fn seems_leader(&self) -> bool {
        self.raft_view.leading.load(Ordering::Relaxed)
    }

    /// Reads Raft's current metrics without copying them.
    pub fn with_metrics<T>(&self, read: impl FnOnce(&RaftMetrics<TypeConfig>) -> T) -> T {
        let metrics = self.raft.metrics();
        let current = metrics.borrow_watched();
        read(&current)
    }

    /// The leader this member knows of. None once this member has been removed from the
    /// cluster: a removed leader's Raft goes on naming itself, and nothing newer reaches it.
    pub fn leader(&self) -> Option<u64> {
        let me = self.identity.member_id;
        self.with_metrics(|m| {
            let member = m.membership_config.membership().get_node(&me).is_some();
            m.current_leader.filter(|_| member)
        })
    }

    /// Stops Raft; the databases close when the last handle drops.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(error = %err, "raft shutdown");
        }
    }
}

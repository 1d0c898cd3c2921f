//! Starting a Raft member on its data directory.
//!
//! Layout of `--data-dir`:
//! - `member/identity.json`: this member's identity, written once at bootstrap;
//! - `member/wal/`: the Raft log, vote and committed log id (see [`wal`](super::wal));
//! - `member/db.redb`: the state machine (MVCC tables + applied log id), no fsync per commit;
//! - `member/snap/`: the newest snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::async_runtime::WatchReceiver;
use openraft::{Config as RaftConfig, RaftMetrics, SnapshotPolicy};
use redb::Database;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::durable::{sync_dir, write_atomically};
use super::log_store::LogStore;
use super::network::{PEER_MESSAGE_BYTES, PeerNetwork, Peers};
use super::state_machine::StateMachine;
use super::{Raft, TypeConfig};
use crate::config::{ClusterState, Config, InitialMember};
use crate::error::Error;
use crate::lease::Lessor;
use crate::mvcc::MvccStore;
use crate::watch::WatchHub;

/// What every member knows of another: openraft's node type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The member's name.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs (empty until the member has started and published them).
    pub client_urls: Vec<String>,
}

/// This member's identity, fixed at bootstrap and kept in `member/identity.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Member ID (etcd's derivation: SHA-1 of sorted peer URLs and the cluster token).
    pub member_id: u64,
    /// Cluster ID (SHA-1 of the sorted member IDs).
    pub cluster_id: u64,
    /// Member name.
    pub name: String,
}

/// A running Raft member and the store it applies to.
pub struct RaftNode {
    /// The openraft handle.
    pub raft: Raft,
    /// The MVCC store the state machine applies to; reads go straight to it.
    pub store: Arc<MvccStore>,
    /// Every lease and its keys.
    pub lessor: Arc<Lessor>,
    /// Delivers committed changes to watchers.
    pub hub: Arc<WatchHub>,
    /// The state machine's database (for size statistics).
    pub db: Arc<Database>,
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
}

/// etcd's member ID: the first 8 bytes of SHA-1 over the sorted peer URLs and the token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = Sha1::new();
    for url in &urls {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize())
}

/// etcd's cluster ID: the first 8 bytes of SHA-1 over the sorted member IDs (big-endian).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

fn storage(err: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(err.to_string()))
}

/// How long a joining member keeps asking the existing members for the cluster's ID.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the stored identity, or derives and stores it (atomically, durably) on first start.
/// A new cluster's ID comes from its initial members; a member joining an existing cluster
/// asks the others for it (etcd's rule: members added later do not change the cluster's ID).
async fn load_identity(path: &Path, config: &Config, peers: &Peers) -> Result<Identity, Error> {
    match std::fs::read(path) {
        Ok(bytes) => {
            return serde_json::from_slice(&bytes).map_err(|e| storage(format!("{}: {e}", path.display())));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(storage(format!("{}: {err}", path.display()))),
    }
    let member_id = member_id(&config.advertise_peer_urls, &config.initial_cluster_token);
    let cluster_id = match config.initial_cluster_state {
        ClusterState::New => cluster_id(&initial_members(config).into_keys().collect::<Vec<_>>()),
        ClusterState::Existing => existing_cluster_id(config, member_id, peers).await?,
    };
    let identity = Identity {
        member_id,
        cluster_id,
        name: config.name.clone(),
    };
    write_atomically(path, &serde_json::to_vec(&identity).map_err(storage)?)?;
    Ok(identity)
}

/// Asks the other members in `--initial-cluster` for the cluster's ID until one answers.
async fn existing_cluster_id(config: &Config, me: u64, peers: &Peers) -> Result<u64, Error> {
    let others: Vec<MemberNode> = initial_members(config)
        .into_iter()
        .filter(|(id, _)| *id != me)
        .map(|(_, node)| node)
        .collect();
    if others.is_empty() {
        return Err(Error::Config(
            "--initial-cluster-state existing needs the existing members in --initial-cluster".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        for node in &others {
            match peers.cluster_info(node).await.map(|info| info.cluster_id) {
                Ok(id) => {
                    tracing::info!(cluster = %format!("{id:x}"), from = %node.name, "joining an existing cluster");
                    return Ok(id);
                }
                Err(err) => tracing::debug!(member = %node.name, error = %err, "asking for the cluster ID"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Config(format!(
                "no existing member in --initial-cluster answered within {JOIN_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The bootstrap membership. Every member must initialize with exactly the same one (its
/// entry at log index 0 is never replicated), so it holds only what `--initial-cluster` says;
/// each member then publishes its client URLs through Raft (`api::cluster::publish`).
pub fn initial_members(config: &Config) -> BTreeMap<u64, MemberNode> {
    config
        .initial_cluster
        .iter()
        .map(|InitialMember { name, peer_urls }| {
            let node = MemberNode {
                name: name.clone(),
                peer_urls: peer_urls.clone(),
                client_urls: Vec::new(),
            };
            (member_id(peer_urls, &config.initial_cluster_token), node)
        })
        .collect()
}

/// openraft's timers for etcd's flags.
///
/// etcd's follower campaigns after a random `[E, 2E)` without hearing from the leader, where
/// `E` is `--election-timeout`. An openraft follower waits out the leader's lease
/// (`election_timeout_max` since the last heartbeat, during which it also refuses to vote for
/// anyone else) and then a random `[election_timeout_min, election_timeout_max)`. Mapping `E`
/// onto `election_timeout_min` as etcd's flag reads would put the first campaign at
/// `[3E, 4E)`. With `max = E/2` and `min = E/4` a follower campaigns `[0.75E, E)` after the
/// last heartbeat, so a dead leader is replaced within `--election-timeout`, as the flag
/// promises, while the randomised spread that keeps votes from splitting stays `E/4`. etcd's
/// rule `E >= 5 × heartbeat` keeps `min` above the heartbeat interval, as openraft requires.
fn raft_config(config: &Config) -> Result<RaftConfig, Error> {
    let election = config.election_timeout.as_millis() as u64;
    // A batch of entries, each at most a request's size, must fit in one peer message.
    let entry_bytes = config.max_request_bytes.max(1) + 4096;
    let max_payload_entries = (PEER_MESSAGE_BYTES / entry_bytes).clamp(1, 300) as u64;
    RaftConfig {
        max_payload_entries,
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: election / 4,
        election_timeout_max: election / 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Config(e.to_string()))
}

fn open_db(path: &Path) -> Result<Database, Error> {
    Database::create(path).map_err(|e| storage(format!("{}: {e}", path.display())))
}

impl RaftNode {
    /// Opens (or creates) the data directory and starts Raft; bootstraps a new cluster on first start.
    pub async fn start(config: &Config) -> Result<Self, Error> {
        let member_dir = config.data_dir.join("member");
        if !member_dir.exists() {
            std::fs::create_dir_all(&member_dir)?;
            sync_dir(&config.data_dir)?;
        }
        let peers = Peers::default();
        let derived = member_id(&config.advertise_peer_urls, &config.initial_cluster_token);
        peers.credentials().set(derived, None);
        let identity = load_identity(&member_dir.join("identity.json"), config, &peers).await?;
        peers
            .credentials()
            .set(identity.member_id, Some(identity.cluster_id));
        let log_store = LogStore::open(&member_dir.join("wal"))?;

        let db_path = member_dir.join("db.redb");
        let db = Arc::new(open_db(&db_path)?);
        let store = Arc::new(MvccStore::open(db.clone())?);
        let lessor = Arc::new(Lessor::open(&store)?);
        let snapshot_dir = member_dir.join("snap");
        let hub = WatchHub::new(store.clone(), config.max_request_bytes);
        let state_machine =
            StateMachine::open(store.clone(), lessor.clone(), hub.clone(), snapshot_dir.clone())?;

        let raft = Raft::new(
            identity.member_id,
            Arc::new(raft_config(config)?),
            PeerNetwork::new(peers.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if !initialized && config.initial_cluster_state == ClusterState::New {
            let members = initial_members(config);
            let voters: BTreeSet<u64> = members.keys().copied().collect();
            tracing::info!(member = %format!("{:x}", identity.member_id), ?voters, "bootstrapping a new cluster");
            raft.initialize(members)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        Ok(Self {
            raft,
            store,
            lessor,
            hub,
            db,
            identity,
            db_path,
            snapshot_dir,
            peers,
            stopping: Arc::new(AtomicBool::new(false)),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcds_for_the_default_configuration() {
        // etcd with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}

//! Who the members are: what every member knows of another ([`MemberNode`], openraft's node
//! type), this member's [`Identity`], the IDs etcd derives from URLs and the cluster token
//! (so `concord` and `etcd` with the same flags report the same IDs), and the members
//! `--initial-cluster` names.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::durable::write_atomically;
use super::network::Peers;
use crate::config::{ClusterState, Config, InitialMember};
use crate::error::Error;

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
pub async fn load_identity(path: &Path, config: &Config, peers: &Peers) -> Result<Identity, Error> {
    match std::fs::read(path) {
        Ok(bytes) => {
            return serde_json::from_slice(&bytes).map_err(|e| storage(format!("{}: {e}", path.display())));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(storage(format!("{}: {err}", path.display()))),
    }
    let identity = match config.initial_cluster_state {
        ClusterState::New => new_cluster_identity(config),
        ClusterState::Existing => {
            let member_id = member_id(&config.advertise_peer_urls, &config.initial_cluster_token);
            Identity {
                member_id,
                cluster_id: existing_cluster_id(config, member_id, peers).await?,
                name: config.name.clone(),
            }
        }
    };
    write_identity(path, &identity)?;
    Ok(identity)
}

/// The identity of a member of a new cluster bootstrapped from `config`'s `--initial-cluster`.
pub fn new_cluster_identity(config: &Config) -> Identity {
    Identity {
        member_id: member_id(&config.advertise_peer_urls, &config.initial_cluster_token),
        cluster_id: cluster_id(&initial_members(config).into_keys().collect::<Vec<_>>()),
        name: config.name.clone(),
    }
}

/// Stores `identity` at `path`, atomically and durably.
pub fn write_identity(path: &Path, identity: &Identity) -> Result<(), Error> {
    Ok(write_atomically(
        path,
        &serde_json::to_vec(identity).map_err(storage)?,
    )?)
}

/// Name, in the member directory, of the membership a restored member bootstraps with
/// (`concord snapshot restore` writes it; the first start initializes Raft with it and removes it).
pub const BOOTSTRAP_FILE: &str = "bootstrap.json";

/// Stores the membership a restored member bootstraps its new cluster with.
pub fn write_bootstrap(member_dir: &Path, members: &BTreeMap<u64, MemberNode>) -> Result<(), Error> {
    Ok(write_atomically(
        &member_dir.join(BOOTSTRAP_FILE),
        &serde_json::to_vec(members).map_err(storage)?,
    )?)
}

/// The membership a restored member bootstraps with, if `concord snapshot restore` left one.
pub fn read_bootstrap(member_dir: &Path) -> Result<Option<BTreeMap<u64, MemberNode>>, Error> {
    let path = member_dir.join(BOOTSTRAP_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| storage(format!("{}: {e}", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(storage(format!("{}: {err}", path.display()))),
    }
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
                Err(err) => tracing::debug!(member = %node.name, error = ?err, "asking for the cluster ID"),
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

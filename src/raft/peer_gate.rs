//! Who may call this member's peer service: the members of its own cluster.
//!
//! Every peer call names its sender and the sender's cluster (see `super::network`'s
//! [`Credentials`](super::network::Credentials)). Like etcd, which answers a peer of another
//! cluster `412 cluster ID mismatch`, a member refuses a call from another cluster (two
//! clusters sharing peer URLs by mistake, a member started with the wrong data directory), and
//! it refuses a sender that is not a member: a removed member still running, or anything else
//! that speaks the protocol. Refusals are logged (at most once a second).
//!
//! A member's view of the membership can lag: one that was down while a new member joined and
//! became leader does not know its new leader yet, and must still accept it, or it could never
//! catch up. So a sender this member does not know is confirmed by asking the members it does
//! know (their `ClusterInfo` lists every member), at most one such lookup at a time, and
//! remembered for a while. A member that has no membership yet (it is joining) knows the
//! members named in its `--initial-cluster`.
//!
//! This keeps mistakes and strangers out; it is not authentication: anyone who can reach the
//! peer port can claim a member's ID. Peer TLS (with the auth issue) closes that.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::metadata::MetadataMap;

use super::network::{CLUSTER_HEADER, MEMBER_HEADER, Peers};
use super::{MemberNode, Raft, membership};

/// How long a sender confirmed by another member stays confirmed.
const CONFIRMED_FOR: Duration = Duration::from_secs(60);
/// The least time between two lookups of unknown senders (a stranger sending many IDs does not
/// make this member ask around for each).
const LOOKUP_PAUSE: Duration = Duration::from_millis(200);
/// How often a refusal is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// What a call needs of its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `ClusterInfo`, which a joining member asks before it knows the cluster's ID.
    ClusterInfo,
    /// Every other call.
    Raft,
}

/// Checks the senders of peer calls; see the module docs.
pub struct PeerGate {
    raft: Raft,
    peers: Peers,
    me: u64,
    cluster_id: u64,
    /// The members named by `--initial-cluster`, trusted while this member has no membership.
    initial: BTreeMap<u64, MemberNode>,
    /// Senders other members confirmed, and when.
    confirmed: Mutex<HashMap<u64, Instant>>,
    /// When the last lookup started; held while one runs.
    lookup: tokio::sync::Mutex<Option<Instant>>,
    /// When a refusal was last logged (milliseconds since `started`).
    logged_ms: AtomicU64,
    started: Instant,
}

impl PeerGate {
    /// A gate for member `me` of cluster `cluster_id`, whose `--initial-cluster` named `initial`.
    pub fn new(
        raft: Raft,
        peers: Peers,
        me: u64,
        cluster_id: u64,
        initial: BTreeMap<u64, MemberNode>,
    ) -> Self {
        Self {
            raft,
            peers,
            me,
            cluster_id,
            initial,
            confirmed: Mutex::new(HashMap::new()),
            lookup: tokio::sync::Mutex::new(None),
            logged_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// This member's ID.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// The cluster this member belongs to.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Admits a call with `metadata` and returns its sender's ID, or the status it is refused
    /// with.
    pub async fn admit(&self, metadata: &MetadataMap, call: Call) -> Result<u64, Status> {
        let refused = self.check(metadata, call).await;
        if let Err(status) = &refused {
            self.log_refusal(metadata, status);
        }
        refused
    }

    async fn check(&self, metadata: &MetadataMap, call: Call) -> Result<u64, Status> {
        let sender = header_id(metadata, MEMBER_HEADER)
            .ok_or_else(|| Status::unauthenticated(format!("no valid {MEMBER_HEADER}")))?;
        match header_id(metadata, CLUSTER_HEADER) {
            Some(cluster) if cluster != self.cluster_id => {
                return Err(Status::failed_precondition(format!(
                    "cluster ID mismatch: this is cluster {:x}, the sender's is {cluster:x}",
                    self.cluster_id
                )));
            }
            Some(_) => {}
            None if call == Call::ClusterInfo => {}
            None => return Err(Status::unauthenticated(format!("no valid {CLUSTER_HEADER}"))),
        }
        if sender == self.me {
            return Err(Status::permission_denied("a member does not call itself"));
        }
        if self.known(sender) || self.confirm(sender).await {
            return Ok(sender);
        }
        Err(Status::permission_denied(format!(
            "member {sender:x} is not a member of cluster {:x}",
            self.cluster_id
        )))
    }

    /// The members this member knows: its membership, or while it has none, `--initial-cluster`.
    fn known_members(&self) -> BTreeMap<u64, MemberNode> {
        let members: BTreeMap<u64, MemberNode> = membership::members(&self.raft)
            .into_iter()
            .map(|(id, node, _)| (id, node))
            .collect();
        if members.is_empty() {
            self.initial.clone()
        } else {
            members
        }
    }

    fn known(&self, sender: u64) -> bool {
        let member =
            membership::is_member(&self.raft, sender).unwrap_or_else(|| self.initial.contains_key(&sender));
        if member {
            return true;
        }
        let confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        confirmed
            .get(&sender)
            .is_some_and(|at| at.elapsed() < CONFIRMED_FOR)
    }

    /// Asks the members this member knows whether `sender` is one of them.
    async fn confirm(&self, sender: u64) -> bool {
        let mut last = self.lookup.lock().await;
        // Another lookup may have confirmed it while this one waited.
        if self.known(sender) {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < LOOKUP_PAUSE) {
            return false;
        }
        *last = Some(Instant::now());
        for (id, node) in self.known_members() {
            if id == self.me || id == sender {
                continue;
            }
            let Ok(info) = self.peers.cluster_info(&node).await else {
                continue;
            };
            if info.cluster_id == self.cluster_id && info.member_ids.contains(&sender) {
                tracing::info!(sender = %format!("{sender:x}"), by = %node.name, "a member this one did not know yet was confirmed");
                let mut confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
                confirmed.retain(|_, at| at.elapsed() < CONFIRMED_FOR);
                confirmed.insert(sender, Instant::now());
                return true;
            }
        }
        false
    }

    fn log_refusal(&self, metadata: &MetadataMap, status: &Status) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        self.logged_ms.store(now.max(1), Ordering::Relaxed);
        let header = |name| metadata.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
        tracing::warn!(
            sender = header(MEMBER_HEADER),
            cluster = header(CLUSTER_HEADER),
            reason = status.message(),
            "refused a peer call"
        );
    }
}

/// A hex ID from `metadata`.
fn header_id(metadata: &MetadataMap, name: &str) -> Option<u64> {
    let text = metadata.get(name)?.to_str().ok()?;
    u64::from_str_radix(text, 16).ok()
}

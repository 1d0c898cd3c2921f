//! Membership changes (etcd's `member add/remove/update/promote`, and each member publishing
//! its client URLs), run by the leader through openraft's joint consensus.
//!
//! A follower hands a [`MembershipChange`] to the leader (`RaftPeer.ChangeMembership`); the
//! leader checks it with etcd's rules and proposes it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, RaftMetrics};
use serde::{Deserialize, Serialize};

use super::{MemberNode, Raft, TypeConfig};
use crate::error::Error;

/// A learner is in sync when it has at least this share of the leader's log (etcd's rule).
const READY_PERCENT: u64 = 90;

/// etcd's `HealthInterval`: a voter that acknowledged the leader this recently counts as started.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// One change to the cluster's members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new member (a learner first; a voter too unless `learner`).
    Add {
        /// Its ID.
        id: u64,
        /// What is known of it.
        node: MemberNode,
        /// Stay a learner.
        learner: bool,
    },
    /// Remove a member.
    Remove(u64),
    /// Replace a member's peer URLs.
    UpdatePeerUrls(u64, Vec<String>),
    /// A member's name and client URLs, published by the member itself when it starts.
    Publish(u64, String, Vec<String>),
    /// Make a learner that has caught up a voter.
    Promote(u64),
}

/// The membership in `metrics`: (id, node, is learner), by id.
pub fn members_in(metrics: &RaftMetrics<TypeConfig>) -> Vec<(u64, MemberNode, bool)> {
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| (*id, node.clone(), !voters.contains(id)))
        .collect()
}

/// The membership as this member sees it: (id, node, is learner), by id.
pub fn members(raft: &Raft) -> Vec<(u64, MemberNode, bool)> {
    members_in(&raft.metrics().borrow_watched())
}

/// Whether `id` is a member (voter or learner) as this member sees it; `None` while this member
/// has no membership (it is joining).
pub fn is_member(raft: &Raft, id: u64) -> Option<bool> {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    membership.nodes().next()?;
    Some(membership.get_node(&id).is_some())
}

/// Member `id` as this member sees it: its node and whether it is a learner.
pub fn member(raft: &Raft, id: u64) -> Option<(MemberNode, bool)> {
    members(raft)
        .into_iter()
        .find(|(m, _, _)| *m == id)
        .map(|(_, node, learner)| (node, learner))
}

fn node_of(raft: &Raft, id: u64) -> Result<(MemberNode, bool), Error> {
    member(raft, id).ok_or(Error::MemberNotFound)
}

/// True if learner `id` has replicated at least [`READY_PERCENT`] of the leader's log.
fn in_sync(raft: &Raft, id: u64) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let last = m.last_log_index.unwrap_or(0);
    let matched = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map_or(0, |log_id| log_id.index);
    matched * 100 >= last * READY_PERCENT
}

/// etcd's strict reconfiguration check for a new voter, under joint consensus: the voters that
/// acknowledged this leader within [`HEALTH_INTERVAL`] (and the leader itself) must already be a
/// quorum of the configuration that includes the new voter, so that the change commits without
/// it. Otherwise the change could never commit, yet would be in effect, and the cluster would
/// have no quorum until the new member starts (forever, if its URL is wrong). etcd makes that
/// exception for a one-member cluster; Concord refuses it: add the member as a learner, start
/// it, then promote it.
fn enough_started_for_one_more_voter(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    let acked_lately = |id: &u64| {
        m.heartbeat
            .as_ref()
            .and_then(|acks| acks.get(id).cloned().flatten())
            .is_some_and(|at| at.elapsed() < HEALTH_INTERVAL)
    };
    let started = voters
        .iter()
        .filter(|id| **id == m.id || acked_lately(id))
        .count();
    started > voters.len().div_ceil(2)
}

/// One membership change at a time: openraft computes a change from the membership committed
/// so far, so two changes in flight at once could lose one of them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `change` on this member, which must be the leader.
pub async fn apply(raft: &Raft, change: MembershipChange) -> Result<(), Error> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let changes: Vec<ChangeMembers<u64, MemberNode>> = match change {
        MembershipChange::Add { id, node, learner } => {
            let taken = members(raft)
                .iter()
                .any(|(_, n, _)| n.peer_urls.iter().any(|u| node.peer_urls.contains(u)));
            if taken {
                return Err(Error::PeerUrlExists);
            }
            if !learner && !enough_started_for_one_more_voter(raft) {
                return Err(Error::NotEnoughStartedMembers);
            }
            let mut changes = vec![ChangeMembers::AddNodes(BTreeMap::from([(id, node)]))];
            if !learner {
                changes.push(ChangeMembers::AddVoterIds(BTreeSet::from([id])));
            }
            changes
        }
        MembershipChange::Remove(id) => {
            let (_, learner) = node_of(raft, id)?;
            // Without `retain`, removing a voter drops its node too. A second change would
            // run on a leader that may have just removed itself (openraft asserts against it).
            if learner {
                vec![ChangeMembers::RemoveNodes(BTreeSet::from([id]))]
            } else {
                vec![ChangeMembers::RemoveVoters(BTreeSet::from([id]))]
            }
        }
        MembershipChange::UpdatePeerUrls(id, peer_urls) => {
            let (node, _) = node_of(raft, id)?;
            let node = MemberNode { peer_urls, ..node };
            vec![ChangeMembers::SetNodes(BTreeMap::from([(id, node)]))]
        }
        MembershipChange::Publish(id, name, client_urls) => {
            let (node, _) = node_of(raft, id)?;
            let node = MemberNode {
                name,
                client_urls,
                ..node
            };
            vec![ChangeMembers::SetNodes(BTreeMap::from([(id, node)]))]
        }
        MembershipChange::Promote(id) => {
            let (_, learner) = node_of(raft, id)?;
            if !learner {
                return Err(Error::NotLearner);
            }
            if !in_sync(raft, id) {
                return Err(Error::LearnerNotReady);
            }
            vec![ChangeMembers::AddVoterIds(BTreeSet::from([id]))]
        }
    };
    for change in changes {
        raft.change_membership(change, false)
            .await
            .map_err(|err| match super::peer_error::write_refused(&err) {
                // Leadership moved before the log took the change: the caller retries.
                Ok(Some(_)) => Error::NoLeader,
                Ok(None) => Error::Raft(format!("membership change: {err}")),
                // In the log as leadership moved: it may still apply, so it is not retried.
                Err(unknown) => unknown,
            })?;
    }
    Ok(())
}

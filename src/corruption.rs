//! Corruption checks (etcd's `--experimental-initial-corrupt-check` and
//! `--experimental-corrupt-check-time`): members compare their HashKV at one revision over the
//! peer transport.
//!
//! Members at the same revision and compacted revision hold the same history rows, so their
//! hashes agree unless a store is damaged. The periodic check runs on the leader: it hashes its
//! own history at its current revision, asks every other member for the hash at that revision,
//! and raises the CORRUPT alarm (through Raft) for each member outside the largest group of
//! agreeing hashes (the leader's group wins a tie). Members that have not applied the revision
//! yet, have compacted differently, or do not answer are left out of that round. The initial
//! check runs before a member serves clients and refuses to start it if a reachable member
//! disagrees with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::AlarmType;
use concord_proto::raftpb::AlarmChange;
use concord_proto::raftpb::command::Request;

use crate::api::Api;
use crate::error::Error;
use crate::raft::membership;

/// How long a member has to answer a hash request.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the members answered for one revision: (member, hash) of those comparable with ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// The revision compared.
    pub revision: i64,
    /// This member's hash.
    pub mine: u32,
    /// Every member that answered at the same compacted revision, with its hash (this one
    /// included).
    pub hashes: BTreeMap<u64, u32>,
}

impl Comparison {
    /// The members whose hash is outside the largest group of equal hashes (a tie goes to the
    /// group holding this member's hash).
    pub fn outliers(&self) -> Vec<u64> {
        let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
        for hash in self.hashes.values() {
            *sizes.entry(*hash).or_default() += 1;
        }
        let mine = sizes.get(&self.mine).copied().unwrap_or(0);
        let truth = sizes
            .iter()
            .filter(|(hash, size)| **size > mine || (**size == mine && **hash == self.mine))
            .max_by_key(|(hash, size)| (**size, **hash == self.mine))
            .map_or(self.mine, |(hash, _)| *hash);
        self.hashes
            .iter()
            .filter(|(_, hash)| **hash != truth)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Hashes this member's history and asks every other member for theirs at the same revision.
pub async fn compare(api: &Arc<Api>) -> Result<Comparison, Error> {
    let me = api.node().identity.member_id;
    let mine = api.hash_kv(api.store().current_revision()).await?;
    let mut hashes = BTreeMap::from([(me, mine.hash)]);
    for (id, node, _) in membership::members(&api.node().raft) {
        if id == me {
            continue;
        }
        match api.node().peers.hash_kv(&node, mine.revision, ASK_TIMEOUT).await {
            Ok(theirs) if theirs.compact_revision == mine.compact_revision => {
                hashes.insert(id, theirs.hash);
            }
            Ok(theirs) => {
                tracing::debug!(member = %format!("{id:x}"), compacted = theirs.compact_revision, "not comparable: compacted elsewhere")
            }
            Err(err) => tracing::debug!(member = %format!("{id:x}"), error = ?err, "no hash this round"),
        }
    }
    Ok(Comparison {
        revision: mine.revision,
        mine: mine.hash,
        hashes,
    })
}

/// The start-up check: fails if a reachable member's hash at this member's revision differs.
pub async fn initial_check(api: &Arc<Api>) -> Result<(), Error> {
    let comparison = compare(api).await?;
    let me = api.node().identity.member_id;
    let differing: Vec<String> = comparison
        .hashes
        .iter()
        .filter(|(id, hash)| **id != me && **hash != comparison.mine)
        .map(|(id, _)| format!("{id:x}"))
        .collect();
    if !differing.is_empty() {
        return Err(Error::Config(format!(
            "found data inconsistency with peers {differing:?} at revision {} (--experimental-initial-corrupt-check)",
            comparison.revision
        )));
    }
    tracing::info!(
        revision = comparison.revision,
        compared = comparison.hashes.len(),
        "initial corruption check passed"
    );
    Ok(())
}

/// The periodic check, every `period` while this member leads, until `stop` completes.
pub async fn run(api: Arc<Api>, period: Option<Duration>, stop: impl std::future::Future<Output = ()>) {
    let Some(period) = period else { return };
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => {
                if !api.node().with_metrics(|m| m.state.is_leader()) {
                    continue;
                }
                match compare(&api).await {
                    Ok(comparison) => raise_for(&api, &comparison).await,
                    Err(err) => tracing::warn!(error = %err, "corruption check failed to run"),
                }
            }
        }
    }
}

async fn raise_for(api: &Api, comparison: &Comparison) {
    for member in comparison.outliers() {
        tracing::error!(member = %format!("{member:x}"), revision = comparison.revision, hashes = ?comparison.hashes, "hash mismatch: raising CORRUPT");
        let change = AlarmChange {
            member_id: member,
            alarm: AlarmType::Corrupt as i32,
            activate: true,
        };
        if let Err(err) = api.propose(Request::Alarm(change), 0).await {
            tracing::warn!(error = %err, "cannot raise the CORRUPT alarm");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(mine: u32, hashes: &[(u64, u32)]) -> Comparison {
        Comparison {
            revision: 10,
            mine,
            hashes: hashes.iter().copied().collect(),
        }
    }

    #[test]
    fn the_members_outside_the_largest_agreeing_group_are_the_outliers() {
        assert!(comparison(7, &[(1, 7), (2, 7), (3, 7)]).outliers().is_empty());
        assert_eq!(comparison(7, &[(1, 7), (2, 7), (3, 9)]).outliers(), [3]);
        assert_eq!(
            comparison(9, &[(1, 7), (2, 7), (3, 9)]).outliers(),
            [3],
            "a corrupt leader is outvoted"
        );
        assert_eq!(
            comparison(7, &[(1, 7), (2, 9)]).outliers(),
            [2],
            "a tie goes to this member"
        );
        assert!(comparison(7, &[(1, 7)]).outliers().is_empty());
    }
}

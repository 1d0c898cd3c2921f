//! One way to the leader: everything a member does on the leader's behalf or asks of it goes
//! through [`Api::on_leader`], with one timeout (the request timeout), one retry pause and one
//! mapping of what went wrong. Writes ([`Api::propose`]), read indexes
//! ([`Api::linearizable_read`]), membership changes ([`Api::change_membership`]) and the lease
//! relays (`super::lease`) are each a pair: what this member does when it leads, and which peer
//! call asks the leader when it does not (stock etcd clients do not follow redirects, so a
//! follower asks for them, as etcd's followers do).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concord_proto::raftpb::{command::Request, command_response::Response};
use openraft::errors::ForwardToLeader;
use openraft::{Instant as _, ReadPolicy};

use super::Api;
use crate::error::Error;
use crate::raft::admission::Origin;
use crate::raft::membership::{self, MembershipChange};
use crate::raft::peer_error::{self, PeerError};
use crate::raft::{Command, CommandResult, MemberNode, TypeConfig};

/// How long a member waits before asking again for a leader it could not reach, or while no
/// leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What trying a request on this member came to.
pub enum Here<T> {
    /// Done (this member leads), or failed for good.
    Done(Result<T, Error>),
    /// Another member leads: ask it.
    Ask(MemberNode),
    /// No member is known to lead (an election is under way, or quorum is lost): try again
    /// after a pause.
    NoLeader,
}

impl<T> Here<T> {
    /// What a member that serves a request only while it leads answers: the request served
    /// here, or `not leader` / `no leader` (the asking follower then asks again).
    pub fn served(self) -> Result<T, Error> {
        match self {
            Here::Done(answer) => answer,
            Here::Ask(_) => Err(Error::NotLeader),
            Here::NoLeader => Err(Error::NoLeader),
        }
    }

    /// What Raft refusing a request here with `err` means: `forward` names the leader, if any.
    fn refused(forward: Option<&ForwardToLeader<TypeConfig>>, err: &impl std::fmt::Display) -> Self {
        match forward {
            Some(ForwardToLeader {
                leader_node: Some(leader),
                ..
            }) => Here::Ask(leader.clone()),
            Some(_) => Here::NoLeader,
            None => Here::Done(Err(Error::Raft(err.to_string()))),
        }
    }
}

/// What one attempt came to.
enum Attempt<T> {
    Done(Result<T, Error>),
    /// Nothing happened anywhere (the request was refused before it entered any log, or never
    /// sent): try again after a pause. `no_leader`: because no leader is known at the moment.
    Again {
        no_leader: bool,
    },
}

impl Api {
    /// Runs a request that needs the leader until it is done, within the request timeout:
    /// `here` tries it on this member (done when this member leads, or it names the member to
    /// ask); `there` asks that member over the peer link. A leader that cannot be reached
    /// never saw the request, and one that no longer leads refused it before its log took it:
    /// both are asked again after a pause. A request that timed out while no leader was known
    /// fails with etcd's `no leader`, otherwise with `request timed out`.
    pub async fn on_leader<T, H, R>(
        &self,
        mut here: impl FnMut() -> H,
        mut there: impl FnMut(MemberNode) -> R,
    ) -> Result<T, Error>
    where
        H: Future<Output = Here<T>>,
        R: Future<Output = Result<T, PeerError>>,
    {
        let mut no_leader = false;
        let attempts = async {
            loop {
                let attempt = match here().await {
                    Here::Done(result) => Attempt::Done(result),
                    Here::NoLeader => Attempt::Again { no_leader: true },
                    Here::Ask(leader) => match there(leader).await {
                        Ok(answer) => Attempt::Done(Ok(answer)),
                        Err(PeerError::Unreachable(_)) => Attempt::Again { no_leader: false },
                        Err(PeerError::NotLeader | PeerError::NoLeader) => Attempt::Again { no_leader: true },
                        Err(err) => Attempt::Done(Err(err.into())),
                    },
                };
                match attempt {
                    Attempt::Done(result) => return result,
                    Attempt::Again { no_leader: none } => {
                        no_leader = none;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        };
        match tokio::time::timeout(self.request_timeout(), attempts).await {
            Ok(result) => result,
            Err(_) if no_leader => Err(Error::NoLeader),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// For requests this member serves only while it leads: whom to ask instead when it does
    /// not, or `None` when it does.
    pub fn elsewhere<T>(&self) -> Option<Here<T>> {
        // Copy what is needed: `member` reads the metrics again, and nesting two reads of the
        // metrics channel could deadlock against Raft publishing new metrics.
        let (is_leader, leader) = self
            .node()
            .with_metrics(|m| (m.state.is_leader(), m.current_leader));
        if is_leader {
            return None;
        }
        Some(
            match leader.and_then(|id| membership::member(&self.node().raft, id)) {
                Some((node, _)) => Here::Ask(node),
                None => Here::NoLeader,
            },
        )
    }

    /// The leader to forward to at once when this member follows one it knows: asking its own
    /// Raft first costs a trip through Raft's core to learn the same thing. `None` on the
    /// leader (one atomic load) and whenever in doubt; Raft itself then decides.
    fn known_leader_elsewhere(&self) -> Option<MemberNode> {
        if self.node().seems_leader() {
            return None;
        }
        match self.elsewhere::<()>() {
            Some(Here::Ask(leader)) => Some(leader),
            _ => None,
        }
    }

    /// Checks a write with the admission checks, proposes it through Raft and waits for it to
    /// be applied. On a follower the command is forwarded to the leader, which checks it again,
    /// proposes it and relays the answer. `auth_revision` is the auth revision the client's
    /// permissions were checked at ([`Api::authorize`]); 0 for this member's own writes.
    pub async fn propose(&self, request: Request, auth_revision: u64) -> Result<Response, Error> {
        let mut command = Command::from(request);
        command.0.auth_revision = auth_revision;
        let command = &command;
        self.admission().check(&command.0, Origin::Client)?;
        if let Some(request) = &command.0.request {
            self.check_quota(request).await?;
        }
        let metrics = crate::metrics::get();
        let pending = crate::metrics::Raised::new(&metrics.proposals_pending);
        let raft = &self.node().raft;
        let peers = &self.node().peers;
        let result = self
            .on_leader(
                || async move {
                    if let Some(leader) = self.known_leader_elsewhere() {
                        return Here::Ask(leader);
                    }
                    match raft.client_write(command.clone()).await {
                        Ok(applied) => Here::Done(Ok(applied.data)),
                        // A write that was in the log as the leader changed may still apply:
                        // it is never proposed again.
                        Err(err) => match peer_error::write_refused(&err) {
                            Ok(forward) => Here::refused(forward, &err),
                            Err(unknown) => Here::Done(Err(unknown)),
                        },
                    }
                },
                |leader| async move { peers.forward(&leader, command).await },
            )
            .await
            .inspect_err(|_| {
                metrics.proposals_failed.inc();
            })?;
        drop(pending);
        match result {
            CommandResult::Applied(response) => response
                .response
                .ok_or_else(|| Error::Raft("state machine returned an empty response".into())),
            CommandResult::Rejected(err) => Err(err.into()),
            CommandResult::Empty => Err(Error::Raft("state machine returned no result".into())),
        }
    }

    /// Confirms that this member still leads. A leader cut off from the others keeps
    /// believing it leads until it hears of a newer term; what only the true leader may promise
    /// (a lease's deadline) waits for this.
    ///
    /// Confirmed at once if a majority acknowledged this leader's term within the last half
    /// election timeout: until their election timers run out, voters refuse to elect another
    /// (openraft's leader lease), except for a leadership transfer, so in a term in which one
    /// was started this does not count. Otherwise a read index confirms it: a heartbeat round a
    /// majority answered (without waiting for the state machine to apply up to it).
    /// `NotLeader` if the confirmation fails, `Timeout` if it does not come within the request
    /// timeout.
    pub async fn confirm_leadership(&self) -> Result<(), Error> {
        if self.quorum_recently_acked() {
            return Ok(());
        }
        let raft = &self.node().raft;
        let confirmed = tokio::time::timeout(
            self.request_timeout(),
            raft.get_read_log_id(ReadPolicy::ReadIndex),
        );
        match confirmed.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::NotLeader),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Whether this member leads, is a voter, and a majority acknowledged its term within the
    /// last half election timeout (or it is the only voter: nobody else can be elected), in a
    /// term without a leadership transfer.
    fn quorum_recently_acked(&self) -> bool {
        let transfer_term = self.transfer_term.load(Ordering::SeqCst);
        let me = self.node().identity.member_id;
        self.node().with_metrics(|m| {
            // A leader that removed itself hands leadership over too. Counted without
            // collecting: this runs for every keepalive.
            let (mut voters, mut voting) = (0, false);
            for id in m.membership_config.membership().voter_ids() {
                voters += 1;
                voting |= id == me;
            }
            let lone_voter = voters == 1;
            let acked = m
                .last_quorum_acked
                .as_ref()
                .is_some_and(|at| at.elapsed() < self.quorum_fresh_for);
            m.state.is_leader() && voting && m.current_term != transfer_term && (lone_voter || acked)
        })
    }

    /// Records that this member, leading in `term`, starts handing leadership over: from now
    /// on in that term, [`Api::confirm_leadership`] asks a majority each time.
    pub fn transferring_leadership(&self, term: u64) {
        self.transfer_term.store(term, Ordering::SeqCst);
    }

    /// Waits until this member may serve a linearizable read: on the leader, leadership
    /// confirmed by a read index and the state machine applied up to it; on a follower, the
    /// leader's read index, then the same wait for the local state machine.
    pub async fn linearizable_read(&self) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let raft = &self.node().raft;
        let peers = &self.node().peers;
        let index = self
            .on_leader(
                || async move {
                    if let Some(leader) = self.known_leader_elsewhere() {
                        return Here::Ask(leader);
                    }
                    match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                        Ok(_) => Here::Done(Ok(None)),
                        Err(err) => Here::refused(err.forward_to_leader(), &err),
                    }
                },
                |leader| async move { peers.read_index(&leader).await.map(Some) },
            )
            .await?;
        let Some(index) = index else {
            return Ok(()); // the leader itself: ensure_linearizable waited for apply
        };
        let applied = raft
            .wait(Some(self.request_timeout().saturating_sub(started.elapsed())))
            .applied_index_at_least(Some(index), "linearizable read")
            .await;
        match applied {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(Error::Timeout),
            Err(err) => Err(Error::Raft(err.to_string())),
        }
    }

    /// Runs a membership change on the leader (forwarding it there from a follower).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), Error> {
        let raft = &self.node().raft;
        let peers = &self.node().peers;
        let change = &change;
        self.on_leader(
            || async move {
                match self.elsewhere() {
                    // Without a leader a membership change fails at once, as it always has.
                    Some(Here::NoLeader) => Here::Done(Err(Error::NoLeader)),
                    Some(elsewhere) => elsewhere,
                    None => Here::Done(membership::apply(raft, change.clone()).await),
                }
            },
            |leader| async move { peers.change_membership(&leader, change).await },
        )
        .await
    }
}

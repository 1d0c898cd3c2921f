//! [`Client::lead`]: a leader loop for workers (Curator's `LeaderSelector`).
//!
//! A background task campaigns; once it leads (and after a short settle, so that a predecessor
//! whose key was just deleted has stopped), it runs the caller's work; when the work ends it
//! resigns, and when the leadership is lost (the lease is gone or may be: see
//! [`Leadership::lost`](crate::Leadership::lost); or the leader key was deleted, by a revoke
//! say) it cancels the work at once (drops its future); either way it campaigns again, until
//! [`LeaderLoop::stop`]. Failures to campaign
//! (an outage, a dead endpoint) are retried with the client's capped, jittered backoff: the
//! loop never gives up by itself.

use std::future::Future;
use std::time::Duration;

use concord_recipes::election::LeaderKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::election::Leadership;

/// How long a new leader waits before starting its work: a tenth of the TTL, within these.
const SETTLE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(250));

/// A running leader loop: see [`Client::lead`].
#[must_use = "dropping a LeaderLoop stops it"]
pub struct LeaderLoop {
    stop: watch::Sender<bool>,
    leading: watch::Receiver<Option<LeaderKey>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaderLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLoop")
            .field("leading", &*self.leading.borrow())
            .finish()
    }
}

impl Client {
    /// Leads election `name` with `value` whenever it can, and runs `work` while it leads:
    /// campaigns (waiting its turn), calls `work(leader key)`, and when the work ends resigns
    /// and campaigns again; when the leadership is lost the work's future is dropped at once
    /// (so it stops at its next `.await`) and the loop campaigns again. It runs in the
    /// background until [`LeaderLoop::stop`] or until the handle is dropped.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use std::time::Duration;
    ///
    /// let scheduler = client.lead("scheduler", "worker-1", Duration::from_secs(5), |key| async move {
    ///     println!("leading as {}", String::from_utf8_lossy(&key.key));
    ///     loop {
    ///         // ... schedule a round ...
    ///         tokio::time::sleep(Duration::from_secs(1)).await;
    ///     }
    /// });
    /// // ... until shutdown ...
    /// scheduler.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn lead<F, Fut>(
        &self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
        work: F,
    ) -> LeaderLoop
    where
        F: FnMut(LeaderKey) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(None);
        let task = tokio::spawn(run(
            self.clone(),
            name.into(),
            value.into(),
            ttl,
            work,
            stopped,
            leading_tx,
        ));
        LeaderLoop {
            stop,
            leading,
            task: Some(task),
        }
    }
}

impl LeaderLoop {
    /// The leader key while this loop leads (`None` while it campaigns).
    pub fn leading(&self) -> Option<LeaderKey> {
        self.leading.borrow().clone()
    }

    /// A receiver of [`leading`](Self::leading), to wait for changes.
    pub fn leading_changes(&self) -> watch::Receiver<Option<LeaderKey>> {
        self.leading.clone()
    }

    /// Stops the loop: cancels the work if it runs, resigns if it leads, and returns once done.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaderLoop {
    /// Stops the loop in the background (it resigns on its way out).
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn run<F, Fut>(
    client: Client,
    name: Vec<u8>,
    value: Vec<u8>,
    ttl: Duration,
    mut work: F,
    mut stopped: watch::Receiver<bool>,
    leading: watch::Sender<Option<LeaderKey>>,
) where
    F: FnMut(LeaderKey) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut failures = 0;
    loop {
        let leadership = match client.candidate(name.clone(), ttl).await {
            Ok((election, session)) => {
                let lease = session.shared();
                let campaign = Leadership::win(election, session, value.clone());
                tokio::select! {
                    () = stop_requested(&mut stopped) => {
                        // Withdraw before returning: the candidate's key goes with its lease.
                        if let Some(lease) = lease {
                            let _ = lease.close().await;
                        }
                        return;
                    }
                    won = campaign => won,
                }
            }
            Err(err) => Err(err),
        };
        let leadership = match leadership {
            Ok(leadership) => {
                failures = 0;
                leadership
            }
            Err(err) => {
                tracing::warn!(error = %err, "campaigning failed; campaigning again");
                let pause = client.options().jittered_backoff(failures);
                failures += 1;
                tokio::select! {
                    () = stop_requested(&mut stopped) => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let key = leadership.leader_key().clone();
        // A predecessor whose key was deleted (its lease revoked) learns it from the same
        // revision this loop won at, on its own stream: give that news a moment to arrive
        // before working, so its work has stopped. (A predecessor cut off from the cluster
        // stopped earlier still: its `lost()` fires before its lease can expire, which is
        // before anyone can win.)
        let settle = tokio::time::sleep((ttl / 10).clamp(SETTLE.0, SETTLE.1));
        tokio::select! {
            () = stop_requested(&mut stopped) => {
                let _ = leadership.resign().await;
                return;
            }
            () = settle => {}
        }
        leading.send_replace(Some(key.clone()));
        let lost = leadership.lost();
        let watched = key.clone();
        let deleted = key_deleted(&client, &watched);
        let ended = tokio::select! {
            () = work(key) => Ended::WorkDone,
            () = lost => Ended::Lost,
            () = deleted => Ended::Lost,
            () = stop_requested(&mut stopped) => Ended::Stopped,
        };
        leading.send_replace(None);
        match ended {
            Ended::Lost => {
                tracing::warn!("leadership lost; the work was cancelled; campaigning again");
                drop(leadership); // revokes what is left of the lease, in the background
            }
            Ended::WorkDone | Ended::Stopped => {
                if let Err(err) = leadership.resign().await {
                    tracing::warn!(error = %err, "resigning failed; the lease will expire");
                }
            }
        }
        if ended == Ended::Stopped {
            return;
        }
    }
}

/// Completes once the loop is told to stop.
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Completes when the leader's key is deleted (its lease revoked, say): the leadership is over
/// even if the session has not noticed yet. Never completes if the key cannot be watched (the
/// session's loss still ends the turn).
async fn key_deleted(client: &Client, key: &LeaderKey) {
    use concord_proto::mvccpb::event::EventType;
    use futures::StreamExt;

    if let Ok(mut changes) = client.watch_prefix(key.key.clone(), key.rev + 1).await {
        while let Some(Ok(batch)) = changes.next().await {
            let gone = batch.events.iter().any(|event| {
                event.r#type == EventType::Delete as i32
                    && event.kv.as_ref().is_some_and(|kv| kv.key == key.key)
            });
            if gone {
                return;
            }
        }
    }
    std::future::pending().await
}

/// Why a turn as leader ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    WorkDone,
    Lost,
    Stopped,
}

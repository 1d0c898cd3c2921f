//! Leader election for workers: [`Client::campaign`] and [`Leadership`], [`Client::leader`]
//! and [`Client::observe`], over the recipes' [`Election`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_proto::etcdserverpb::ResponseHeader;
use concord_proto::mvccpb::KeyValue;
use concord_recipes::election::{Election, LeaderKey};
use concord_recipes::session::Session;
use futures::{Stream, StreamExt};

use crate::client::Client;
use crate::error::Result;
use crate::options::ttl_secs;
use crate::owned::{Hold, OwnedSession};

/// An election's leader, as an observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's key, `<name>/<lease hex>`.
    pub key: Vec<u8>,
    /// The value the leader proclaimed.
    pub value: Vec<u8>,
    /// The leader's lease.
    pub lease: i64,
    /// The key's create revision: it identifies this leadership, and grows with every new
    /// leader.
    pub leadership: i64,
    /// The revision at which this leader (or this value) was observed.
    pub revision: i64,
}

impl Leader {
    fn new(header: &ResponseHeader, kv: KeyValue) -> Self {
        Self {
            key: kv.key.into(),
            value: kv.value.into(),
            lease: kv.lease,
            leadership: kv.create_revision,
            revision: header.revision,
        }
    }
}

impl Client {
    /// Runs for leader of the election `name` with `value`, and waits until elected. The
    /// candidacy has its own lease of `ttl` (whole seconds, rounded up) kept alive in the
    /// background: a leader that dies is replaced when it expires. Candidates are elected in
    /// the order they ran; cancelling the call withdraws the candidacy.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use std::time::Duration;
    ///
    /// let leadership = client.campaign("scheduler", "worker-3", Duration::from_secs(10)).await?;
    /// tokio::select! {
    ///     () = leadership.lost() => { /* the lease expired: stop acting as leader */ }
    ///     () = async { /* ... lead ... */ } => leadership.resign().await?,
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<Leadership> {
        let (election, session) = self.candidate(name, ttl).await?;
        Leadership::win(election, session, value).await
    }

    /// A session of `ttl` and an election `name` on it, to campaign with.
    pub(crate) async fn candidate(
        &self,
        name: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<(Election<Client>, OwnedSession)> {
        let session = Session::new(self.clone(), ttl_secs(ttl)).await?;
        let election = Election::new(&session, name);
        Ok((election, OwnedSession::new(session)))
    }

    /// The election `name`'s leader now, if it has one.
    pub async fn leader(&self, name: impl Into<Vec<u8>>) -> Result<Option<Leader>> {
        match Election::leader(self, name).await {
            Ok((header, kv)) => Ok(Some(Leader::new(&header, kv))),
            Err(concord_recipes::Error::NoLeader) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Follows the election `name`: its leader now (once there is one), then every change of
    /// leader or of the leader's value, each once and in order. Nothing is reported while the
    /// election has no leader. The observation survives endpoint failures and outages of any
    /// length (restarting with a capped, jittered backoff); it ends only after an error that
    /// retrying cannot fix (the server refusing the request).
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use futures::StreamExt;
    ///
    /// let mut leaders = client.observe("scheduler");
    /// while let Some(leader) = leaders.next().await {
    ///     println!("led by {}", String::from_utf8_lossy(&leader?.value));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn observe(&self, name: impl Into<Vec<u8>>) -> LeaderWatch {
        let observer = Observer {
            client: self.clone(),
            name: name.into(),
            stream: None,
            reported: None,
        };
        let stream = futures::stream::unfold(Some(observer), |observer| async move {
            let mut observer = observer?;
            match observer.next().await {
                Ok(leader) => Some((Ok(leader), Some(observer))),
                Err(err) => Some((Err(err), None)),
            }
        });
        LeaderWatch {
            stream: Box::pin(stream),
        }
    }
}

/// Leadership of an election, won by [`Client::campaign`] or
/// [`SharedSession::campaign`](crate::SharedSession::campaign).
///
/// [`resign`](Self::resign) steps down; dropping the handle steps down in the background (or,
/// outside a tokio runtime, when the lease expires; on a shared session, when the session
/// ends). Like a lock, leadership ends when its
/// lease does: [`lost`](Self::lost) fires before the server can have expired it, and
/// [`at_risk`](Self::at_risk) earlier, when a keep-alive fails.
#[must_use = "dropping a Leadership resigns"]
pub struct Leadership {
    election: Election<Client>,
    key: LeaderKey,
    hold: Hold,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("key", &self.key).finish()
    }
}

impl Leadership {
    /// Campaigns with `value` in `election` on `session` until it leads. On failure or
    /// cancellation, dropping `session` revokes the lease in the background.
    pub(crate) async fn win(
        mut election: Election<Client>,
        session: OwnedSession,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership> {
        let (key, _) = election.campaign(value).await?;
        Ok(Leadership {
            election,
            key,
            hold: Hold::Own(session),
        })
    }

    /// Campaigns with `value` in `election` on a shared session's lease until it leads. On
    /// failure or cancellation the campaign's key is removed; the lease stays.
    pub(crate) async fn win_shared(
        mut election: Election<Client>,
        session: Session<Client>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Leadership> {
        let (key, _) = election.campaign(value).await?;
        Ok(Leadership {
            hold: Hold::Shared {
                session,
                key: key.key.clone(),
                revision: key.rev,
                released: false,
            },
            election,
            key,
        })
    }

    /// What identifies this leadership (the election's name, the leader's key, its create
    /// revision and lease).
    pub fn leader_key(&self) -> &LeaderKey {
        &self.key
    }

    /// The leader's lease.
    pub fn lease(&self) -> i64 {
        self.hold.lease()
    }

    /// Changes the leader's value, if this is still the leader; else fails with
    /// `election: not leader`.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        self.election.proclaim(value).await?;
        Ok(())
    }

    /// Whether the lease is gone or may be (someone else may lead).
    pub fn is_lost(&self) -> bool {
        self.hold.is_lost()
    }

    /// Completes once the lease is gone or may be: no later than the send time of the last
    /// answered keep-alive plus the TTL, so before the server can have expired it. The future
    /// does not borrow the handle.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.hold.lost()
    }

    /// Completes once a keep-alive failed or is late (or the lease is lost): still leading,
    /// but perhaps not for long. The future does not borrow the handle.
    pub fn at_risk(&self) -> impl Future<Output = ()> + Send + 'static {
        self.hold.at_risk()
    }

    /// Steps down (the next candidate leads), then revokes the lease if it is the
    /// leadership's own (a [`SharedSession`](crate::SharedSession)'s lease stays).
    pub async fn resign(mut self) -> Result<()> {
        let election = &mut self.election;
        self.hold
            .end(async move {
                election.resign().await?;
                Ok(())
            })
            .await
    }
}

/// An election's leaders, as a stream: see [`Client::observe`].
#[must_use = "a leader watch does nothing unless polled"]
pub struct LeaderWatch {
    stream: Pin<Box<dyn Stream<Item = Result<Leader>> + Send>>,
}

impl std::fmt::Debug for LeaderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderWatch").finish_non_exhaustive()
    }
}

impl Stream for LeaderWatch {
    type Item = Result<Leader>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

type Observation =
    Pin<Box<dyn Stream<Item = concord_recipes::error::Result<(ResponseHeader, KeyValue)>> + Send>>;

/// The recipe's observation, started again when it fails, reporting nothing twice.
struct Observer {
    client: Client,
    name: Vec<u8>,
    stream: Option<Observation>,
    /// The leadership and value last reported.
    reported: Option<(i64, Vec<u8>)>,
}

impl Observer {
    async fn next(&mut self) -> Result<Leader> {
        let mut failures = 0;
        loop {
            let stream = self
                .stream
                .get_or_insert_with(|| Box::pin(Election::observe(self.client.clone(), self.name.clone())));
            let failed = match stream.next().await {
                Some(Ok((header, kv))) => {
                    let seen = (kv.create_revision, kv.value.to_vec());
                    // A restarted observation first reports the leader it finds, which may
                    // be the one reported last.
                    if self.reported.as_ref() == Some(&seen) {
                        continue;
                    }
                    self.reported = Some(seen);
                    return Ok(Leader::new(&header, kv));
                }
                Some(Err(err)) => err,
                None => concord_recipes::Error::WatchEnded("election observe".into()),
            };
            self.stream = None;
            if !restartable(&failed) {
                return Err(failed.into());
            }
            // However long the outage: a capped, jittered backoff, never giving up.
            tracing::info!(error = %failed, attempt = failures + 1, "restarting an election observation");
            tokio::time::sleep(self.client.options().jittered_backoff(failures)).await;
            failures += 1;
        }
    }
}

/// Whether an observation that failed with `err` is worth starting again: a broken or
/// compacted watch is (a new observation reads the election afresh); the server refusing the
/// request is not.
fn restartable(err: &concord_recipes::Error) -> bool {
    match err {
        concord_recipes::Error::WatchEnded(_) => true,
        concord_recipes::Error::Store(status) => !matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::Unimplemented
        ),
        _ => false,
    }
}

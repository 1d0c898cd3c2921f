//! [`OwnedSession`]: a session that one handle owns and that ends with it; [`Hold`]: the
//! session a lock or a leadership is held with, its own or a shared one.
//!
//! A lock guard, a registration and a leadership each own a [`Session`]. Ending one normally
//! is async (release, then revoke the lease), which `Drop` cannot await; so a handle dropped
//! without being ended spawns the revoke on the runtime it is dropped in, which deletes the
//! handle's keys with the lease. Outside a runtime nothing can be sent: the keep-alives stop
//! with the session and the lease expires after its TTL, which deletes the keys just the same,
//! only later.

use std::future::Future;

use concord_recipes::session::Session;

use crate::client::Client;
use crate::error::Result;

/// A session ended (its lease revoked) when its owner ends or drops it.
pub(crate) struct OwnedSession {
    session: Option<Session<Client>>,
}

impl OwnedSession {
    pub(crate) fn new(session: Session<Client>) -> Self {
        Self {
            session: Some(session),
        }
    }

    /// The session itself, shared (`None` once ended), to close it from elsewhere.
    pub(crate) fn shared(&self) -> Option<Session<Client>> {
        self.session.clone()
    }

    /// The lease ID (0 once ended).
    pub(crate) fn lease(&self) -> i64 {
        self.session.as_ref().map_or(0, Session::lease)
    }

    /// Whether the lease is known to be gone.
    pub(crate) fn is_lost(&self) -> bool {
        self.session.as_ref().is_none_or(Session::is_lost)
    }

    /// Completes once the lease is at risk or gone (at once if the session ended).
    pub(crate) fn at_risk(&self) -> impl Future<Output = ()> + Send + 'static {
        let at_risk = self.session.as_ref().map(Session::at_risk);
        async move {
            if let Some(at_risk) = at_risk {
                at_risk.await;
            }
        }
    }

    /// Completes once the lease is known to be gone (at once if the session ended).
    pub(crate) fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let lost = self.session.as_ref().map(Session::lost);
        async move {
            if let Some(lost) = lost {
                lost.await;
            }
        }
    }

    /// Runs `release` (e.g. deleting the handle's key), then revokes the lease, even if
    /// `release` failed; the first error, if any. Does nothing once ended.
    pub(crate) async fn end(&mut self, release: impl Future<Output = Result<()>>) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let released = release.await;
        let closed = session.close().await;
        released?;
        Ok(closed?)
    }
}

impl Drop for OwnedSession {
    /// A session not ended yet: revoke its lease in the background (which
    /// [`Client::close`] waits for), if there is a runtime.
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let client = session.kv().clone();
        client.spawn_cleanup(async move {
            let lease = session.lease();
            if let Err(err) = session.close().await {
                tracing::debug!(lease, error = %err, "revoking a dropped session");
            }
        });
    }
}

/// The lease a lock or a leadership is held with, and how it ends.
pub(crate) enum Hold {
    /// Its own session: revoked when the hold is released or dropped.
    Own(OwnedSession),
    /// A [`SharedSession`](crate::SharedSession)'s lease, which outlives the hold: only the
    /// hold's key goes when it is released (or, in the background, dropped), and only if it is
    /// still the key created at `revision`.
    Shared {
        session: Session<Client>,
        key: Vec<u8>,
        revision: i64,
        released: bool,
    },
}

impl Hold {
    /// The session the hold is on (`None` once its own was ended).
    pub(crate) fn session(&self) -> Option<Session<Client>> {
        match self {
            Hold::Own(session) => session.shared(),
            Hold::Shared { session, .. } => Some(session.clone()),
        }
    }

    /// The lease (0 once its own session was ended).
    pub(crate) fn lease(&self) -> i64 {
        self.session().map_or(0, |session| session.lease())
    }

    /// Whether the lease is gone or may be.
    pub(crate) fn is_lost(&self) -> bool {
        self.session().is_none_or(|session| session.is_lost())
    }

    /// Completes once the lease is gone or may be (at once if its own session ended).
    pub(crate) fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let lost = self.session().map(|session| session.lost());
        async move {
            if let Some(lost) = lost {
                lost.await;
            }
        }
    }

    /// Completes once a keep-alive failed or is late, or the lease is lost.
    pub(crate) fn at_risk(&self) -> impl Future<Output = ()> + Send + 'static {
        let at_risk = self.session().map(|session| session.at_risk());
        async move {
            if let Some(at_risk) = at_risk {
                at_risk.await;
            }
        }
    }

    /// Runs `release` (which deletes the hold's key); then revokes the lease if it is the
    /// hold's own. A shared lease stays, for the session's other holds.
    pub(crate) async fn end(&mut self, release: impl Future<Output = Result<()>>) -> Result<()> {
        match self {
            Hold::Own(session) => session.end(release).await,
            Hold::Shared { released, .. } => {
                *released = true;
                release.await
            }
        }
    }
}

impl Drop for Hold {
    /// A hold on a shared session not released yet: delete its key in the background (which
    /// [`Client::close`] waits for), if it is still the one this hold created. A hold on its
    /// own session goes with its lease ([`OwnedSession`]'s drop).
    fn drop(&mut self) {
        let Hold::Shared {
            session,
            key,
            revision,
            released: false,
        } = self
        else {
            return;
        };
        let txn = concord_proto::etcdserverpb::TxnRequest {
            compare: vec![concord_recipes::kv::create_revision_is(key.clone(), *revision)],
            success: vec![concord_recipes::kv::delete_op(key.clone())],
            failure: vec![],
        };
        let client = session.kv().clone();
        client.clone().spawn_cleanup(async move {
            use concord_recipes::Kv;
            if let Err(err) = client.txn(txn).await {
                tracing::debug!(error = %err, "releasing a dropped hold on a shared session");
            }
        });
    }
}

//! [`OwnedSession`]: a session that one handle owns and that ends with it.
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

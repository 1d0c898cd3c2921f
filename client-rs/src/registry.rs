//! Service registration with heartbeats, discovery, and membership watches, over the recipes'
//! [`Registry`](concord_recipes::registry::Registry).
//!
//! An instance is the key `services/<service>/<instance id>` holding its address in etcd's
//! `naming/endpoints` format (`{"Op":0,"Addr":"...","Metadata":null}`), attached to a lease
//! the registering process keeps alive. While it heartbeats the key stays; when it stops (it
//! crashed, hung, or lost the network for longer than the TTL) the lease expires and the key
//! goes, which every watcher sees as the instance leaving. etcd's Go resolver dialling
//! `etcd:///services/<service>` finds these instances too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use concord_recipes::registry::{
    DEFAULT_PREFIX as SERVICES_PREFIX, Endpoint, Instance, Membership, MembershipChange,
};
use concord_recipes::registry::{Registry, endpoint};
use concord_recipes::session::Session;
use futures::Stream;

use crate::client::Client;
use crate::error::Result;
use crate::options::ttl_secs;
use crate::owned::OwnedSession;

impl Client {
    /// Registers `instance_id` of `service` at `address`, with a lease of `ttl` (whole
    /// seconds, rounded up; the server may raise it to its minimum) renewed in the background
    /// every third of it. Registering an ID that is registered already replaces it.
    ///
    /// [`Registration::deregister`] removes the instance at once, and so does dropping the
    /// [`Registration`] (in the background); a process that dies without either leaves when
    /// its lease expires.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use std::time::Duration;
    ///
    /// let registration = client
    ///     .register("billing", "billing-1", "10.0.0.7:8080", Duration::from_secs(10))
    ///     .await?;
    /// // ... serve ...
    /// registration.deregister().await?;
    /// # Ok(()) }
    /// ```
    pub async fn register(
        &self,
        service: &str,
        instance_id: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Registration> {
        let registry = Registry::new(self.clone());
        let key = registry.instance_key(service, instance_id)?;
        let mut session = OwnedSession::new(Session::new(self.clone(), ttl_secs(ttl)).await?);
        let lease = session.lease();
        let endpoint = endpoint(address, None);
        let revision = match registry.register(service, instance_id, &endpoint, lease).await {
            Ok(revision) => revision,
            Err(err) => {
                let _ = session.end(async { Ok(()) }).await;
                return Err(err.into());
            }
        };
        Ok(Registration {
            key,
            instance: Instance {
                id: instance_id.to_string(),
                endpoint,
                lease,
                revision,
            },
            session,
        })
    }

    /// The instances of `service` registered now, by ID.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// for instance in client.discover("billing").await? {
    ///     println!("{} at {}", instance.id, instance.endpoint.addr);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn discover(&self, service: &str) -> Result<Vec<Instance>> {
        Ok(Registry::new(self.clone()).list(service).await?.1)
    }

    /// Follows the membership of `service`: the first item is the membership now, then one
    /// item per revision that changes it. The watch survives endpoint failures (it resumes
    /// where it left off, missing nothing); it ends after an error it cannot recover from.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use futures::StreamExt;
    ///
    /// let mut members = client.watch_service("billing").await?;
    /// while let Some(membership) = members.next().await {
    ///     let membership = membership?;
    ///     println!("{} instances at revision {}", membership.instances.len(), membership.revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch_service(&self, service: &str) -> Result<ServiceWatch> {
        let watch = Registry::new(self.clone())
            .watch(service, 0)
            .await?
            .with_backoff(self.backoff());
        let stream = futures::stream::unfold(Some(watch), |watch| async move {
            let mut watch = watch?;
            match watch.next().await {
                Ok(membership) => Some((Ok(membership), Some(watch))),
                Err(err) => Some((Err(err.into()), None)),
            }
        });
        Ok(ServiceWatch {
            stream: Box::pin(stream),
        })
    }
}

/// A registered instance, heartbeating in the background. See [`Client::register`].
pub struct Registration {
    key: String,
    instance: Instance,
    session: OwnedSession,
}

impl Registration {
    /// The instance's key, `services/<service>/<instance id>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The instance as registered.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The lease the registration is attached to.
    pub fn lease(&self) -> i64 {
        self.session.lease()
    }

    /// Whether the lease is known to be gone (heartbeats failed for longer than the TTL):
    /// the instance is no longer registered, and must [`register`](Client::register) again.
    pub fn is_lost(&self) -> bool {
        self.session.is_lost()
    }

    /// Completes once the lease is known to be gone (see [`is_lost`](Self::is_lost)). The
    /// future does not borrow the registration.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.session.lost()
    }

    /// Removes the instance at once (revokes its lease, which deletes its key).
    pub async fn deregister(mut self) -> Result<()> {
        self.session.end(async { Ok(()) }).await
    }
}

/// A service's memberships, as a stream: see [`Client::watch_service`].
pub struct ServiceWatch {
    stream: Pin<Box<dyn Stream<Item = Result<Membership>> + Send>>,
}

impl Stream for ServiceWatch {
    type Item = Result<Membership>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

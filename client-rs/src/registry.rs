//! Service registration with heartbeats, discovery, and membership watches, through the
//! server's `concord.registry.v1.Registry` service.
//!
//! An instance is the key `services/<service>/<instance id>` holding its address in etcd's
//! `naming/endpoints` format (`{"Op":0,"Addr":"...","Metadata":null}`), attached to a lease
//! the registering process keeps alive. While it heartbeats the key stays; when it stops (it
//! crashed, hung, or lost the network for longer than the TTL) the lease expires and the key
//! goes, which every watcher sees as the instance leaving. etcd's Go resolver dialling
//! `etcd:///services/<service>` finds these instances too.
//!
//! - [`Client::register`] / [`Client::register_instance`]: a [`Registration`] that heartbeats in
//!   the background and registers again by itself when its lease was lost.
//! - [`Client::discover`]: a [`Discovery`], an always-current view with pickers.
//! - [`Client::watch_service`]: every change, as a stream that survives outages.
//! - [`Client::instances`]: the instances now, once.

mod discovery;
mod keeper;
mod watch;

use std::time::Duration;

use concord_proto::concord::registry::v1 as pb;
pub use concord_recipes::registry::{
    DEFAULT_PREFIX as SERVICES_PREFIX, Endpoint, Instance, MembershipChange,
};
pub use discovery::Discovery;
pub use keeper::{Registration, RegistrationState};
use serde_json::Value;
pub use watch::{Membership, ServiceWatch};

use crate::client::Client;
use crate::endpoints::{Idempotence, registry};
use crate::error::{Error, Result};

/// An instance to register: see [`Client::register_instance`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewInstance {
    /// The service's name (non-empty, without '/').
    pub service: String,
    /// The instance's ID within the service (non-empty).
    pub id: String,
    /// Where to reach it.
    pub addr: String,
    /// What it says about itself: a JSON object (zone, weight, version, tags ...), or `None`.
    /// [`Discovery::pick_weighted`] reads `weight`.
    pub metadata: Option<Value>,
    /// The TTL of its lease: a crashed instance is gone this long after its last heartbeat.
    pub ttl: Duration,
}

impl NewInstance {
    /// Instance `id` of `service` at `addr`, without metadata, with a TTL of 10 s.
    pub fn new(service: impl Into<String>, id: impl Into<String>, addr: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            id: id.into(),
            addr: addr.into(),
            metadata: None,
            ttl: Duration::from_secs(10),
        }
    }

    /// With `metadata` (a JSON object).
    #[must_use]
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// With a lease of `ttl`.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

impl Client {
    /// Registers `instance_id` of `service` at `address`, with a lease of `ttl` (whole
    /// seconds, rounded up; the server may raise it to its minimum) renewed in the background
    /// every third of it. Registering an ID that is registered already replaces it. See
    /// [`register_instance`](Self::register_instance) for metadata.
    ///
    /// [`Registration::deregister`] removes the instance at once, and so does dropping the
    /// [`Registration`] (in the background); a process that dies without either leaves when
    /// its lease expires. A registration whose lease was lost (the process was paused past its
    /// TTL, the cluster was unreachable that long) registers again by itself.
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
        self.register_instance(NewInstance::new(service, instance_id, address).ttl(ttl))
            .await
    }

    /// Registers `instance` (with its metadata): see [`register`](Self::register).
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// use concord_client::NewInstance;
    /// use serde_json::json;
    ///
    /// let instance = NewInstance::new("billing", "billing-1", "10.0.0.7:8080")
    ///     .metadata(json!({"zone": "eu-1", "weight": 3}));
    /// let registration = client.register_instance(instance).await?;
    /// # Ok(()) }
    /// ```
    pub async fn register_instance(&self, instance: NewInstance) -> Result<Registration> {
        keeper::start(self.clone(), instance).await
    }

    /// The instances of `service` registered now, by ID (draining ones included).
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// for instance in client.instances("billing").await? {
    ///     println!("{} at {}", instance.id, instance.endpoint.addr);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        let request = pb::ListRequest {
            service: service.to_string(),
            ..Default::default()
        };
        let listed = self
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                registry(channel).list(request).await
            })
            .await?;
        listed.instances.into_iter().map(from_proto).collect()
    }

    /// Removes instance `id` of `service` at once, whoever registered it; false if it was not
    /// registered. (A [`Registration`] removes its own with [`Registration::deregister`].)
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool> {
        let request = pb::DeregisterRequest {
            service: service.to_string(),
            id: id.to_string(),
            ..Default::default()
        };
        Ok(self
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                registry(channel).deregister(request).await
            })
            .await?
            .deregistered)
    }

    /// Marks instance `id` of `service` draining (registered, not to be picked), whoever
    /// registered it; false if it is not registered.
    pub async fn drain(&self, service: &str, id: &str) -> Result<bool> {
        let request = pb::DrainRequest {
            service: service.to_string(),
            id: id.to_string(),
            ..Default::default()
        };
        Ok(self
            .call_unary(Idempotence::Idempotent, request, |channel, request| async move {
                registry(channel).drain(request).await
            })
            .await?
            .drained)
    }

    /// An always-current view of `service`'s instances, kept up to date in the background,
    /// with round-robin and weighted pickers that skip draining instances. Returns once the
    /// view holds the membership now.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// let billing = client.discover("billing").await?;
    /// if let Some(instance) = billing.pick() {
    ///     println!("calling {}", instance.endpoint.addr);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn discover(&self, service: &str) -> Result<Discovery> {
        Discovery::start(self.watch_service(service).await?).await
    }

    /// Follows the membership of `service`: the first item is the membership now, then one
    /// item per revision that changes it. The watch survives endpoint failures and outages (it
    /// resumes where it left off, missing nothing, and a disconnect never shows as instances
    /// leaving); it ends only after an error that retrying cannot fix.
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
        if service.is_empty() || service.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "a service name must be non-empty and without '/': {service:?}"
            )));
        }
        Ok(ServiceWatch::new(self.clone(), service.to_string()))
    }
}

/// An instance from the wire.
pub(crate) fn from_proto(instance: pb::Instance) -> Result<Instance> {
    let metadata = match instance.metadata.as_str() {
        "" => None,
        text => Some(serde_json::from_str(text).map_err(|source| Error::Decode {
            key: format!("metadata of instance {}", instance.id),
            version: instance.revision,
            source,
        })?),
    };
    Ok(Instance {
        id: instance.id,
        endpoint: Endpoint {
            addr: instance.addr,
            metadata,
            draining: instance.draining,
        },
        lease: instance.lease,
        revision: instance.revision,
    })
}

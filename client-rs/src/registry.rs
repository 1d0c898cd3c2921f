//! Service registration with heartbeats, discovery, and membership watches.
//!
//! An instance is the key `services/<service>/<instance id>`, whose value is the instance's
//! address, attached to a lease the registering process keeps alive. While it heartbeats the
//! key stays; when it stops (it crashed, hung, or lost the network for longer than the TTL)
//! the lease expires and the key goes, which every watcher sees as the instance leaving. The
//! layout is plain keys and values, so `etcdctl get --prefix services/` shows the registry.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_proto::etcdserverpb::{RangeRequest, TxnRequest};
use concord_proto::mvccpb::{KeyValue, event::EventType};
use concord_recipes::Kv;
use concord_recipes::kv::{prefix_end, put_op};
use concord_recipes::session::Session;
use futures::Stream;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::follow::{Follow, Step};
use crate::options::ttl_secs;
use crate::owned::OwnedSession;

/// Where every service's instances live.
pub const SERVICES_PREFIX: &str = "services/";

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance's ID within its service.
    pub id: String,
    /// The address it registered (the key's value).
    pub address: String,
    /// The lease its registration is attached to.
    pub lease: i64,
    /// The revision it registered (or last changed its address) at.
    pub revision: i64,
}

/// A change in a service's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// An instance registered.
    Joined(Instance),
    /// A registered instance registered again (a new address, or a new lease).
    Updated(Instance),
    /// An instance deregistered, or stopped heartbeating and expired.
    Left {
        /// The instance's ID.
        id: String,
    },
}

/// A service's membership at one revision, and how it got there from the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The revision this membership is as of.
    pub revision: i64,
    /// Every instance, by ID.
    pub instances: Vec<Instance>,
    /// The changes since the previous membership. The first membership a watch yields lists
    /// every instance as [`Joined`](MembershipChange::Joined).
    pub changes: Vec<MembershipChange>,
}

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
        let key = instance_key(service, instance_id)?;
        let mut session = OwnedSession::new(Session::new(self.clone(), ttl_secs(ttl)).await?);
        let lease = session.lease();
        let txn = TxnRequest {
            success: vec![put_op(key.clone(), address, lease)],
            ..Default::default()
        };
        let registered = match self.txn(txn).await {
            Ok(response) => response,
            Err(err) => {
                let _ = session.end(async { Ok(()) }).await;
                return Err(err.into());
            }
        };
        Ok(Registration {
            key,
            instance: Instance {
                id: instance_id.to_string(),
                address: address.to_string(),
                lease,
                revision: registered.header.map_or(0, |h| h.revision),
            },
            session,
        })
    }

    /// The instances of `service` registered now, by ID.
    ///
    /// ```no_run
    /// # async fn run(client: concord_client::Client) -> concord_client::Result<()> {
    /// for instance in client.discover("billing").await? {
    ///     println!("{} at {}", instance.id, instance.address);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn discover(&self, service: &str) -> Result<Vec<Instance>> {
        let prefix = service_prefix(service)?;
        Ok(read_members(self, &prefix).await?.1.into_values().collect())
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
        let prefix = service_prefix(service)?;
        let (revision, members) = read_members(self, &prefix).await?;
        let first = Membership {
            revision,
            instances: members.values().cloned().collect(),
            changes: members.values().cloned().map(MembershipChange::Joined).collect(),
        };
        let follow = Follow::new(
            self.clone(),
            prefix.clone().into_bytes(),
            prefix_end(prefix.as_bytes()),
            revision + 1,
        );
        let watcher = Watcher {
            client: self.clone(),
            prefix,
            members,
            follow,
            ready: vec![first],
        };
        let stream = futures::stream::unfold(Some(watcher), |watcher| async move {
            let mut watcher = watcher?;
            match watcher.next().await {
                Ok(membership) => Some((Ok(membership), Some(watcher))),
                Err(err) => Some((Err(err), None)),
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

/// A service's members, kept up to date from a [`Follow`] on its prefix.
struct Watcher {
    client: Client,
    prefix: String,
    members: BTreeMap<String, Instance>,
    follow: Follow,
    /// Memberships to yield before reading on (in reverse order).
    ready: Vec<Membership>,
}

impl Watcher {
    async fn next(&mut self) -> Result<Membership> {
        loop {
            if let Some(membership) = self.ready.pop() {
                return Ok(membership);
            }
            match self.follow.next().await? {
                Step::Batch(batch) => self.apply(batch.events),
                Step::Compacted => {
                    // Revisions were lost: compare with a fresh read instead.
                    let (revision, now) = read_members(&self.client, &self.prefix).await?;
                    let mut changes: Vec<_> = self
                        .members
                        .keys()
                        .filter(|id| !now.contains_key(*id))
                        .map(|id| MembershipChange::Left { id: id.clone() })
                        .collect();
                    for (id, instance) in &now {
                        match self.members.get(id) {
                            None => changes.push(MembershipChange::Joined(instance.clone())),
                            Some(known) if known != instance => {
                                changes.push(MembershipChange::Updated(instance.clone()));
                            }
                            Some(_) => {}
                        }
                    }
                    self.members = now;
                    self.follow.restart_at(revision + 1);
                    if !changes.is_empty() {
                        return Ok(self.membership(revision, changes));
                    }
                }
            }
        }
    }

    /// Applies a batch's events, queueing one membership per revision.
    fn apply(&mut self, events: Vec<concord_proto::mvccpb::Event>) {
        let mut queued = Vec::new();
        let mut changes = Vec::new();
        let mut events = events.into_iter().peekable();
        while let Some(event) = events.next() {
            let Some(kv) = event.kv else { continue };
            let revision = kv.mod_revision;
            if let Some(id) = kv.key.strip_prefix(self.prefix.as_bytes()) {
                let id = String::from_utf8_lossy(id).into_owned();
                if event.r#type == EventType::Delete as i32 {
                    if self.members.remove(&id).is_some() {
                        changes.push(MembershipChange::Left { id });
                    }
                } else {
                    let instance = instance(id.clone(), &kv);
                    match self.members.insert(id, instance.clone()) {
                        None => changes.push(MembershipChange::Joined(instance)),
                        Some(_) => changes.push(MembershipChange::Updated(instance)),
                    }
                }
            }
            let revision_ends = events
                .peek()
                .is_none_or(|next| next.kv.as_ref().is_none_or(|kv| kv.mod_revision != revision));
            if revision_ends && !changes.is_empty() {
                queued.push(self.membership(revision, std::mem::take(&mut changes)));
            }
        }
        queued.reverse();
        self.ready = queued;
    }

    fn membership(&self, revision: i64, changes: Vec<MembershipChange>) -> Membership {
        Membership {
            revision,
            instances: self.members.values().cloned().collect(),
            changes,
        }
    }
}

/// The instances under `prefix` now, by ID, and the revision of the read.
async fn read_members(client: &Client, prefix: &str) -> Result<(i64, BTreeMap<String, Instance>)> {
    let request = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        ..Default::default()
    };
    let response = client.range(request).await?;
    let revision = response.header.map_or(0, |h| h.revision);
    let members = response
        .kvs
        .iter()
        .filter_map(|kv| {
            let id = kv.key.strip_prefix(prefix.as_bytes())?;
            let id = String::from_utf8_lossy(id).into_owned();
            Some((id.clone(), instance(id, kv)))
        })
        .collect();
    Ok((revision, members))
}

fn instance(id: String, kv: &KeyValue) -> Instance {
    Instance {
        id,
        address: String::from_utf8_lossy(&kv.value).into_owned(),
        lease: kv.lease,
        revision: kv.mod_revision,
    }
}

/// `services/<service>/`; the service name must be non-empty and free of `/`, so that no
/// service's prefix contains another's.
fn service_prefix(service: &str) -> Result<String> {
    if service.is_empty() || service.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "a service name must be non-empty and without '/': {service:?}"
        )));
    }
    Ok(format!("{SERVICES_PREFIX}{service}/"))
}

/// `services/<service>/<instance id>`.
fn instance_key(service: &str, instance_id: &str) -> Result<String> {
    if instance_id.is_empty() {
        return Err(Error::InvalidArgument("an instance ID must be non-empty".into()));
    }
    Ok(format!("{}{instance_id}", service_prefix(service)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert_eq!(instance_key("billing", "b-1").unwrap(), "services/billing/b-1");
        assert!(instance_key("", "b-1").is_err());
        assert!(instance_key("bill/ing", "b-1").is_err());
        assert!(instance_key("billing", "").is_err());
    }
}

//! A service registry on lease-bound keys, in etcd's `naming/endpoints` layout.
//!
//! An instance is the key `<prefix><service>/<instance id>` (prefix `services/` by default)
//! whose value is its [`Endpoint`] in etcd's format, attached to the lease of the process that
//! registered it. While that process keeps its lease alive the key stays; when it stops (it
//! crashed, hung, or was cut off for longer than the TTL) the lease expires and the key goes.
//! etcd's Go resolver dialling `etcd:///services/<service>` therefore finds Concord's instances,
//! and an instance written by Go's `endpoints.Manager` shows up here.
//!
//! A service name may not contain `/`, so no service's prefix holds another's instances (the
//! trailing `/` also avoids etcd-io/etcd#15022, where `foo` sees `foo_other`).
//!
//! - [`Registry::register`] puts (or replaces) an instance; [`Registry::deregister`] deletes
//!   it; [`Registry::drain`] marks it draining while keeping its lease.
//! - [`Registry::list`] reads a service's instances and the revision of the read.
//! - [`Registry::watch`] follows a service: first its membership, then one [`Membership`] per
//!   revision that changes it, resumable from a revision, surviving broken streams; when the
//!   history it needs was compacted, it reads the membership again, so a subscriber never misses
//!   a change. A [`MembershipView`] turns that into a current view and exact changes (a
//!   disconnect never shows as instances leaving).

mod endpoint;

use std::collections::{BTreeMap, VecDeque};

use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op, response_op,
};
use concord_proto::mvccpb::{Event, KeyValue, event::EventType};
pub use endpoint::Endpoint;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::follow::{Follow, Step};
use crate::kv::{Kv, prefix_end, put_op};

/// Where every service's instances live unless told otherwise (etcd's examples use it too).
pub const DEFAULT_PREFIX: &str = "services/";

/// How many times a drain retries when the instance changed under it.
const DRAIN_ATTEMPTS: usize = 5;

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The instance's ID within its service.
    pub id: String,
    /// Where it is and what it says about itself.
    pub endpoint: Endpoint,
    /// The lease its registration is attached to (0: none, e.g. written by hand).
    pub lease: i64,
    /// The revision it registered (or last changed) at.
    pub revision: i64,
}

/// A change in a service's membership.
#[derive(Debug, Clone, PartialEq)]
pub enum MembershipChange {
    /// An instance registered.
    Added(Instance),
    /// A registered instance changed: registered again (a new address, metadata or lease), or
    /// drained.
    Updated(Instance),
    /// An instance deregistered, or stopped keeping its lease alive and expired.
    Removed {
        /// The instance's ID.
        id: String,
    },
}

/// What a [`ServiceWatch`] yields: a service's whole membership (the first time, and after a
/// compacted gap), or how it changed at one revision.
///
/// A watch keeps no membership of its own, so a server can run a thousand watches of a service
/// with ten thousand instances without a thousand copies of it; a [`MembershipView`] turns
/// the memberships into a current view and exact changes where one is wanted.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// The revision this membership is as of.
    pub revision: i64,
    /// Every instance, by ID: set on the first membership a watch yields and after a gap the
    /// store compacted away (the changes in the gap are then not reported one by one; compare
    /// with what you knew, as [`MembershipView::apply`] does).
    pub instances: Option<Vec<Instance>>,
    /// The changes at this revision (empty when `instances` is set). A put that creates an
    /// instance's key is [`Added`](MembershipChange::Added), one that rewrites it
    /// [`Updated`](MembershipChange::Updated); a value not in etcd's format reads as the
    /// instance's removal.
    pub changes: Vec<MembershipChange>,
}

/// A service's current membership, kept from a [`ServiceWatch`]'s memberships.
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    instances: std::sync::Arc<BTreeMap<String, Instance>>,
}

impl MembershipView {
    /// Every instance, by ID. Shared: cheap to keep, copied only if kept while the view moves on.
    pub fn instances(&self) -> std::sync::Arc<BTreeMap<String, Instance>> {
        self.instances.clone()
    }

    /// Applies `membership`; the changes it made to the view: with the whole membership, the
    /// difference from what the view held (removals first, then additions and updates by ID),
    /// else the membership's changes as they apply (an update of an unknown instance adds it,
    /// a removal of an unknown one is dropped).
    pub fn apply(&mut self, membership: Membership) -> Vec<MembershipChange> {
        if let Some(now) = membership.instances {
            let now: BTreeMap<String, Instance> = now.into_iter().map(|i| (i.id.clone(), i)).collect();
            let mut changes: Vec<_> = self
                .instances
                .keys()
                .filter(|id| !now.contains_key(*id))
                .map(|id| MembershipChange::Removed { id: id.clone() })
                .collect();
            for (id, instance) in &now {
                match self.instances.get(id) {
                    None => changes.push(MembershipChange::Added(instance.clone())),
                    Some(known) if known != instance => {
                        changes.push(MembershipChange::Updated(instance.clone()))
                    }
                    Some(_) => {}
                }
            }
            self.instances = std::sync::Arc::new(now);
            return changes;
        }
        let instances = std::sync::Arc::make_mut(&mut self.instances);
        let mut applied = Vec::with_capacity(membership.changes.len());
        for change in membership.changes {
            match change {
                MembershipChange::Added(instance) | MembershipChange::Updated(instance) => {
                    match instances.insert(instance.id.clone(), instance.clone()) {
                        None => applied.push(MembershipChange::Added(instance)),
                        Some(_) => applied.push(MembershipChange::Updated(instance)),
                    }
                }
                MembershipChange::Removed { id } => {
                    if instances.remove(&id).is_some() {
                        applied.push(MembershipChange::Removed { id });
                    }
                }
            }
        }
        applied
    }
}

/// A registry under one key prefix.
#[derive(Clone)]
pub struct Registry<K: Kv> {
    kv: K,
    prefix: String,
}

impl<K: Kv> Registry<K> {
    /// The registry under [`DEFAULT_PREFIX`].
    pub fn new(kv: K) -> Self {
        Self {
            kv,
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }

    /// The registry under `prefix` (which must end with `/`).
    pub fn with_prefix(kv: K, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if !prefix.ends_with('/') {
            return Err(Error::InvalidArgument(format!(
                "a registry prefix must end with '/': {prefix:?}"
            )));
        }
        Ok(Self { kv, prefix })
    }

    /// `<prefix><service>/`.
    pub fn service_prefix(&self, service: &str) -> Result<String> {
        if service.is_empty() || service.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "a service name must be non-empty and without '/': {service:?}"
            )));
        }
        Ok(format!("{}{service}/", self.prefix))
    }

    /// `<prefix><service>/<id>`.
    pub fn instance_key(&self, service: &str, id: &str) -> Result<String> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("an instance ID must be non-empty".into()));
        }
        Ok(format!("{}{id}", self.service_prefix(service)?))
    }

    /// Registers instance `id` of `service` at `endpoint`, attached to `lease`; an instance
    /// already registered under that ID is replaced. Returns the revision of the write.
    pub async fn register(&self, service: &str, id: &str, endpoint: &Endpoint, lease: i64) -> Result<i64> {
        if endpoint.addr.is_empty() {
            return Err(Error::InvalidArgument(
                "an instance's address must be non-empty".into(),
            ));
        }
        if let Some(metadata) = &endpoint.metadata
            && !metadata.is_object()
        {
            return Err(Error::InvalidArgument(format!(
                "an instance's metadata must be a JSON object: {metadata}"
            )));
        }
        let key = self.instance_key(service, id)?;
        let txn = TxnRequest {
            success: vec![put_op(key, endpoint.encode(), lease)],
            ..Default::default()
        };
        let response = self.kv.txn(txn).await?;
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// Removes instance `id` of `service` at once; false if it was not registered.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool> {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: self.instance_key(service, id)?.into_bytes(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let response = self.kv.txn(txn).await?;
        let deleted = response.responses.first().and_then(|r| match &r.response {
            Some(response_op::Response::ResponseDeleteRange(d)) => Some(d.deleted),
            _ => None,
        });
        Ok(deleted.unwrap_or(0) > 0)
    }

    /// Marks instance `id` of `service` as draining (still registered, with its lease, but not
    /// to be picked); false if it is not registered. Draining twice changes nothing.
    pub async fn drain(&self, service: &str, id: &str) -> Result<bool> {
        let key = self.instance_key(service, id)?;
        for _ in 0..DRAIN_ATTEMPTS {
            let read = self
                .kv
                .range(RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await?;
            let Some(kv) = read.kvs.into_iter().next() else {
                return Ok(false);
            };
            let Some(mut endpoint) = Endpoint::decode(&kv.value) else {
                return Err(Error::InvalidArgument(format!(
                    "{key} does not hold an instance in etcd's naming format"
                )));
            };
            if endpoint.draining {
                return Ok(true);
            }
            endpoint.draining = true;
            // Rewrites the value only if nobody changed the instance meanwhile; the lease stays.
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.clone().into_bytes(),
                    target_union: Some(TargetUnion::ModRevision(kv.mod_revision)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone().into_bytes(),
                        value: endpoint.encode(),
                        ignore_lease: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            if self.kv.txn(txn).await?.succeeded {
                return Ok(true);
            }
        }
        Err(Error::InvalidArgument(format!(
            "{key} kept changing while it was being drained"
        )))
    }

    /// The instances of `service` now, by ID, and the revision of the read.
    pub async fn list(&self, service: &str) -> Result<(i64, Vec<Instance>)> {
        let (revision, members) = self.members(service, 0).await?;
        Ok((revision, members.into_values().collect()))
    }

    /// The instances of `service` as of `revision` (0: now), by ID, and the revision read.
    async fn members(&self, service: &str, revision: i64) -> Result<(i64, BTreeMap<String, Instance>)> {
        let prefix = self.service_prefix(service)?;
        let response = self
            .kv
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                revision,
                ..Default::default()
            })
            .await?;
        let read_at = if revision > 0 {
            revision
        } else {
            response.header.map_or(0, |h| h.revision)
        };
        let members = response
            .kvs
            .iter()
            .filter_map(|kv| instance(&prefix, kv))
            .map(|instance| (instance.id.clone(), instance))
            .collect();
        Ok((read_at, members))
    }

    /// Follows `service`'s membership: first as of the revision before `from` (0: now), then
    /// one [`Membership`] per revision that changes it. Resuming from a revision that was
    /// compacted away starts from the membership now instead of failing.
    pub async fn watch(&self, service: &str, from: i64) -> Result<ServiceWatch<K>> {
        let prefix = self.service_prefix(service)?;
        let (revision, members) = match from {
            0 => self.members(service, 0).await?,
            // Revision 1 is the empty store: nothing is registered before it.
            1 => (0, BTreeMap::new()),
            from => match self.members(service, from - 1).await {
                Err(Error::Store(status)) if concord_proto::rpctypes::is_compacted(&status) => {
                    self.members(service, 0).await?
                }
                read => read?,
            },
        };
        let first = Membership {
            revision,
            instances: Some(members.into_values().collect()),
            changes: Vec::new(),
        };
        let follow = Follow::new(
            self.kv.clone(),
            prefix.clone().into_bytes(),
            prefix_end(prefix.as_bytes()),
            revision + 1,
        );
        Ok(ServiceWatch {
            registry: self.clone(),
            service: service.to_string(),
            prefix,
            follow,
            first: Some(first),
            pending: VecDeque::new(),
        })
    }
}

/// A service's memberships, one at a time: see [`Registry::watch`].
pub struct ServiceWatch<K: Kv> {
    registry: Registry<K>,
    service: String,
    prefix: String,
    follow: Follow<K>,
    /// The first membership, until it is yielded.
    first: Option<Membership>,
    /// Events read but not yet yielded, in revision order.
    pending: VecDeque<Event>,
}

impl<K: Kv> ServiceWatch<K> {
    /// Pauses `backoff(n)` before the `n`th reopening in a row of a broken stream.
    pub fn with_backoff(
        mut self,
        backoff: impl Fn(usize) -> std::time::Duration + Send + Sync + 'static,
    ) -> Self {
        self.follow = self.follow.with_backoff(backoff);
        self
    }

    /// The next membership: the first call gives the membership the watch started from.
    pub async fn next(&mut self) -> Result<Membership> {
        if let Some(first) = self.first.take() {
            return Ok(first);
        }
        loop {
            if let Some(membership) = self.one_revision() {
                return Ok(membership);
            }
            match self.follow.next().await? {
                Step::Batch(batch) => self.pending.extend(batch.events),
                Step::Compacted => {
                    // Revisions were lost: the membership now, read again.
                    let (revision, now) = self.registry.members(&self.service, 0).await?;
                    self.follow.restart_at(revision + 1);
                    return Ok(Membership {
                        revision,
                        instances: Some(now.into_values().collect()),
                        changes: Vec::new(),
                    });
                }
            }
        }
    }

    /// The changes of the oldest revision pending; `None` once nothing is pending.
    fn one_revision(&mut self) -> Option<Membership> {
        let mut changes = Vec::new();
        while let Some(event) = self.pending.pop_front() {
            let Some(kv) = event.kv else { continue };
            let revision = kv.mod_revision;
            if let Some(id) = kv.key.strip_prefix(self.prefix.as_bytes()) {
                let id = String::from_utf8_lossy(id).into_owned();
                let put = event.r#type != EventType::Delete as i32;
                match (put, instance(&self.prefix, &kv)) {
                    (true, Some(instance)) if kv.version == 1 => {
                        changes.push(MembershipChange::Added(instance))
                    }
                    (true, Some(instance)) => changes.push(MembershipChange::Updated(instance)),
                    // Deleted, or overwritten with something unreadable: gone.
                    _ => changes.push(MembershipChange::Removed { id }),
                }
            }
            let revision_ends = self
                .pending
                .front()
                .is_none_or(|next| next.kv.as_ref().is_none_or(|kv| kv.mod_revision != revision));
            if revision_ends && !changes.is_empty() {
                return Some(Membership {
                    revision,
                    instances: None,
                    changes,
                });
            }
        }
        None
    }
}

/// The instance a key under `prefix` holds; `None` for a value not in etcd's naming format
/// (skipped, as etcd's resolver skips it).
fn instance(prefix: &str, kv: &KeyValue) -> Option<Instance> {
    let id = kv.key.strip_prefix(prefix.as_bytes())?;
    let id = String::from_utf8_lossy(id).into_owned();
    let Some(endpoint) = Endpoint::decode(&kv.value) else {
        tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "skipping a value not in etcd's naming format");
        return None;
    };
    Some(Instance {
        id,
        endpoint,
        lease: kv.lease,
        revision: kv.mod_revision,
    })
}

/// An [`Endpoint`] from its parts.
pub fn endpoint(addr: impl Into<String>, metadata: Option<Value>) -> Endpoint {
    Endpoint {
        addr: addr.into(),
        metadata,
        draining: false,
    }
}

#[cfg(test)]
mod tests;

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
//!   history it needs was compacted, it reads the membership again and reports the difference,
//!   so a subscriber never misses a change and never sees instances leave because of a
//!   disconnect.

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

/// How a service's membership changed at one revision.
///
/// The membership itself (every instance) is [`ServiceWatch::instances`], as of the last
/// `Membership` yielded; it is kept once per watch, not copied into every change, so a watch of
/// a service with thousands of instances costs one map, not one map per revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// The revision this change is as of.
    pub revision: i64,
    /// The changes since the previous membership. The first membership a watch yields lists
    /// every instance as [`Added`](MembershipChange::Added).
    pub changes: Vec<MembershipChange>,
    /// True when the history between the previous membership and this one was compacted
    /// away, so the changes were found by reading the membership again (and comparing) rather
    /// than from the history: the intermediate revisions are not reported.
    pub resynced: bool,
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
            changes: members.values().cloned().map(MembershipChange::Added).collect(),
            resynced: false,
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
            members,
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
    members: BTreeMap<String, Instance>,
    follow: Follow<K>,
    /// The first membership, until it is yielded.
    first: Option<Membership>,
    /// Events read but not yet applied, in revision order.
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

    /// Every instance, by ID, as of the last membership [`next`](Self::next) yielded.
    pub fn instances(&self) -> impl ExactSizeIterator<Item = &Instance> {
        self.members.values()
    }

    /// The instance `id`, as of the last membership [`next`](Self::next) yielded.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.members.get(id)
    }

    /// The next membership: the first call gives the membership the watch started from.
    pub async fn next(&mut self) -> Result<Membership> {
        if let Some(first) = self.first.take() {
            return Ok(first);
        }
        loop {
            if let Some(membership) = self.apply_one_revision() {
                return Ok(membership);
            }
            match self.follow.next().await? {
                Step::Batch(batch) => self.pending.extend(batch.events),
                Step::Compacted => {
                    // Revisions were lost: compare with a fresh read instead.
                    let (revision, now) = self.registry.members(&self.service, 0).await?;
                    let mut changes: Vec<_> = self
                        .members
                        .keys()
                        .filter(|id| !now.contains_key(*id))
                        .map(|id| MembershipChange::Removed { id: id.clone() })
                        .collect();
                    for (id, instance) in &now {
                        match self.members.get(id) {
                            None => changes.push(MembershipChange::Added(instance.clone())),
                            Some(known) if known != instance => {
                                changes.push(MembershipChange::Updated(instance.clone()));
                            }
                            Some(_) => {}
                        }
                    }
                    self.members = now;
                    self.follow.restart_at(revision + 1);
                    if !changes.is_empty() {
                        return Ok(Membership {
                            revision,
                            changes,
                            resynced: true,
                        });
                    }
                }
            }
        }
    }

    /// Applies the pending events of the oldest revision that changes the membership; `None`
    /// once no pending event does.
    fn apply_one_revision(&mut self) -> Option<Membership> {
        let mut changes = Vec::new();
        while let Some(event) = self.pending.pop_front() {
            let Some(kv) = event.kv else { continue };
            let revision = kv.mod_revision;
            if event.r#type == EventType::Delete as i32 {
                if let Some(id) = kv.key.strip_prefix(self.prefix.as_bytes()) {
                    let id = String::from_utf8_lossy(id).into_owned();
                    if self.members.remove(&id).is_some() {
                        changes.push(MembershipChange::Removed { id });
                    }
                }
            } else if let Some(instance) = instance(&self.prefix, &kv) {
                match self.members.insert(instance.id.clone(), instance.clone()) {
                    None => changes.push(MembershipChange::Added(instance)),
                    Some(_) => changes.push(MembershipChange::Updated(instance)),
                }
            } else if let Some(id) = kv.key.strip_prefix(self.prefix.as_bytes()) {
                // An instance overwritten with something unreadable is gone.
                let id = String::from_utf8_lossy(id).into_owned();
                if self.members.remove(&id).is_some() {
                    changes.push(MembershipChange::Removed { id });
                }
            }
            let revision_ends = self
                .pending
                .front()
                .is_none_or(|next| next.kv.as_ref().is_none_or(|kv| kv.mod_revision != revision));
            if revision_ends && !changes.is_empty() {
                return Some(Membership {
                    revision,
                    changes,
                    resynced: false,
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

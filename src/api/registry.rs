//! Concord's `concord.registry.v1.Registry` service, thin over the recipes crate's
//! [`Registry`]: the same code the Rust client runs, here on this member's store.
//!
//! An instance is stored in etcd's `naming/endpoints` format under `<prefix><service>/<id>`,
//! bound to a lease: the caller's, or one the server grants (of the request's TTL, 10 s by
//! default) for the caller to keep alive with etcd's `LeaseKeepAlive`.

use std::pin::Pin;
use std::sync::Arc;

use concord_proto::concord::registry::v1 as pb;
use concord_proto::concord::registry::v1::registry_server::Registry as RegistryRpc;
use concord_recipes::Kv;
use concord_recipes::registry::{self, Endpoint, Instance, Membership, MembershipChange, Registry};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::Api;
use super::local_kv::LocalKv;

/// The TTL of the lease a Register request without a lease and without a TTL gets.
pub const DEFAULT_TTL_SECS: i64 = 10;

/// The Registry service.
#[derive(Clone)]
pub struct RegistryService {
    api: Arc<Api>,
    kv: LocalKv,
}

impl RegistryService {
    /// A Registry service whose recipe runs on `kv`.
    pub fn new(api: Arc<Api>, kv: LocalKv) -> Self {
        Self { api, kv }
    }

    /// The registry under `prefix` (empty: the default one).
    fn registry(kv: &LocalKv, prefix: String) -> Result<Registry<LocalKv>, Status> {
        if prefix.is_empty() {
            return Ok(Registry::new(kv.clone()));
        }
        Registry::with_prefix(kv.clone(), prefix).map_err(|e| e.to_service_status())
    }
}

#[tonic::async_trait]
impl RegistryRpc for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let registry = Self::registry(&kv, request.prefix)?;
        let endpoint = endpoint(request.addr, &request.metadata)?;
        // Check the names before a lease is granted for nothing.
        registry
            .instance_key(&request.service, &request.id)
            .map_err(|e| e.to_service_status())?;
        let (lease, ttl) = match (request.lease, request.ttl) {
            (lease, _) if lease != 0 => (lease, 0),
            (_, ttl) if ttl < 0 => {
                return Err(Status::invalid_argument(format!(
                    "registry: a TTL must be positive: {ttl}"
                )));
            }
            (_, ttl) => {
                let ttl = if ttl == 0 { DEFAULT_TTL_SECS } else { ttl };
                let granted = self
                    .kv
                    .lease_grant(ttl)
                    .await
                    .map_err(|e| e.to_service_status())?;
                (granted.id, granted.ttl)
            }
        };
        let registered = registry
            .register(&request.service, &request.id, &endpoint, lease)
            .await;
        let revision = match registered {
            Ok(revision) => revision,
            Err(err) => {
                if ttl > 0 {
                    // Nothing is attached to the lease it granted: do not leave it behind.
                    let _ = kv.lease_revoke(lease).await;
                }
                return Err(err.to_service_status());
            }
        };
        Ok(Response::new(pb::RegisterResponse {
            header: Some(self.api.header(revision)),
            lease,
            ttl,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let deregistered = Self::registry(&kv, request.prefix)?
            .deregister(&request.service, &request.id)
            .await
            .map_err(|e| e.to_service_status())?;
        Ok(Response::new(pb::DeregisterResponse {
            header: self.api.current_header(),
            deregistered,
        }))
    }

    async fn drain(&self, request: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let drained = Self::registry(&kv, request.prefix)?
            .drain(&request.service, &request.id)
            .await
            .map_err(|e| e.to_service_status())?;
        Ok(Response::new(pb::DrainResponse {
            header: self.api.current_header(),
            drained,
        }))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let (revision, instances) = Self::registry(&kv, request.prefix)?
            .list(&request.service)
            .await
            .map_err(|e| e.to_service_status())?;
        Ok(Response::new(pb::ListResponse {
            header: Some(self.api.header(revision)),
            instances: instances.iter().map(to_proto).collect(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        if request.start_revision < 0 {
            return Err(Status::invalid_argument(format!(
                "registry: a start revision must not be negative: {}",
                request.start_revision
            )));
        }
        let watch = Self::registry(&kv, request.prefix)?
            .watch(&request.service, request.start_revision)
            .await
            .map_err(|e| e.to_service_status())?;
        let api = self.api.clone();
        let responses = futures::stream::unfold(Some(watch), move |watch| {
            let api = api.clone();
            async move {
                let mut watch = watch?;
                match watch.next().await {
                    Ok(membership) => Some((Ok(response(&api, membership)), Some(watch))),
                    Err(err) => Some((Err(err.to_service_status()), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

/// The answer for one membership: every instance when it starts the stream or follows a
/// compacted gap, its changes otherwise.
fn response(api: &Api, membership: Membership) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(api.header(membership.revision)),
        reset: membership.instances.is_some(),
        instances: membership.instances.iter().flatten().map(to_proto).collect(),
        changes: membership.changes.iter().map(change).collect(),
    }
}

/// The endpoint a Register request describes; its metadata must be a JSON object or empty.
fn endpoint(addr: String, metadata: &str) -> Result<Endpoint, Status> {
    let metadata = match metadata.trim() {
        "" => None,
        text => Some(serde_json::from_str(text).map_err(|err| {
            Status::invalid_argument(format!("registry: metadata is not valid JSON: {err}"))
        })?),
    };
    Ok(registry::endpoint(addr, metadata))
}

/// An instance on the wire.
pub fn to_proto(instance: &Instance) -> pb::Instance {
    pb::Instance {
        id: instance.id.clone(),
        addr: instance.endpoint.addr.clone(),
        metadata: instance
            .endpoint
            .metadata
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        draining: instance.endpoint.draining,
        lease: instance.lease,
        revision: instance.revision,
    }
}

/// A membership change on the wire.
fn change(change: &MembershipChange) -> pb::Change {
    use pb::change::Type;
    let (kind, instance) = match change {
        MembershipChange::Added(instance) => (Type::Added, to_proto(instance)),
        MembershipChange::Updated(instance) => (Type::Updated, to_proto(instance)),
        MembershipChange::Removed { id } => (
            Type::Removed,
            pb::Instance {
                id: id.clone(),
                ..Default::default()
            },
        ),
    };
    pb::Change {
        r#type: kind as i32,
        instance: Some(instance),
    }
}

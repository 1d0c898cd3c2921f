//! The recipes' [`Kv`] served in-process, so the Lock and Election services run the same
//! recipe code as the client, straight onto this member's Raft-backed store.
//!
//! Each call goes through the same service code a gRPC request would (validation, forwarding
//! to the leader, lease relays, etcd's error texts, auth checks), minus the network. A service
//! runs a recipe for its client with [`LocalKv::acting_for`], so every key the recipe touches
//! is checked against that client's permissions.

use std::sync::Arc;

use concord_proto::etcdserverpb::kv_server::Kv as _;
use concord_proto::etcdserverpb::lease_server::Lease as _;
use concord_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse, WatchCreateRequest,
};
use concord_proto::rpctypes;
use concord_recipes::error::Result;
use concord_recipes::session::Session;
use concord_recipes::{Error, Kv, WatchBatch, WatchStream};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use super::Api;
use super::kv::KvService;
use super::lease::LeaseService;
use crate::auth::{Caller, Need};
use crate::watch::hub::{STREAM_CAPACITY, StreamId, WatchHub};

/// [`Kv`] on this member: see the module docs.
#[derive(Clone)]
pub struct LocalKv {
    api: Arc<Api>,
    kv: KvService,
    lease: LeaseService,
    hub: Arc<WatchHub>,
    /// Whose requests these are: anonymous until a service acts for its client (and so
    /// refused while auth is on: a service that forgot fails closed).
    caller: Caller,
}

/// TTL of the lease a Lock or Campaign request without one gets (etcd's session default).
const DEFAULT_SESSION_TTL: i64 = 60;

impl LocalKv {
    /// Recipes' access to `api`, through the given services.
    pub fn new(api: &Arc<Api>, kv: KvService, lease: LeaseService) -> Self {
        Self {
            api: api.clone(),
            kv,
            lease,
            hub: api.node().hub.clone(),
            caller: Caller::Anonymous,
        }
    }

    /// This access on behalf of whoever sent `request` (its token is checked now).
    pub fn acting_for<T>(&self, request: &Request<T>) -> std::result::Result<LocalKv, Status> {
        let caller = self.api.caller(request)?;
        Ok(Self {
            caller,
            ..self.clone()
        })
    }

    /// `message` as a request from this access's caller.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(self.caller.clone());
        request
    }

    /// The session a Lock or Campaign request holds its key with: its own lease, or for lease 0
    /// a new lease of 60 s (`DEFAULT_SESSION_TTL`) that nothing keeps alive, as etcd's server does
    /// (an orphaned session). Two requests without a lease thus never share a key.
    pub async fn session(&self, lease: i64) -> std::result::Result<Session<LocalKv>, Status> {
        let lease = match lease {
            0 => {
                self.lease_grant(DEFAULT_SESSION_TTL)
                    .await
                    .map_err(|e| e.to_status())?
                    .id
            }
            lease => lease,
        };
        Ok(Session::from_lease(self.clone(), lease))
    }
}

impl Kv for LocalKv {
    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse> {
        Ok(self.kv.txn(self.request(request)).await?.into_inner())
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        Ok(self.kv.range(self.request(request)).await?.into_inner())
    }

    async fn watch(&self, request: WatchCreateRequest) -> Result<WatchStream> {
        let need = Need::Read(&request.key, &request.range_end);
        self.api.authorize(&self.caller, &[need]).map_err(Status::from)?;
        let options = super::watch::options(&request, self.caller.clone());
        let stream = HubStream {
            hub: self.hub.clone(),
            id: self.hub.new_stream(0),
        };
        let (watch_id, current) = self
            .hub
            .reserve(stream.id, 0)
            .map_err(|reason| Error::Store(Status::failed_precondition(reason)))?;
        let (sink, responses) = mpsc::channel(STREAM_CAPACITY);
        let start = if request.start_revision > 0 {
            request.start_revision
        } else {
            current + 1
        };
        self.hub.register(stream.id, watch_id, options, start, sink);
        let batches = ReceiverStream::new(responses)
            .flat_map(futures::stream::iter)
            .map(move |response| {
                let _registered = &stream; // removed from the hub when the stream is dropped
                if response.compact_revision > 0 {
                    return Err(Error::Store(rpctypes::COMPACTED.status()));
                }
                if response.canceled {
                    return Err(Error::WatchEnded(response.cancel_reason));
                }
                Ok(WatchBatch {
                    revision: response.header.map_or(0, |h| h.revision),
                    events: response.events,
                })
            });
        Ok(Box::pin(batches))
    }

    async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        let request = LeaseGrantRequest { ttl, id: 0 };
        Ok(self.lease.lease_grant(self.request(request)).await?.into_inner())
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        let answer = self.lease.keep_alive_once(id).await.map_err(Status::from)?;
        Ok(answer.ttl)
    }

    async fn lease_revoke(&self, id: i64) -> Result<()> {
        let request = LeaseRevokeRequest { id };
        self.lease.lease_revoke(self.request(request)).await?;
        Ok(())
    }
}

/// A watch stream registered in the hub, removed when dropped.
struct HubStream {
    hub: Arc<WatchHub>,
    id: StreamId,
}

impl Drop for HubStream {
    fn drop(&mut self) {
        self.hub.remove_stream(self.id);
    }
}

//! etcd's `v3lockpb.Lock` service: Lock and Unlock, on the recipes crate's [`Mutex`].
//!
//! Like etcd's, a lock is held with the caller's lease: the lock key `name/<lease hex>` lives
//! until Unlock deletes it or the lease ends (a crashed holder), and the next waiter gets the
//! lock as soon as that delete is applied: each waiter watches only its predecessor's key, in
//! process, so there is no polling and no herd.

use concord_proto::etcdserverpb::TxnRequest;
use concord_proto::v3lockpb::lock_server::Lock;
use concord_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use concord_recipes::Kv;
use concord_recipes::kv::delete_op;
use concord_recipes::mutex::Mutex;
use tonic::{Request, Response, Status};

use super::local_kv::LocalKv;
use crate::metrics;

/// The Lock service.
#[derive(Clone)]
pub struct LockService {
    kv: LocalKv,
}

impl LockService {
    /// A Lock service whose recipes run on `kv`.
    pub fn new(kv: LocalKv) -> Self {
        Self { kv }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let session = kv.session(request.lease).await?;
        let mut mutex = Mutex::new(&session, request.name);
        // A Lock request that goes away while waiting drops this future: the recipe then
        // deletes the key it created, as etcd's server does when the request's context ends.
        let waiting = metrics::Raised::new(&metrics::get().lock_waiting);
        mutex.lock().await.map_err(|e| e.to_status())?;
        drop(waiting);
        metrics::get().locks_acquired.inc();
        if let Ok(mut held) = metrics::get().held_lock_keys.lock() {
            held.insert(mutex.key().to_vec());
        }
        Ok(Response::new(LockResponse {
            header: mutex.header().cloned(),
            key: mutex.key().to_vec(),
        }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let key = request.into_inner().key;
        if let Ok(mut held) = metrics::get().held_lock_keys.lock() {
            held.remove(&key);
        }
        let delete = TxnRequest {
            success: vec![delete_op(key)],
            ..Default::default()
        };
        let deleted = kv.txn(delete).await.map_err(|e| e.to_status())?;
        Ok(Response::new(UnlockResponse {
            header: deleted.header,
        }))
    }
}

//! etcd's `KV` service: Range, Put, DeleteRange, Txn, Compact. Writes are checked by
//! [`Api::propose`] (`crate::raft::admission`), reads here; a txn that only reads is served
//! as a read, as etcd serves it.

use std::sync::Arc;

use concord_proto::etcdserverpb::kv_server::Kv;
use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use concord_proto::raftpb::command::Request as Cmd;
use concord_proto::txn;
use tonic::{Request, Response, Status};

use super::Api;
use super::access::{Write, range_need};
use crate::auth::Need;
use crate::error::Error;
use crate::mvcc::MvccError;

/// The KV service over the shared [`Api`].
#[derive(Clone)]
pub struct KvService {
    api: Arc<Api>,
}

impl KvService {
    /// A KV service for `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let req = request.into_inner();
        self.api.check_size(&req)?;
        if req.key.is_empty() {
            return Err(Error::from(MvccError::EmptyKey).into());
        }
        self.api.authorize(&caller, &[range_need(&req)])?;
        if !req.serializable {
            self.api.linearizable_read().await?;
        }
        let mut resp = self.api.store().range(&req).map_err(Error::from)?;
        self.api.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let req = request.into_inner();
        let revision = self.api.authorize_write(&caller, Write::Put(&req))?;
        Ok(Response::new(self.api.answer(Cmd::Put(req), revision).await?))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let req = request.into_inner();
        let revision = self.api.authorize_write(&caller, Write::Delete(&req))?;
        Ok(Response::new(
            self.api.answer(Cmd::DeleteRange(req), revision).await?,
        ))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let req = request.into_inner();
        let revision = self.api.authorize_write(&caller, Write::Txn(&req))?;
        if txn::is_read_only(&req) {
            // As etcd does: a txn that changes nothing is a read, not a Raft entry.
            self.api.admission().check_txn(&req)?;
            if !txn::is_serializable(&req) {
                self.api.linearizable_read().await?;
            }
            let mut resp = self.api.store().read_txn(&req).map_err(Error::from)?;
            self.api.fill_header(&mut resp.header);
            return Ok(Response::new(resp));
        }
        Ok(Response::new(self.api.answer(Cmd::Txn(req), revision).await?))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd checks nothing for a compaction; Concord asks for some user while auth is on.
        let caller = self.api.caller(&request)?;
        let revision = self.api.authorize(&caller, &[Need::User])?;
        let req = request.into_inner();
        Ok(Response::new(
            self.api.answer(Cmd::Compaction(req), revision).await?,
        ))
    }
}

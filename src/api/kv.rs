//! etcd's `KV` service: Range, Put, DeleteRange, Txn, Compact. Writes are checked by
//! [`Api::propose`] (`crate::raft::admission`), reads here; a txn that only reads is served
//! as a read, as etcd serves it.

use std::sync::Arc;

use concord_proto::etcdserverpb::kv_server::Kv;
use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use concord_proto::raftpb::{command::Request as Cmd, command_response::Response as Res};
use concord_proto::txn;
use tonic::{Request, Response, Status};

use super::Api;
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

    async fn propose(&self, cmd: Cmd) -> Result<Res, Status> {
        Ok(self.api.propose(cmd).await?)
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("etcdserver: unexpected response to {what}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        self.api.check_size(&req)?;
        if req.key.is_empty() {
            return Err(Error::from(MvccError::EmptyKey).into());
        }
        if !req.serializable {
            self.api.linearizable_read().await?;
        }
        let mut resp = self.api.store().range(&req).map_err(Error::from)?;
        self.api.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        match self.propose(Cmd::Put(req)).await? {
            Res::Put(mut resp) => {
                self.api.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        match self.propose(Cmd::DeleteRange(req)).await? {
            Res::DeleteRange(mut resp) => {
                self.api.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete range")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
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
        match self.propose(Cmd::Txn(req)).await? {
            Res::Txn(mut resp) => {
                self.api.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        match self.propose(Cmd::Compaction(req)).await? {
            Res::Compaction(mut resp) => {
                self.api.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compaction")),
        }
    }
}

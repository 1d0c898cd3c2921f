//! etcd's `KV` service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use concord_proto::etcdserverpb::kv_server::Kv;
use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, request_op,
};
use concord_proto::raftpb::{command::Request as Cmd, command_response::Response as Res};
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

/// etcd's `checkRequestOp`/`checkTxnRequest`: op counts and keys, recursively.
fn check_txn(txn: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    let ops = txn.compare.len().max(txn.success.len()).max(txn.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if txn.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey.into());
    }
    for op in txn.success.iter().chain(&txn.failure) {
        check_op(op, max_ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), Error> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => Err(MvccError::EmptyKey.into()),
        Some(request_op::Request::RequestPut(p)) => check_put(p),
        Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
            Err(MvccError::EmptyKey.into())
        }
        Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_ops),
        _ => Ok(()),
    }
}

fn check_put(put: &PutRequest) -> Result<(), Error> {
    if put.key.is_empty() {
        return Err(MvccError::EmptyKey.into());
    }
    if put.ignore_value && !put.value.is_empty() {
        return Err(MvccError::ValueProvided.into());
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(MvccError::LeaseProvided.into());
    }
    Ok(())
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
        self.api.check_size(&req)?;
        check_put(&req)?;
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
        self.api.check_size(&req)?;
        if req.key.is_empty() {
            return Err(Error::from(MvccError::EmptyKey).into());
        }
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
        self.api.check_size(&req)?;
        check_txn(&req, self.api.max_txn_ops())?;
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
        self.api.check_size(&req)?;
        match self.propose(Cmd::Compaction(req)).await? {
            Res::Compaction(mut resp) => {
                self.api.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compaction")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn txn_checks_count_ops_and_keys_recursively() {
        let txn = TxnRequest {
            success: vec![put_op("a"); 3],
            ..Default::default()
        };
        assert!(check_txn(&txn, 3).is_ok());
        assert!(matches!(check_txn(&txn, 2), Err(Error::TooManyOps)));
        let nested = TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![put_op("")],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(matches!(
            check_txn(&nested, 8),
            Err(Error::Mvcc(MvccError::EmptyKey))
        ));
    }

    #[test]
    fn put_checks_follow_etcd() {
        let mut put = PutRequest::default();
        assert!(matches!(check_put(&put), Err(Error::Mvcc(MvccError::EmptyKey))));
        put.key = b"k".to_vec();
        put.ignore_value = true;
        put.value = b"v".to_vec();
        assert!(matches!(
            check_put(&put),
            Err(Error::Mvcc(MvccError::ValueProvided))
        ));
        put.value.clear();
        put.ignore_lease = true;
        put.lease = 5;
        assert!(matches!(
            check_put(&put),
            Err(Error::Mvcc(MvccError::LeaseProvided))
        ));
    }
}

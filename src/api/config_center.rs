//! Concord's `concord.config.v1.Config` service, thin over the recipes crate's
//! [`ConfigCenter`]: the config center's keys live under `config/` in this member's store.

use std::pin::Pin;
use std::sync::Arc;

use concord_proto::concord::config::v1 as pb;
use concord_proto::concord::config::v1::config_server::Config as ConfigRpc;
use concord_recipes::config::{ConfigCenter, Format, Put, Report, Version};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Api;
use super::batched::batched;
use super::local_kv::LocalKv;

/// How many ready versions one Watch response carries at most.
const VERSIONS_PER_RESPONSE: usize = 64;

/// The Config service.
#[derive(Clone)]
pub struct ConfigService {
    api: Arc<Api>,
    kv: LocalKv,
    keep: u64,
}

impl ConfigService {
    /// A Config service whose recipe runs on `kv`, keeping `keep` versions per key.
    pub fn new(api: Arc<Api>, kv: LocalKv, keep: u64) -> Self {
        Self { api, kv, keep }
    }

    /// The config center, acting for whoever sent `request`.
    fn center<T>(&self, request: &Request<T>) -> Result<ConfigCenter<LocalKv>, Status> {
        Ok(ConfigCenter::new(self.kv.acting_for(request)?).keeping(self.keep))
    }
}

fn status(err: concord_recipes::Error) -> Status {
    err.to_service_status()
}

#[tonic::async_trait]
impl ConfigRpc for ConfigService {
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let format = match request.format.as_str() {
            "" => None,
            name => Some(name.parse::<Format>().map_err(status)?),
        };
        let put = Put {
            value: request.value,
            format,
            if_version: request.if_version,
            author: request.author,
            comment: request.comment,
        };
        let version = center
            .put(&request.namespace, &request.key, put)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PutResponse {
            header: Some(self.api.header(version.revision)),
            version: Some(to_proto(version)),
        }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let version = center
            .get(&request.namespace, &request.key, request.version)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetResponse {
            header: self.api.current_header(),
            version: Some(to_proto(version)),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let versions = center
            .history(&request.namespace, &request.key)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::HistoryResponse {
            header: self.api.current_header(),
            versions: versions.into_iter().map(to_proto).collect(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let version = center
            .rollback(
                &request.namespace,
                &request.key,
                request.version,
                &request.author,
                &request.comment,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PutResponse {
            header: Some(self.api.header(version.revision)),
            version: Some(to_proto(version)),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let key = (!request.key.is_empty()).then_some(request.key.as_str());
        let from = match (key, request.start_version) {
            (_, 0) => request.start_revision,
            (Some(key), version) => center
                .revision_of(&request.namespace, key, version)
                .await
                .map_err(status)?,
            (None, _) => {
                return Err(Status::invalid_argument(
                    "config: a start version needs a key (a namespace's keys have versions of their own)",
                ));
            }
        };
        let watch = center
            .watch(&request.namespace, key, from)
            .await
            .map_err(status)?;
        let versions = futures::stream::unfold(Some(watch), |watch| async move {
            let mut watch = watch?;
            match watch.next().await {
                Ok(version) => Some((Ok(version), Some(watch))),
                Err(err) => Some((Err(status(err)), None)),
            }
        });
        let api = self.api.clone();
        // Counted as a config watcher for as long as the stream lives.
        let watching = crate::metrics::Raised::new(&crate::metrics::get().config_watchers);
        let versions = versions.map(move |version| {
            let _watching = &watching;
            version.map(to_proto)
        });
        let responses = batched(
            versions,
            VERSIONS_PER_RESPONSE,
            move |versions: Vec<pb::Version>| {
                let revision = versions.last().map_or(0, |v| v.revision);
                pb::WatchResponse {
                    header: Some(api.header(revision)),
                    versions,
                }
            },
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn set_schema(
        &self,
        request: Request<pb::SetSchemaRequest>,
    ) -> Result<Response<pb::SetSchemaResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let schema = match request.schema.trim() {
            "" => None,
            text => Some(serde_json::from_str(text).map_err(|err| {
                Status::invalid_argument(format!(
                    "config: a schema must be a JSON document: line {} column {}: {err}",
                    err.line(),
                    err.column()
                ))
            })?),
        };
        center
            .set_schema(&request.namespace, schema)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetSchemaResponse {
            header: self.api.current_header(),
        }))
    }

    async fn get_schema(
        &self,
        request: Request<pb::GetSchemaRequest>,
    ) -> Result<Response<pb::GetSchemaResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let schema = center.schema(&request.namespace).await.map_err(status)?;
        Ok(Response::new(pb::GetSchemaResponse {
            header: self.api.current_header(),
            schema: schema.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let report = Report {
            client: request.client,
            version: request.version,
            applied: request.applied,
            error: request.error,
        };
        center
            .report(&request.namespace, &request.key, &report, request.lease)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReportResponse {
            header: self.api.current_header(),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let center = self.center(&request)?;
        let request = request.into_inner();
        let found = center
            .status(&request.namespace, &request.key)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StatusResponse {
            header: self.api.current_header(),
            latest: found.latest,
            clients: found
                .reports
                .into_iter()
                .map(|r| pb::ClientStatus {
                    client: r.client,
                    version: r.version,
                    applied: r.applied,
                    error: r.error,
                })
                .collect(),
        }))
    }
}

/// A version on the wire.
fn to_proto(version: Version) -> pb::Version {
    pb::Version {
        namespace: version.namespace,
        key: version.key,
        version: version.version,
        revision: version.revision,
        format: version.format.name().to_string(),
        value: version.value,
        author: version.author,
        comment: version.comment,
        time_ms: version.time_ms,
        rollback_of: version.rollback_of.unwrap_or(0),
    }
}

//! Concord's `concord.pubsub.v1.PubSub` service, thin over the recipes crate's [`Topic`]: topic
//! `t`'s messages are the keys under `pubsub/t/`, its retention the key `pubsub/t`.

use std::pin::Pin;
use std::time::Duration;

use concord_proto::concord::pubsub::v1 as pb;
use concord_proto::concord::pubsub::v1::pub_sub_server::PubSub as PubSubRpc;
use concord_recipes::pubsub::{Retention, Topic, check_topic_name};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Api;
use super::batched::batched;
use super::local_kv::LocalKv;
use std::sync::Arc;

/// Where the service keeps its topics.
pub const TOPICS_PREFIX: &str = "pubsub/";

/// How many ready messages one Subscribe response carries at most.
const MESSAGES_PER_RESPONSE: usize = 256;

/// The PubSub service.
#[derive(Clone)]
pub struct PubSubService {
    api: Arc<Api>,
    kv: LocalKv,
}

impl PubSubService {
    /// A PubSub service whose recipe runs on `kv`.
    pub fn new(api: Arc<Api>, kv: LocalKv) -> Self {
        Self { api, kv }
    }

    /// The topic `name`, checked.
    fn topic(kv: &LocalKv, name: &str) -> Result<Topic<LocalKv>, Status> {
        check_topic_name(name).map_err(|e| e.to_service_status())?;
        Ok(Topic::under(kv.clone(), TOPICS_PREFIX, name))
    }
}

#[tonic::async_trait]
impl PubSubRpc for PubSubService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let revision = Self::topic(&kv, &request.topic)?
            .publish(request.payload)
            .await
            .map_err(|e| e.to_service_status())?;
        Ok(Response::new(pb::PublishResponse {
            header: Some(self.api.header(revision)),
            revision,
        }))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let subscription = Self::topic(&kv, &request.topic)?
            .subscribe(request.start_revision)
            .await
            .map_err(|e| e.to_service_status())?;
        let api = self.api.clone();
        let messages = subscription.map(|message| {
            message
                .map(|m| pb::Message {
                    revision: m.revision,
                    payload: m.payload,
                })
                .map_err(|e| e.to_service_status())
        });
        let responses = batched(
            messages,
            MESSAGES_PER_RESPONSE,
            move |messages: Vec<pb::Message>| {
                let revision = messages.last().map_or(0, |m| m.revision);
                pb::SubscribeResponse {
                    header: Some(api.header(revision)),
                    messages,
                }
            },
        );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn set_retention(
        &self,
        request: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::SetRetentionResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let topic = Self::topic(&kv, &request.topic)?;
        let retention = from_proto(request.retention.unwrap_or_default())?;
        topic
            .set_retention(retention)
            .await
            .map_err(|e| e.to_service_status())?;
        Ok(Response::new(pb::SetRetentionResponse {
            header: self.api.current_header(),
        }))
    }

    async fn topic_status(
        &self,
        request: Request<pb::TopicStatusRequest>,
    ) -> Result<Response<pb::TopicStatusResponse>, Status> {
        let kv = self.kv.acting_for(&request)?;
        let request = request.into_inner();
        let status = Self::topic(&kv, &request.topic)?
            .status()
            .await
            .map_err(|e| e.to_service_status())?;
        Ok(Response::new(pb::TopicStatusResponse {
            header: self.api.current_header(),
            retention: Some(to_proto(status.retention)),
            oldest_revision: status.floor,
            kept: status.kept,
        }))
    }
}

/// A retention from the wire: negative limits are refused, zero is none.
fn from_proto(retention: pb::Retention) -> Result<Retention, Status> {
    if retention.max_age_seconds < 0 || retention.max_messages < 0 {
        return Err(Status::invalid_argument(format!(
            "pubsub: retention limits must not be negative: {retention:?}"
        )));
    }
    Ok(Retention {
        max_age: (retention.max_age_seconds > 0)
            .then(|| Duration::from_secs(retention.max_age_seconds as u64)),
        max_messages: (retention.max_messages > 0).then_some(retention.max_messages as u64),
    })
}

/// A retention on the wire.
fn to_proto(retention: Retention) -> pb::Retention {
    pb::Retention {
        max_age_seconds: retention.max_age.map_or(0, |age| age.as_secs() as i64),
        max_messages: retention.max_messages.map_or(0, |max| max as i64),
    }
}

//! Calls into this member's own gRPC services, in process: the gateway encodes each JSON request
//! as the gRPC request it stands for and hands it to the same router, layers and service code
//! that gRPC clients reach, so limits, auth checks, metrics and error texts are the same.

use std::convert::Infallible;

use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, uri::PathAndQuery};
use axum::response::Response;
use concord_proto::rpctypes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use super::json;
use super::lines::{JsonMessages, answer_lines};
use crate::api::transport_errors;
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::net::tls::TlsPeer;

/// The prefix of HTTP headers forwarded as gRPC metadata (`Grpc-Metadata-Token: T` arrives as
/// `token: T`), as grpc-gateway forwards them.
const METADATA_PREFIX: &str = "grpc-metadata-";

/// The gRPC services as one in-process service.
type GrpcService =
    BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, Infallible>;

/// This member's gRPC services, reachable from the gateway without a network hop.
#[derive(Clone)]
pub struct Loopback {
    grpc: GrpcService,
    /// The most JSON one request may take.
    body_limit: usize,
}

/// A gRPC request message the gateway reads from JSON.
pub trait JsonMessage: prost::Message + DeserializeOwned + Default + Send + 'static {}
impl<T: prost::Message + DeserializeOwned + Default + Send + 'static> JsonMessage for T {}

/// A gRPC answer the gateway writes as JSON.
pub trait JsonAnswer: prost::Message + Serialize + Default + Send + 'static {}
impl<T: prost::Message + Serialize + Default + Send + 'static> JsonAnswer for T {}

impl Loopback {
    /// `routes` (the client services), behind the same layers the client port puts in front
    /// of them; JSON requests up to `body_limit` bytes.
    pub fn new(routes: Routes, body_limit: usize) -> Self {
        let service = tower::util::MapResponseLayer::new(transport_errors::as_grpc_go).layer(routes);
        let service = ServiceExt::<http::Request<tonic::body::Body>>::map_response(
            GrpcMetricsLayer.layer(service),
            |response| response.map(tonic::body::Body::new),
        );
        Loopback {
            grpc: BoxCloneSyncService::new(service),
            body_limit,
        }
    }

    /// A unary call: one JSON request, one JSON answer.
    pub async fn unary<Req: JsonMessage, Resp: JsonAnswer>(
        &self,
        method: &'static str,
        request: Request,
    ) -> Response {
        let call = match self.one_request::<Req>(request).await {
            Ok(call) => call,
            Err(status) => return json::error(&status),
        };
        let mut client = self.client().await;
        let codec = ProstCodec::<Req, Resp>::default();
        match client.unary(call, PathAndQuery::from_static(method), codec).await {
            Ok(answer) => json::answer(answer.get_ref()),
            Err(status) => json::error(&status),
        }
    }

    /// A server-streaming call: one JSON request, answers as JSON lines.
    pub async fn server_streaming<Req: JsonMessage, Resp: JsonAnswer>(
        &self,
        method: &'static str,
        request: Request,
    ) -> Response {
        let call = match self.one_request::<Req>(request).await {
            Ok(call) => call,
            Err(status) => return json::error(&status),
        };
        let mut client = self.client().await;
        let codec = ProstCodec::<Req, Resp>::default();
        streamed(
            client
                .server_streaming(call, PathAndQuery::from_static(method), codec)
                .await,
        )
    }

    /// A bidirectional call: JSON requests one after another in the body, as they arrive,
    /// answers as JSON lines. A first request that cannot be read is refused with an error
    /// answer; a later one ends the sending side.
    pub async fn streaming<Req: JsonMessage, Resp: JsonAnswer>(
        &self,
        method: &'static str,
        request: Request,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let mut messages = JsonMessages::new(body, self.body_limit);
        let first = match messages.next::<Req>().await {
            Some(Ok(first)) => first,
            Some(Err(status)) => return json::error(&status),
            None => Req::default(),
        };
        let requests = futures::stream::once(async { first }).chain(messages.rest::<Req>());
        let mut client = self.client().await;
        let call = client.streaming(
            grpc_request(&parts, requests),
            PathAndQuery::from_static(method),
            ProstCodec::<Req, Resp>::default(),
        );
        streamed(call.await)
    }

    /// A gRPC client on the in-process services, taking answers of any size (as the network
    /// client of etcd's gateway does).
    async fn client(&self) -> tonic::client::Grpc<GrpcService> {
        let mut client = tonic::client::Grpc::new(self.grpc.clone()).max_decoding_message_size(usize::MAX);
        // The router is always ready (its error type is `Infallible`).
        let _ = client.ready().await;
        client
    }

    /// The whole body as one gRPC request.
    async fn one_request<Req: JsonMessage>(&self, request: Request) -> Result<tonic::Request<Req>, Status> {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, self.body_limit)
            .await
            .map_err(|_| rpctypes::gateway_request_too_large(self.body_limit))?;
        Ok(grpc_request(&parts, json::decode(&bytes)?))
    }
}

/// The answer to a streaming call: its stream as lines, or the call's error.
fn streamed<Resp: JsonAnswer>(call: Result<tonic::Response<Streaming<Resp>>, Status>) -> Response {
    match call {
        Ok(answers) => json::respond(http::StatusCode::OK, answer_lines(answers.into_inner())),
        Err(status) => json::error(&status),
    }
}

/// The gRPC request `message` stands for: the caller's token (the `Authorization` header, and
/// `Grpc-Metadata-*` headers) as metadata, and the connection the HTTP request came on (its
/// address and TLS client certificate), so the services see the same caller.
fn grpc_request<T>(parts: &Parts, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    for (name, value) in &parts.headers {
        let key = if name == header::AUTHORIZATION {
            "authorization"
        } else if let Some(key) = name.as_str().strip_prefix(METADATA_PREFIX) {
            key
        } else {
            continue;
        };
        let (Ok(key), Ok(value)) = (
            key.parse::<AsciiMetadataKey>(),
            AsciiMetadataValue::try_from(value.as_bytes()),
        ) else {
            continue;
        };
        metadata.insert(key, value);
    }
    let extensions = request.extensions_mut();
    if let Some(connection) = parts.extensions.get::<TcpConnectInfo>() {
        extensions.insert(connection.clone());
    }
    if let Some(peer) = parts.extensions.get::<TlsPeer>() {
        extensions.insert(peer.clone());
    }
    request
}

//! `grpc_server_started_total` and `grpc_server_handled_total` with go-grpc-prometheus's labels:
//! a tower layer over the client services counts each call when it starts and, with its status
//! code, when its response ends (in the headers for an error answered at once, in the trailers
//! otherwise, `Canceled` when the client went away first).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use tonic::Code;
use tower::{Layer, Service};

use super::{GrpcHandledLabels, GrpcLabels, get};

/// The layer: wraps a service in [`GrpcMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// A service whose gRPC calls are counted.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// The calls that stream, by `(service, method)`; every other call is unary.
const STREAMING: [(&str, &str, &str); 7] = [
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("concord.registry.v1.Registry", "Watch", "server_stream"),
    ("concord.config.v1.Config", "Watch", "server_stream"),
    ("concord.pubsub.v1.PubSub", "Subscribe", "server_stream"),
];

/// The labels of a call to `path` (`/package.Service/Method`), if it is a gRPC call.
fn labels(path: &str) -> Option<GrpcLabels> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    let kind = STREAMING
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map_or("unary", |(_, _, kind)| kind);
    Some(GrpcLabels {
        grpc_type: kind.to_string(),
        grpc_service: service.to_string(),
        grpc_method: method.to_string(),
    })
}

/// grpc-go's name of a status code (what go-grpc-prometheus puts in `grpc_code`).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(value))
}

impl<S, B, ResBody> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let labels = labels(request.uri().path());
        if let Some(labels) = &labels {
            get().grpc_started.get_or_create(labels).inc();
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let answered_at_once = status_in(response.headers());
            let mut counted = response.map(|body| Counted { body, labels });
            if let Some(code) = answered_at_once {
                counted.body_mut().finish(code);
            }
            Ok(counted)
        })
    }
}

/// A response body that counts its call as handled when it ends.
#[derive(Debug)]
pub struct Counted<B> {
    body: B,
    /// `None` once counted, or for a call that is not gRPC.
    labels: Option<GrpcLabels>,
}

impl<B> Counted<B> {
    fn finish(&mut self, code: Code) {
        if let Some(labels) = self.labels.take() {
            let handled = GrpcHandledLabels {
                grpc_type: labels.grpc_type,
                grpc_service: labels.grpc_service,
                grpc_method: labels.grpc_method,
                grpc_code: code_name(code).to_string(),
            };
            get().grpc_handled.get_or_create(&handled).inc();
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Code::Internal),
            Poll::Ready(None) => self.finish(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_labelled_as_go_grpc_prometheus_labels_them() {
        let watch = labels("/etcdserverpb.Watch/Watch").unwrap();
        assert_eq!(
            (
                watch.grpc_type.as_str(),
                watch.grpc_service.as_str(),
                watch.grpc_method.as_str()
            ),
            ("bidi_stream", "etcdserverpb.Watch", "Watch")
        );
        assert_eq!(labels("/etcdserverpb.KV/Range").unwrap().grpc_type, "unary");
        assert!(labels("/health").is_none() && labels("/metrics").is_none());
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }
}

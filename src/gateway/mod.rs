//! The HTTP/JSON gateway on the client port: etcd's grpc-gateway API (`POST /v3/kv/put` with
//! `{"key": "Zm9v", "value": "YmFy"}`), under `/v3/` and the `/v3beta/` and `/v3alpha/`
//! prefixes older clients use, plus Concord's own services under `/v1/registry/`,
//! `/v1/config/` and `/v1/pubsub/`, and `GET /version`.
//!
//! Each path stands for one gRPC method. The JSON request becomes that method's message
//! (pbjson's mapping: proto field names, 64-bit integers as strings, bytes as base64, enums by
//! name), which is handed to the same gRPC services gRPC clients reach (`loopback.rs`); the
//! answer comes back as JSON, a streaming answer as one `{"result": ...}` object per line.
//! Errors are the gateway's: the HTTP status of the gRPC code and
//! `{"error": ..., "message": ..., "code": N}`.

mod json;
mod lines;
mod loopback;
mod paths;

use axum::Router;
use axum::response::Response;
use axum::routing::{any, get};
use concord_proto::rpctypes;
use tonic::service::Routes;

use crate::api::maintenance::SERVER_VERSION;
use loopback::Loopback;
use paths::{concord_methods, etcd_methods};

/// The prefixes etcd's API is served under: `/v3/`, and the older clients' `/v3beta/` and
/// `/v3alpha/`.
const ETCD_PREFIXES: [&str; 3] = ["/v3", "/v3beta", "/v3alpha"];

/// The gateway's routes, calling into `grpc` (the client services, without the gateway);
/// JSON requests are taken up to `body_limit` bytes.
pub fn router(grpc: Routes, body_limit: usize) -> Router {
    let calls = Loopback::new(grpc, body_limit);
    let mut router = Router::new().route("/version", get(version));
    for prefix in ETCD_PREFIXES {
        for (path, method) in etcd_methods(&calls) {
            router = router.route(&format!("{prefix}{path}"), method);
        }
        router = router.route(&format!("{prefix}/{{*rest}}"), any(not_found));
    }
    for (path, method) in concord_methods(&calls) {
        router = router.route(path, method);
    }
    router.route("/v1/{*rest}", any(not_found))
}

/// `GET /version`, as etcd answers it.
async fn version() -> Response {
    /// Field order is etcd's.
    #[derive(serde::Serialize)]
    struct Versions {
        etcdserver: &'static str,
        etcdcluster: String,
    }
    json::answer(&Versions {
        etcdserver: SERVER_VERSION,
        etcdcluster: cluster_version(),
    })
}

/// The cluster version etcd reports: the server's major.minor with patch 0.
fn cluster_version() -> String {
    let mut parts = SERVER_VERSION.split('.');
    let (major, minor) = (parts.next().unwrap_or("3"), parts.next().unwrap_or("5"));
    format!("{major}.{minor}.0")
}

/// A path under the gateway's prefixes that names no method.
async fn not_found() -> Response {
    json::error(&rpctypes::GATEWAY_NO_METHOD.status())
}

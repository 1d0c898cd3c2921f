//! HTTP `GET /health` on the client port, answering like etcd: `{"health":"true"}`.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Api;

/// The `/health` route.
pub fn router(api: Arc<Api>) -> Router {
    Router::new().route(
        "/health",
        get(move || {
            let api = api.clone();
            async move { health(api).await }
        }),
    )
}

async fn health(api: Arc<Api>) -> impl IntoResponse {
    // Healthy when a linearizable read succeeds, as etcd's check (a QGET through Raft).
    let (status, body) = match api.linearizable_read().await {
        Ok(()) => (StatusCode::OK, r#"{"health":"true"}"#),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

//! HTTP `GET /metrics` on the client port: a few of etcd's Prometheus gauges, in the text
//! exposition format, under etcd's names so existing dashboards find them.

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;

use super::Api;

/// The `/metrics` route.
pub fn router(api: Arc<Api>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let api = api.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render(&api),
                )
            }
        }),
    )
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn render(api: &Api) -> String {
    let hub = &api.node().hub;
    let (synced, unsynced) = hub.watcher_counts();
    let has_leader = api.node().leader().is_some();
    let mut out = String::new();
    gauge(
        &mut out,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        u8::from(has_leader),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_watch_stream_total",
        "Total number of watch streams.",
        hub.stream_count(),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_watcher_total",
        "Total number of watchers.",
        synced + unsynced,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_slow_watcher_total",
        "Total number of unsynced slow watchers.",
        unsynced,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        api.store().current_revision(),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        api.store().compacted_revision(),
    );
    out
}

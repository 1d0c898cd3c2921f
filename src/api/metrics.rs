//! HTTP `GET /metrics` (on the client port, and on `--listen-metrics-urls`): every metric of
//! [`crate::metrics`], refreshed from the member's state as it is scraped.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use concord_proto::etcdserverpb::RangeRequest;

use super::Api;
use crate::metrics::{self, Metrics};
use crate::raft::membership;

/// The `/metrics` route.
pub fn router(api: Arc<Api>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let api = api.clone();
            async move {
                let metrics = metrics::get();
                refresh(&api, metrics);
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    )
}

/// Reads what is cheaper to read than to track: leadership, Raft indexes, sizes and counts.
fn refresh(api: &Api, metrics: &Metrics) {
    let node = api.node();
    let me = node.identity.member_id;
    metrics.has_leader.set(i64::from(node.leader().is_some()));
    let (is_leader, committed, applied) = node.with_metrics(|m| {
        (
            m.state.is_leader(),
            m.local_committed.as_ref().map_or(0, |id| id.index),
            m.last_applied.as_ref().map_or(0, |id| id.index),
        )
    });
    metrics.is_leader.set(i64::from(is_leader));
    metrics.is_learner.set(i64::from(
        membership::member(&node.raft, me).is_some_and(|(_, learner)| learner),
    ));
    metrics.proposals_committed.set(committed as i64);
    metrics.proposals_applied.set(applied as i64);
    metrics.db_total_size.set(api.db_size() as i64);
    metrics.db_in_use.set(api.db_in_use_last() as i64);
    let store = api.store();
    metrics.current_revision.set(store.current_revision());
    metrics.compact_revision.set(store.compacted_revision());
    metrics.keys_total.set(count(api, b"\0", b"\0"));
    let registry = concord_recipes::registry::DEFAULT_PREFIX.as_bytes();
    metrics
        .registry_instances
        .set(count(api, registry, &concord_recipes::kv::prefix_end(registry)));
    // Locks whose key is gone (unlocked, expired or deleted) are no longer held.
    if let Ok(mut held) = metrics.held_lock_keys.lock() {
        held.retain(|key| count(api, key, b"") > 0);
        metrics.locks_held.set(held.len() as i64);
    }
    let hub = &node.hub;
    let (synced, unsynced) = hub.watcher_counts();
    metrics.watch_streams.set(hub.stream_count() as i64);
    metrics.watchers.set((synced + unsynced) as i64);
    metrics.slow_watchers.set(unsynced as i64);
    metrics::process::refresh(metrics);
}

/// How many live keys lie in `[key, range_end)` (an index count; no rows are read).
fn count(api: &Api, key: &[u8], range_end: &[u8]) -> i64 {
    let request = RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        count_only: true,
        ..Default::default()
    };
    api.store().range(&request).map_or(0, |answer| answer.count)
}

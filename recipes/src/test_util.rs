//! Helpers shared by the recipes' unit tests.

use std::time::Duration;

use concord_proto::etcdserverpb::RangeRequest;
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};

use crate::kv::{Kv, prefix_end};
use crate::memory::MemoryKv;
use crate::session::Session;

/// The longest any single wait in a test may take.
pub const BOUND: Duration = Duration::from_secs(30);

/// `future`, failing the test if it takes longer than [`BOUND`].
pub async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future).await.expect("timed out")
}

/// A session with a 10 s lease on `kv`.
pub async fn session(kv: &MemoryKv) -> Session<MemoryKv> {
    Session::new(kv.clone(), 10).await.unwrap()
}

/// The keys under `prefix`, in create-revision (queue) order.
pub async fn keys_by_creation(kv: &MemoryKv, prefix: &[u8]) -> Vec<Vec<u8>> {
    let range = RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    };
    kv.range(range)
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

/// Polls `condition` until it holds (bounded).
pub async fn until(mut condition: impl AsyncFnMut() -> bool) {
    bounded(async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

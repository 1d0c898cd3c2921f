//! Helpers shared by the recipes' unit tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{
    LeaseGrantResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest,
};
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::kv::{Kv, WatchStream, prefix_end};
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
        .map(|kv| kv.key.into())
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

/// A [`MemoryKv`] with what the double lacks for long-lived watches: history before
/// [`compact`](Self::compact)ed revisions is gone (watches and ranges from before it fail with
/// the server's compaction error), and [`cut_watches`](Self::cut_watches) ends every open watch
/// stream, as a server restart or a broken connection does.
#[derive(Clone, Default)]
pub struct FlakyKv {
    pub inner: MemoryKv,
    compacted: Arc<AtomicI64>,
    cuts: Arc<tokio::sync::watch::Sender<u64>>,
}

impl FlakyKv {
    /// Forgets the history before `revision`.
    pub fn compact(&self, revision: i64) {
        self.compacted.store(revision, Ordering::SeqCst);
    }

    /// Ends every open watch stream with an error.
    pub fn cut_watches(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    fn compacted(&self, revision: i64) -> bool {
        revision > 0 && revision < self.compacted.load(Ordering::SeqCst)
    }
}

fn compaction() -> Error {
    Error::Store(concord_proto::rpctypes::COMPACTED.status())
}

impl Kv for FlakyKv {
    async fn txn(&self, request: TxnRequest) -> Result<TxnResponse> {
        self.inner.txn(request).await
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        if self.compacted(request.revision) {
            return Err(compaction());
        }
        self.inner.range(request).await
    }

    async fn watch(&self, request: WatchCreateRequest) -> Result<WatchStream> {
        if self.compacted(request.start_revision) {
            return Ok(Box::pin(futures::stream::iter([Err(compaction())])));
        }
        let mut cut = self.cuts.subscribe();
        cut.borrow_and_update();
        let inner = self.inner.watch(request).await?;
        let stream = futures::stream::unfold(Some((inner, cut)), |state| async move {
            let (mut inner, mut cut) = state?;
            // A cut stream ends at once, losing what it had not delivered yet, as a broken
            // connection does (and deterministically so).
            tokio::select! {
                biased;
                _ = cut.changed() => Some((Err(Error::WatchEnded("cut".into())), None)),
                item = inner.next() => item.map(|item| (item, Some((inner, cut)))),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        self.inner.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        self.inner.lease_keep_alive(id).await
    }

    async fn lease_revoke(&self, id: i64) -> Result<()> {
        self.inner.lease_revoke(id).await
    }
}

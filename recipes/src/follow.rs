//! [`Follow`]: a watch that outlives its stream, for long-lived watches (a service's
//! membership, a config key).
//!
//! A recipe's own watch ends at its first error, which is right for a recipe waiting on one
//! key for a short while. A membership or config watch lives as long as the process, across
//! endpoint failures and server restarts: when its stream breaks, `Follow` opens a new one from
//! the revision after the last event it delivered, so no event is lost or repeated. Only
//! compaction can make it skip revisions; it then says so ([`Step::Compacted`]) and its owner
//! reads the current state again.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::WatchCreateRequest;
use concord_proto::rpctypes;
use futures::StreamExt;
use tonic::Code;

use crate::error::{Error, Result};
use crate::kv::{Kv, WatchBatch, WatchStream};

/// How many times in a row a broken watch is reopened before the error is reported.
const REOPEN_ATTEMPTS: usize = 10;

/// The pause before the `n`th reopening in a row (from 0): doubling from 50 ms, at most 1 s.
fn default_backoff(n: usize) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << n.min(16))
        .min(Duration::from_secs(1))
}

/// What a [`Follow`] saw next.
#[derive(Debug)]
pub enum Step {
    /// The events of one or more revisions.
    Batch(WatchBatch),
    /// The revisions from [`Follow::next_revision`] on were compacted away: read the state
    /// again, then [`restart_at`](Follow::restart_at) the revision after that read.
    Compacted,
}

/// A resuming watch on `[key, range_end)` (see the module docs).
pub struct Follow<K: Kv> {
    kv: K,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision not delivered yet.
    next: i64,
    stream: Option<WatchStream>,
    backoff: Arc<dyn Fn(usize) -> Duration + Send + Sync>,
    /// How many reopenings in a row may fail before the error is reported.
    attempts: usize,
}

impl<K: Kv> Follow<K> {
    /// A watch on `[key, range_end)` from revision `start` (opened on first use).
    pub fn new(kv: K, key: Vec<u8>, range_end: Vec<u8>, start: i64) -> Self {
        Self {
            kv,
            key,
            range_end,
            next: start,
            stream: None,
            backoff: Arc::new(default_backoff),
            attempts: REOPEN_ATTEMPTS,
        }
    }

    /// Never reports a failure that reopening may cure: keeps reopening (with the backoff)
    /// for as long as an outage lasts. Only errors reopening cannot cure end it.
    pub fn reopening_forever(mut self) -> Self {
        self.attempts = usize::MAX;
        self
    }

    /// Pauses `backoff(n)` before the `n`th reopening in a row instead of the default.
    pub fn with_backoff(mut self, backoff: impl Fn(usize) -> Duration + Send + Sync + 'static) -> Self {
        self.backoff = Arc::new(backoff);
        self
    }

    /// The first revision not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// Continues from revision `start` (after a compaction).
    pub fn restart_at(&mut self, start: i64) {
        self.stream = None;
        self.next = start;
    }

    /// The next batch of events, reopening the watch as often as it takes (up to ten times in
    /// a row, unless [`reopening_forever`](Self::reopening_forever)). After an error, the next
    /// call starts over.
    pub async fn next(&mut self) -> Result<Step> {
        let mut failures = 0;
        loop {
            let failed = match &mut self.stream {
                None => match self.kv.watch(self.request()).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        continue;
                    }
                    Err(err) => err,
                },
                Some(stream) => match stream.next().await {
                    Some(Ok(batch)) => {
                        self.delivered(&batch);
                        return Ok(Step::Batch(batch));
                    }
                    Some(Err(err)) => err,
                    None => Error::WatchEnded("watch stream ended".into()),
                },
            };
            self.stream = None;
            if is_compacted(&failed) {
                return Ok(Step::Compacted);
            }
            failures += 1;
            if !reopenable(&failed) || failures >= self.attempts {
                return Err(failed);
            }
            tracing::debug!(error = %failed, from = self.next, "reopening a broken watch");
            tokio::time::sleep((self.backoff)(failures - 1)).await;
        }
    }

    fn request(&self) -> WatchCreateRequest {
        WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            start_revision: self.next,
            ..Default::default()
        }
    }

    fn delivered(&mut self, batch: &WatchBatch) {
        let last = batch.events.last().and_then(|event| event.kv.as_ref());
        self.next = match last {
            Some(kv) => kv.mod_revision + 1,
            // A batch without events (a progress notice) vouches for every revision up to
            // its header's.
            None => self.next.max(batch.revision + 1),
        };
    }
}

/// Whether `err` is the watch's start revision having been compacted.
pub fn is_compacted(err: &Error) -> bool {
    matches!(err, Error::Store(status) if rpctypes::is_compacted(status))
}

/// Whether a watch that failed with `err` is worth opening again.
fn reopenable(err: &Error) -> bool {
    match err {
        Error::WatchEnded(_) => true,
        Error::Store(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Cancelled
                | Code::Internal
                | Code::Aborted
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_doubles_up_to_a_second() {
        let pauses: Vec<_> = (0..7).map(|n| default_backoff(n).as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(default_backoff(usize::MAX), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn reopening_forever_outlasts_a_long_outage() {
        use concord_proto::etcdserverpb::TxnRequest;

        let kv = crate::memory::MemoryKv::new();
        let mut bounded = Follow::new(kv.clone(), b"k".to_vec(), Vec::new(), 1);
        let mut forever = Follow::new(kv.clone(), b"k".to_vec(), Vec::new(), 1).reopening_forever();
        kv.set_unavailable(true);
        // The default gives up after ten failures in a row (about 6 s of backoff).
        let gave_up = tokio::time::timeout(Duration::from_secs(60), bounded.next()).await;
        assert!(matches!(gave_up, Ok(Err(_))), "{gave_up:?}");
        // Forever keeps going through a minute of outage, then delivers.
        let outage = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            kv.set_unavailable(false);
            let put = TxnRequest {
                success: vec![crate::kv::put_op("k", "v", 0)],
                ..Default::default()
            };
            kv.txn(put).await.unwrap();
        };
        let (next, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(120), forever.next()),
            outage
        );
        assert!(matches!(next, Ok(Ok(Step::Batch(_)))), "{next:?}");
    }

    #[test]
    fn only_transient_failures_reopen() {
        assert!(reopenable(&Error::WatchEnded("gone".into())));
        assert!(reopenable(&Error::Store(tonic::Status::unavailable("x"))));
        assert!(!reopenable(&Error::Store(tonic::Status::permission_denied("x"))));
        assert!(is_compacted(&Error::Store(rpctypes::COMPACTED.status())));
    }
}

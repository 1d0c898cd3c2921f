//! [`Follow`]: a watch that outlives its stream, for the long-lived watches of this crate
//! ([`ConfigWatch`](crate::ConfigWatch), [`ServiceWatch`](crate::ServiceWatch)).
//!
//! A recipe watch ends at its first error, which is right for a recipe waiting on one key for
//! a short while. A config or membership watch lives as long as the process, across endpoint
//! failures and server restarts: when its stream breaks, `Follow` opens a new one from the
//! revision after the last event it delivered (on whichever endpoint the client uses by then),
//! so no event is lost or repeated. Only compaction can make it skip revisions; it then says
//! so ([`Step::Compacted`]) and the owner reads the current state again.

use concord_proto::etcdserverpb::WatchCreateRequest;
use concord_proto::rpctypes;
use concord_recipes::{Kv, WatchBatch, WatchStream};
use futures::StreamExt;
use tonic::Code;

use crate::client::Client;
use crate::error::Result;

/// How many times in a row a broken watch is reopened before the error is reported (each
/// reopening already tries every endpoint, with the client's backoff in between).
const REOPEN_ATTEMPTS: usize = 10;

/// What a [`Follow`] saw next.
pub(crate) enum Step {
    /// The events of one or more revisions.
    Batch(WatchBatch),
    /// The revisions from [`Follow::next_revision`] on were compacted away: read the state
    /// again, then [`restart_at`](Follow::restart_at) the revision after that read.
    Compacted,
}

/// A resuming watch on `[key, range_end)` (see the module docs).
pub(crate) struct Follow {
    client: Client,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision not delivered yet.
    next: i64,
    stream: Option<WatchStream>,
}

impl Follow {
    /// A watch on `[key, range_end)` from revision `start` (opened on first use).
    pub(crate) fn new(client: Client, key: Vec<u8>, range_end: Vec<u8>, start: i64) -> Self {
        Self {
            client,
            key,
            range_end,
            next: start,
            stream: None,
        }
    }

    /// Continues from revision `start` (after a compaction).
    pub(crate) fn restart_at(&mut self, start: i64) {
        self.stream = None;
        self.next = start;
    }

    /// The next batch of events, reopening the watch as often as it takes (up to
    /// [`REOPEN_ATTEMPTS`] times in a row). After an error, the next call starts over.
    pub(crate) async fn next(&mut self) -> Result<Step> {
        let mut failures = 0;
        loop {
            let failed = match &mut self.stream {
                None => match self.client.watch(self.request()).await {
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
                    None => concord_recipes::Error::WatchEnded("watch stream ended".into()),
                },
            };
            self.stream = None;
            if compacted(&failed) {
                return Ok(Step::Compacted);
            }
            failures += 1;
            if !reopenable(&failed) || failures >= REOPEN_ATTEMPTS {
                return Err(failed.into());
            }
            tracing::debug!(error = %failed, from = self.next, "reopening a broken watch");
            tokio::time::sleep(self.client.options().backoff(failures - 1)).await;
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
pub(crate) fn compacted(err: &concord_recipes::Error) -> bool {
    matches!(err, concord_recipes::Error::Store(status) if rpctypes::is_compacted(status))
}

/// Whether a watch that failed with `err` is worth opening again.
fn reopenable(err: &concord_recipes::Error) -> bool {
    match err {
        concord_recipes::Error::WatchEnded(_) => true,
        concord_recipes::Error::Store(status) => matches!(
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

//! Catching unsynced watchers up from MVCC history (etcd's `syncWatchersLoop`).
//!
//! A watcher is unsynced when it was created with a start revision in the past, or when its
//! stream's channel was full as apply notified it. The catch-up task reads history in windows of
//! at most `CATCH_UP_REVISIONS` revisions, without holding the hub lock while it reads, then
//! delivers each window under the lock and moves watchers that have everything up to the newest
//! notified revision back to synced. Watchers whose channel has no room are skipped, so a
//! stalled client costs nothing until it reads again.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::WatchResponse;
use tokio::sync::mpsc;

use super::fragment;
use super::hub::{Delivery, HubState, WatchHub, WatcherKey, deliver, has_room, header};
use crate::mvcc::MvccError;

/// Most revisions one catch-up round reads from history.
const CATCH_UP_REVISIONS: i64 = 512;

/// How often the catch-up task looks for unsynced watchers without being woken.
const CATCH_UP_INTERVAL: Duration = Duration::from_millis(100);

impl WatchHub {
    /// Feeds unsynced watchers from history until `shutdown` completes.
    pub async fn run_catch_up(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(CATCH_UP_INTERVAL) => {}
            }
            // Keep going while rounds make progress, so a burst of work is drained promptly.
            loop {
                match self.catch_up_round() {
                    Ok(true) => tokio::task::yield_now().await,
                    Ok(false) => break,
                    Err(err) => {
                        tracing::error!(error = %err, "watch catch-up failed");
                        break;
                    }
                }
            }
        }
    }

    /// One catch-up round; true when it delivered something and more may be waiting.
    pub(super) fn catch_up_round(&self) -> Result<bool, MvccError> {
        let compacted = self.store.compacted_revision();
        let (start, target, prev_kv) = {
            let mut state = self.lock();
            if state.unsynced.is_empty() {
                return Ok(false);
            }
            let target = state.notified_rev;
            self.cancel_compacted(&mut state, compacted, target);
            self.promote_caught_up(&mut state);
            // Only watchers whose stream has room: one whose client stopped reading would
            // have its whole window read from history, selected and refused again every round
            // (for 100-put txns, 51,200 events of CPU and transient memory every 100 ms).
            let ready = || state.unsynced.values().filter(|w| has_room(w));
            let Some(start) = ready().map(|w| w.next_rev).min() else {
                return Ok(false);
            };
            let prev_kv = ready().any(|w| w.options.prev_kv);
            (start, target, prev_kv)
        };
        if start > target {
            return Ok(false);
        }
        // Read history without the lock: apply keeps notifying meanwhile.
        let end = target.min(start + CATCH_UP_REVISIONS - 1);
        let events = match self.store.events(start, end + 1, prev_kv) {
            Ok(events) => events,
            // Compacted between our check and the read: the next round cancels them.
            Err(MvccError::Compacted) => return Ok(false),
            Err(err) => return Err(err),
        };

        let mut state = self.lock();
        let mut progressed = false;
        let mut closed = Vec::new();
        for (key, watcher) in state.unsynced.iter_mut() {
            if watcher.next_rev < start || watcher.next_rev > end || !has_room(watcher) {
                continue; // registered meanwhile below our window, not in it, or stalled
            }
            if watcher.options.prev_kv && !prev_kv {
                // Registered (or given room) after the read was planned without previous
                // values: sending it these events would drop their prev_kv. Next round.
                continue;
            }
            let selected = watcher.select(&events);
            if selected.is_empty() {
                watcher.next_rev = end + 1;
                progressed = true;
                continue;
            }
            // Several responses, cut at revision boundaries, so that no response grows past what
            // clients accept by default (4 MiB in gRPC) however long the window is.
            let responses = fragment::split_at_revisions(selected, self.max_response_bytes)
                .into_iter()
                .map(|events| WatchResponse {
                    header: header(end),
                    watch_id: watcher.id,
                    events,
                    ..Default::default()
                })
                .collect();
            match deliver(watcher, responses, self.max_response_bytes) {
                Delivery::Sent => {
                    watcher.next_rev = end + 1;
                    watcher.sent_since_progress = true;
                    progressed = true;
                }
                Delivery::Full => {}
                Delivery::Closed => closed.push(*key),
            }
        }
        for key in closed {
            state.unsynced.remove(&key);
        }
        self.promote_caught_up(&mut state);
        Ok(progressed && !state.unsynced.is_empty())
    }

    /// Moves unsynced watchers that have everything up to the notified revision to synced.
    fn promote_caught_up(&self, state: &mut HubState) {
        let notified = state.notified_rev;
        let ready: Vec<WatcherKey> = state
            .unsynced
            .iter()
            .filter(|(_, w)| w.next_rev > notified)
            .map(|(k, _)| *k)
            .collect();
        for key in ready {
            if let Some(watcher) = state.unsynced.remove(&key) {
                state.synced.insert(key, watcher);
            }
        }
    }

    /// Cancels unsynced watchers whose next revision was compacted away, telling their client
    /// the compacted revision (etcd: a response with `compact_revision` set, canceled).
    fn cancel_compacted(&self, state: &mut HubState, compacted: i64, revision: i64) {
        let lost: Vec<WatcherKey> = state
            .unsynced
            .iter()
            .filter(|(_, w)| w.next_rev < compacted)
            .map(|(k, _)| *k)
            .collect();
        for key in lost {
            let Some(watcher) = state.unsynced.get(&key) else {
                continue;
            };
            let response = WatchResponse {
                header: header(revision),
                watch_id: watcher.id,
                compact_revision: compacted,
                canceled: true,
                ..Default::default()
            };
            match watcher.sink.try_send(response.into()) {
                Err(mpsc::error::TrySendError::Full(_)) => {} // try again next round
                _ => {
                    state.unsynced.remove(&key);
                    if let Some(ids) = state.streams.get_mut(&key.0) {
                        ids.used.remove(&key.1);
                    }
                }
            }
        }
    }
}

//! Watch: streams of revision-ordered changes, fed from the apply path.
//!
//! # Layout
//! - [`watcher`]: one watch (key range, filters, where its next event starts).
//! - [`hub`]: the [`WatchHub`], etcd's `watchableStore`: every watcher is either *synced*
//!   (apply hands it new events directly) or *unsynced* (behind; a catch-up task feeds it from
//!   MVCC history). A watcher whose stream cannot take more is moved to unsynced instead of
//!   blocking apply or buffering without bound.
//! - [`catch_up`]: the task that feeds unsynced watchers from MVCC history.
//! - [`fragment`]: splitting a large response into fragments, and a catch-up window into
//!   responses at revision boundaries.
//! - [`outgoing`]: what a stream's bounded channel carries.
//!
//! The gRPC side (one task per `Watch` stream) is `crate::api::watch`.

pub mod catch_up;
pub mod fragment;
pub mod hub;
pub mod outgoing;
pub mod watcher;

pub use hub::{StreamId, WatchHub};
pub use outgoing::{Outgoing, Sink};
pub use watcher::{WatchOptions, Watcher};

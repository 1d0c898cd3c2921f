//! A Rust client for Concord (and any etcd v3 server): etcd's KV, Watch and Lease services
//! over gRPC with endpoint failover, and the coordination recipes of [`concord_recipes`] on
//! top of them.
//!
//! [`Client`] implements the recipes' [`Kv`] trait, so every recipe (mutexes, elections,
//! semaphores, barriers, queues, pub/sub) runs in the client exactly as it runs in the server.
//! The methods below are thin layers over those recipes for the common cases:
//!
//! - key-values: [`Client::put`], [`Client::get`], [`Client::get_prefix`], [`Client::delete`];
//!   [`Client::watch_prefix`] follows a prefix and reopens itself after any outage;
//! - locks: [`Client::lock`] gives a [`LockGuard`] (with a fencing compare and a loss signal);
//!   [`Client::session`] gives a [`SharedSession`] whose one lease carries many locks and
//!   leaderships;
//! - leader election: [`Client::lead`] runs work while leading, as a [`LeaderLoop`];
//!   [`Client::campaign`] gives a [`Leadership`]; [`Client::observe`] follows the leader;
//! - service registry (through the server's Registry service): [`Client::register`] gives a
//!   heartbeating [`Registration`] that registers again by itself after a lost lease;
//!   [`Client::discover`] gives an always-current [`Discovery`] with pickers,
//!   [`Client::watch_service`] follows membership, [`Client::instances`] lists it once;
//! - typed config hot reload (through the server's Config service): [`Client::config`] gives a
//!   [`LiveConfig`] kept current in the background; [`Client::put_config`],
//!   [`Client::put_config_if`] and [`Client::put_config_text`] write versions;
//! - pub/sub (through the server's PubSub service): [`Client::publish`], and
//!   [`Client::subscribe`] gives a [`Subscription`] that resumes by itself.
//!
//! None of them needs a retry loop around it: requests fail over between endpoints, and
//! long-lived streams reopen from where they stopped, with a capped, jittered backoff, for as
//! long as an outage lasts. What ends them is an error retrying cannot fix, and
//! [`Error::kind`] says which.
//!
//! ```no_run
//! # #[derive(serde::Deserialize)] struct Limits { max_connections: u32 }
//! # async fn schedule(_: concord_client::LeaderKey) {}
//! # async fn run() -> concord_client::Result<()> {
//! use std::time::Duration;
//! use concord_client::Client;
//! use futures::StreamExt;
//!
//! let client = Client::connect(["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]).await?;
//!
//! // A lock: `lost()` fires before the server can have passed it on.
//! let guard = client.lock("jobs/compaction").await?;
//! tokio::select! { () = guard.lost() => {}, () = async { /* work */ } => guard.unlock().await? }
//!
//! // A leader loop: campaigns, runs the work while leading, stops it when leadership is lost.
//! let scheduler = client.lead("scheduler", "worker-1", Duration::from_secs(5), schedule);
//!
//! // Registration with heartbeats, and discovery.
//! let me = client.register("billing", "b-1", "10.0.0.7:8080", Duration::from_secs(10)).await?;
//! let billing = client.discover("billing").await?.pick();
//!
//! // Typed config, kept current in the background.
//! let mut limits = client.config::<Limits>("billing", "limits").await?;
//! limits.changed().await?;
//!
//! // Pub/sub.
//! client.publish("orders", "order 7").await?;
//! let mut orders = client.subscribe("orders").await?;
//! let next = orders.next().await;
//!
//! // Many locks and a leadership on one lease.
//! let session = client.session(Duration::from_secs(10)).await?;
//! let (a, b) = (session.lock("accounts").await?, session.lock("ledger").await?);
//! session.close().await?;
//! # drop((me, billing, next, a, b)); scheduler.stop().await; Ok(()) }
//! ```
//!
//! # Failover
//!
//! The client talks to one endpoint at a time and moves on to the next when it fails. A request
//! that failed there is retried on the next one when that is safe: see [`Client`].
//!
//! # Layout
//!
//! - `client.rs`: [`Client`], the basic key-value calls, and the [`Kv`] implementation.
//! - `endpoints.rs`: the endpoint list, one cached channel per endpoint, the retry policy.
//! - `watch.rs`: one watch on its own Watch stream; `lease.rs`: the shared keep-alive stream.
//! - `owned.rs`: a session owned by one handle, ended (in the background if need be) with it,
//!   and the hold (own or shared session) a lock or a leadership is held with.
//! - `lock.rs`, `election.rs`, `leader_loop.rs`, `registry/`, `config/`, `pubsub.rs`: the
//!   coordination helpers; `resuming.rs`: what their long-lived streams share to reopen.
//! - `options.rs`: [`ClientOptions`]; `error.rs`: [`Error`].

#![warn(missing_debug_implementations, missing_docs)]

mod client;
mod config;
mod credentials;
mod election;
mod endpoints;
mod error;
mod leader_loop;
mod lease;
mod lock;
mod options;
mod owned;
mod pubsub;
mod registry;
mod resuming;
mod watch;

pub use client::Client;
/// etcd's error texts and codes, and predicates such as [`rpctypes::is_compacted`].
pub use concord_proto::rpctypes;
pub use config::{ConfigOptions, ConfigVersions, ConfigWrite, LiveConfig, Rejection, Versioned};
pub use credentials::{AuthChannel, Credentials, TokenInterceptor};
pub use election::{Leader, LeaderWatch, Leadership};
pub use error::{Error, ErrorKind, Result};
pub use leader_loop::LeaderLoop;
pub use lock::{LockGuard, SharedSession};
pub use options::ClientOptions;
pub use pubsub::{Message, Retention, Subscription, TOPICS_PREFIX, TopicStatus};
pub use registry::{
    Discovery, Endpoint, Instance, Membership, MembershipChange, NewInstance, Registration,
    RegistrationState, SERVICES_PREFIX, ServiceWatch,
};
pub use watch::PrefixWatch;

pub use concord_recipes::election::LeaderKey;
pub use concord_recipes::{Kv, WatchBatch, WatchStream};

/// etcd's protocol types, as the [`Kv`] methods take and return them.
pub use concord_proto as proto;
/// The coordination recipes, to use with a [`Client`] directly (`Semaphore::new(&session, ..)`).
pub use concord_recipes as recipes;

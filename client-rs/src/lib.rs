//! A Rust client for Concord (and any etcd v3 server): etcd's KV, Watch and Lease services
//! over gRPC with endpoint failover, and the coordination recipes of [`concord_recipes`] on
//! top of them.
//!
//! [`Client`] implements the recipes' [`Kv`] trait, so every recipe (mutexes, elections,
//! semaphores, barriers, queues, pub/sub) runs in the client exactly as it runs in the server.
//! The methods below are thin layers over those recipes for the common cases:
//!
//! - key-values: [`Client::put`], [`Client::get`], [`Client::get_prefix`], [`Client::delete`];
//! - locks: [`Client::lock`] gives a [`LockGuard`] (with a fencing compare);
//! - service registry (through the server's Registry service): [`Client::register`] gives a
//!   heartbeating [`Registration`] that registers again by itself after a lost lease;
//!   [`Client::discover`] gives an always-current [`Discovery`] with pickers,
//!   [`Client::watch_service`] follows membership, [`Client::instances`] lists it once;
//! - typed config hot reload (through the server's Config service): [`Client::config`] gives a
//!   [`LiveConfig`] kept current in the background; [`Client::put_config`],
//!   [`Client::put_config_if`] and [`Client::put_config_text`] write versions;
//! - pub/sub (through the server's PubSub service): [`Client::publish`], and
//!   [`Client::subscribe`] gives a [`Subscription`] that resumes by itself;
//! - leader election: [`Client::campaign`] gives a [`Leadership`]; [`Client::observe`]
//!   follows the leader.
//!
//! ```no_run
//! # async fn run() -> concord_client::Result<()> {
//! use concord_client::Client;
//!
//! let client = Client::connect(["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]).await?;
//! let guard = client.lock("jobs/compaction").await?;
//! // ... exclusive work ...
//! guard.unlock().await?;
//! # Ok(()) }
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
//! - `owned.rs`: a session owned by one handle, ended (in the background if need be) with it.
//! - `lock.rs`, `registry.rs`, `config.rs`, `election.rs`: the coordination helpers.
//! - `options.rs`: [`ClientOptions`]; `error.rs`: [`Error`].

mod client;
mod config;
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

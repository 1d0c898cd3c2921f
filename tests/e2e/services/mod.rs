//! Concord's own services (registry, config center, pub/sub) end to end: driven by
//! `concordctl`, the Rust client, raw gRPC and `etcdctl`, on a lone member and on a
//! 3-member cluster across a leader change.

mod cluster;
mod config;
mod ctl;
mod pubsub;
mod registry;
pub(crate) mod support;

//! End-to-end tests: the real `concord` binary, driven by real `etcdctl` and the `etcd-client`
//! crate, killed and restarted. One test binary, one module per topic.

// Tests fail loudly: unwrap/expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod auth;
mod background;
mod bad_input;
mod checkers;
mod client;
mod client_kv;
mod client_resilience;
mod cluster;
mod crash;
mod disk_full;
mod etcdctl_kv;
mod examples;
mod gateway;
mod harness;
mod lease;
mod lease_wave;
mod log_cache;
mod maintenance;
mod proxy;
mod recipes;
mod robustness;
mod services;
mod tls;
mod watch;
mod watch_lifecycle;

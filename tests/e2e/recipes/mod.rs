//! Locks and elections, end to end: `etcdctl lock` and `etcdctl elect` print what they print
//! against etcd 3.4; the Lock and Election services through the `etcd-client` crate, with
//! etcd's errors; mutual exclusion under 32 contenders; crashed holders and leaders handing
//! over within their lease TTL, their fencing tokens failing; a cancelled Lock leaving no key.
//! `on_the_server`: every other recipe once against the store, so that it and the double agree.

mod election;
mod etcdctl;
mod lock;
mod on_the_server;
mod support;

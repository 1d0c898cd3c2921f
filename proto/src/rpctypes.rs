//! etcd's client-visible error texts that the protocol layer itself answers with (etcd keeps
//! its texts in `rpctypes`). The server's error type uses these same constants.

/// etcd's `etcdserver: too many operations in txn request`.
pub const ERR_TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

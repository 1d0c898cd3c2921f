//! The HTTP/JSON gateway, driven with curl: etcd's grpc-gateway paths and ours, streams,
//! errors, auth and TLS, and the same requests side by side with etcd 3.4's gateway.

mod curl;
mod kv;
mod services;
mod side_by_side;
mod streams;

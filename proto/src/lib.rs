//! etcd v3 compatible protocol definitions for Concord.
//!
//! The `.proto` sources live in `proto/proto/` and are Concord's own
//! definitions, wire-compatible with etcd v3.5 (same packages, services,
//! RPCs, messages, enums, field names and field numbers), so stock etcd
//! clients can talk to a Concord server unchanged.
//!
//! Each protobuf package becomes a sibling module at the crate root, because
//! prost refers to other packages as `super::<package>::...`:
//!
//! - [`mvccpb`]: `KeyValue`, `Event`.
//! - [`authpb`]: `User`, `Role`, `Permission`, `UserAddOptions`.
//! - [`etcdserverpb`]: the `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`
//!   and `Auth` services and their messages.
//! - [`v3lockpb`]: the `Lock` service.
//! - [`v3electionpb`]: the `Election` service.
//! - [`raftpb`]: Concord's own Raft log commands and entries (not etcd's API).
//! - [`concord`]: Concord's own client services (`concord.registry.v1`, `concord.config.v1`, `concord.pubsub.v1`).
//!
//! Every service has a generated server (`<service>_server::{Trait, TraitServer}`)
//! and client (`<service>_client::<Service>Client`), all on [`codec::GuardedCodec`], which
//! refuses txns nested deeper than [`nesting::MAX_TXN_DEPTH`] before decoding them.

#![deny(missing_docs)]

pub mod codec;
pub mod nesting;
pub mod rpctypes;
pub mod txn;

/// The shared byte buffer of `mvccpb::KeyValue`'s key and value: cloning one copies no data,
/// so an event fanned out to many watchers is not copied per watcher.
pub use prost::bytes::Bytes;

/// etcd's storage-level key/value and event types (package `mvccpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's user, role and permission types (package `authpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's v3 client API services and messages (package `etcdserverpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's distributed lock service (package `v3lockpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's leader election service (package `v3electionpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// Concord's Raft protocol: replicated commands and the WAL's log entry (package `concordraftpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod raftpb {
    tonic::include_proto!("concordraftpb");
}

/// Concord's own client services (package `concord.*`), beside etcd's.
pub mod concord {
    /// The service registry (package `concord.registry.v1`).
    pub mod registry {
        /// Version 1.
        #[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
        pub mod v1 {
            tonic::include_proto!("concord.registry.v1");
            include!(concat!(env!("OUT_DIR"), "/concord.registry.v1.serde.rs"));
        }
    }

    /// The config center (package `concord.config.v1`).
    pub mod config {
        /// Version 1.
        #[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
        pub mod v1 {
            tonic::include_proto!("concord.config.v1");
            include!(concat!(env!("OUT_DIR"), "/concord.config.v1.serde.rs"));
        }
    }

    /// Publish/subscribe (package `concord.pubsub.v1`).
    pub mod pubsub {
        /// Version 1.
        #[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
        pub mod v1 {
            tonic::include_proto!("concord.pubsub.v1");
            include!(concat!(env!("OUT_DIR"), "/concord.pubsub.v1.serde.rs"));
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::etcdserverpb::{
        Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, range_request, request_op,
    };

    #[test]
    fn put_request_wire_layout() {
        let req = PutRequest {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            lease: 5,
            prev_kv: true,
            ..Default::default()
        };
        let expected: &[u8] = &[
            0x0a, 3, b'f', b'o', b'o', // 1: key (length-delimited)
            0x12, 3, b'b', b'a', b'r', // 2: value (length-delimited)
            0x18, 5, // 3: lease (varint)
            0x20, 1, // 4: prev_kv (varint)
        ];
        assert_eq!(req.encode_to_vec(), expected);
    }

    #[test]
    fn range_request_wire_layout() {
        let req = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit: 10,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Mod as i32,
            serializable: true,
            max_create_revision: 7,
            ..Default::default()
        };
        let expected: &[u8] = &[
            0x0a, 1, b'a', // 1: key
            0x12, 1, b'b', // 2: range_end
            0x18, 10, // 3: limit
            0x28, 2, // 5: sort_order = DESCEND
            0x30, 3, // 6: sort_target = MOD
            0x38, 1, // 7: serializable
            0x68, 7, // 13: max_create_revision
        ];
        assert_eq!(req.encode_to_vec(), expected);
    }

    #[test]
    fn compare_high_field_numbers() {
        let cmp = Compare {
            target: compare::CompareTarget::Lease as i32,
            range_end: b"z".to_vec(),
            target_union: Some(compare::TargetUnion::Lease(9)),
            ..Default::default()
        };
        let expected: &[u8] = &[
            0x10, 4, // 2: target = LEASE
            0x40, 9, // 8: lease (oneof target_union)
            0x82, 0x04, 1, b'z', // 64: range_end (two-byte tag)
        ];
        assert_eq!(cmp.encode_to_vec(), expected);
    }

    #[test]
    fn txn_request_round_trip() -> Result<(), prost::DecodeError> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::NotEqual as i32,
                target: compare::CompareTarget::Value as i32,
                key: b"k".to_vec(),
                target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
                range_end: b"l".to_vec(),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v2".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    compare: vec![],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: b"k".to_vec(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                })),
            }],
        };
        let bytes = txn.encode_to_vec();
        assert_eq!(TxnRequest::decode(bytes.as_slice())?, txn);
        Ok(())
    }
}

#[cfg(test)]
mod json_tests {
    #![allow(clippy::unwrap_used)]

    use super::etcdserverpb::{PutRequest, RangeResponse, ResponseHeader, TxnRequest, compare, request_op};
    use super::mvccpb::KeyValue;

    #[test]
    fn answers_use_proto_names_and_strings_for_64_bit_integers() {
        let answer = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 1,
                revision: 2,
                raft_term: 3,
            }),
            kvs: vec![KeyValue {
                key: crate::Bytes::from_static(b"foo"),
                value: crate::Bytes::from_static(b"bar"),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                lease: 0,
            }],
            count: 1,
            more: false,
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"1","revision":"2","raft_term":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn requests_take_proto_and_json_names_and_enums_by_name() {
        let txn: TxnRequest = serde_json::from_str(
            r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"request_put":{"key":"Zm9v","value":"YmFy"}}]}"#,
        )
        .unwrap();
        assert_eq!(txn.compare[0].target, compare::CompareTarget::Create as i32);
        assert_eq!(
            txn.compare[0].target_union,
            Some(compare::TargetUnion::CreateRevision(2))
        );
        assert!(matches!(
            txn.success[0].request,
            Some(request_op::Request::RequestPut(_))
        ));
    }

    #[test]
    fn unknown_fields_and_bad_base64_are_refused() {
        let unknown = serde_json::from_str::<PutRequest>(r#"{"key":"Zm9v","bogus":1}"#);
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
        assert!(serde_json::from_str::<PutRequest>(r#"{"key":"!!"}"#).is_err());
    }
}

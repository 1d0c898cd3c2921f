//! How deeply txns nest, read from their wire bytes without decoding them.
//!
//! A `TxnRequest` may hold txns in its `success` and `failure` ops, without limit on the wire.
//! Decoding is recursive, so prost stops at 100 nested messages (two per txn level: the
//! `RequestOp` and the `TxnRequest` inside it) and answers anything deeper with a bare decode
//! error. Every place that stores or replicates a txn wraps it in more messages (the Raft
//! `Command`, the WAL's `LogEntry`), so a txn the client edge just managed to decode could be
//! acknowledged and then never be read back. Concord therefore allows at most
//! [`MAX_TXN_DEPTH`] levels, well inside what every decoder accepts, and refuses deeper txns
//! with etcd's `too many operations` error before they are decoded: [`txn_depth`] measures the
//! depth from the bytes with an explicit stack, so no input can exhaust the stack or the
//! recursion limit.

/// The most txn levels one request may have: a txn without nested txns is 1 level.
///
/// Decoding a stored log entry (`LogEntry` → `Command` → txn levels → an op's request) takes
/// `2 × depth + 2` nested messages, and a response (`CommandResponse` → txn levels → a range's
/// `KeyValue`) about as many; prost allows 100. 32 leaves room for a few more wrapping
/// messages. etcd's own rule (each level gets `--max-txn-ops` minus the ops of the levels above
/// it) is checked on top of this one, on the decoded request.
pub const MAX_TXN_DEPTH: usize = 32;

/// `TxnRequest.success` and `TxnRequest.failure` (each a `RequestOp`).
const TXN_SUCCESS: u64 = 2;
const TXN_FAILURE: u64 = 3;
/// `RequestOp.request_txn`.
const OP_REQUEST_TXN: u64 = 4;
/// The wire types that open and close a group.
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;

/// A slice still to scan: its bytes, what they hold, and the txn level they sit in.
type Pending<'a> = (&'a [u8], Kind, usize);

/// What a slice of wire bytes holds.
#[derive(Clone, Copy)]
enum Kind {
    Txn,
    Op,
}

/// The nesting depth of the `TxnRequest` encoded in `bytes` (1 for a txn without nested txns),
/// or `None` once it is known to exceed `limit` (the scan stops there).
///
/// Bytes that are not valid protobuf are measured as far as they can be read: the decoder that
/// runs afterwards reports them. The scan reads every byte at most once per level it sits in,
/// and levels past `limit` are never entered.
pub fn txn_depth(bytes: &[u8], limit: usize) -> Option<usize> {
    let mut deepest = 1;
    let mut stack: Vec<Pending<'_>> = vec![(bytes, Kind::Txn, 1)];
    while let Some((mut rest, kind, depth)) = stack.pop() {
        while let Some((field, value, after)) = next_field(rest) {
            rest = after;
            let Some(value) = value else { continue };
            match (kind, field) {
                (Kind::Txn, TXN_SUCCESS | TXN_FAILURE) => stack.push((value, Kind::Op, depth)),
                (Kind::Op, OP_REQUEST_TXN) => {
                    let nested = depth + 1;
                    if nested > limit {
                        return None;
                    }
                    deepest = deepest.max(nested);
                    stack.push((value, Kind::Txn, nested));
                }
                _ => {}
            }
        }
    }
    Some(deepest)
}

/// One field read from the wire: its number, its bytes if it is length-delimited, and what
/// follows it.
type Field<'a> = (u64, Option<&'a [u8]>, &'a [u8]);

/// The deepest txn nesting of the txns held in field `field` of the message encoded in `bytes`
/// (a Raft `Command` holds its txn in field 3), as [`txn_depth`] measures it; `Some(0)` when
/// the field holds none.
pub fn field_txn_depth(bytes: &[u8], field: u64, limit: usize) -> Option<usize> {
    let mut deepest = 0;
    let mut rest = bytes;
    while let Some((number, value, after)) = next_field(rest) {
        rest = after;
        if let (true, Some(txn)) = (number == field, value) {
            deepest = deepest.max(txn_depth(txn, limit)?);
        }
    }
    Some(deepest)
}

/// Reads one field; `None` at the end of the input or where it stops being valid protobuf. A
/// group (an unknown field of an old encoding, which prost skips) is stepped over whole.
fn next_field(bytes: &[u8]) -> Option<Field<'_>> {
    let (key, rest) = varint(bytes)?;
    let field = key >> 3;
    match key & 7 {
        START_GROUP => skip_group(field, rest).map(|rest| (field, None, rest)),
        wire_type => scalar_or_bytes(wire_type, rest).map(|(value, rest)| (field, value, rest)),
    }
}

/// A value of a wire type other than a group's: its bytes if it is length-delimited, and what
/// follows it.
fn scalar_or_bytes(wire_type: u64, bytes: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    match wire_type {
        0 => varint(bytes).map(|(_, rest)| (None, rest)),
        1 => bytes.get(8..).map(|rest| (None, rest)),
        2 => {
            let (len, rest) = varint(bytes)?;
            let len = usize::try_from(len).ok()?;
            (len <= rest.len()).then(|| (Some(&rest[..len]), &rest[len..]))
        }
        5 => bytes.get(4..).map(|rest| (None, rest)),
        _ => None,
    }
}

/// What follows the group of field `field` whose start tag `bytes` follow (groups nest; each
/// ends with an end tag of its own field number), without recursion.
fn skip_group(field: u64, mut bytes: &[u8]) -> Option<&[u8]> {
    let mut open = vec![field];
    while let Some(&innermost) = open.last() {
        let (key, rest) = varint(bytes)?;
        let (inner, wire_type) = (key >> 3, key & 7);
        bytes = match wire_type {
            START_GROUP => {
                open.push(inner);
                rest
            }
            END_GROUP if inner == innermost => {
                open.pop();
                rest
            }
            END_GROUP => return None,
            _ => scalar_or_bytes(wire_type, rest)?.1,
        };
    }
    Some(bytes)
}

/// A base-128 varint (at most 10 bytes) and what follows it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest, request_op};

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    /// A txn `depth` levels deep, each level holding a compare, a put and the next level (in
    /// its failure branch on odd levels).
    fn nested(depth: usize) -> TxnRequest {
        let mut txn = TxnRequest {
            success: vec![put("leaf")],
            ..Default::default()
        };
        for level in 1..depth {
            let op = RequestOp {
                request: Some(request_op::Request::RequestTxn(txn)),
            };
            let mut outer = TxnRequest {
                compare: vec![Compare {
                    key: b"c".to_vec(),
                    ..Default::default()
                }],
                success: vec![put(&format!("p{level}"))],
                ..Default::default()
            };
            if level % 2 == 0 {
                outer.success.push(op);
            } else {
                outer.failure.push(op);
            }
            txn = outer;
        }
        txn
    }

    #[test]
    fn measures_the_depth_of_nested_txns() {
        for depth in [1, 2, 3, 17, MAX_TXN_DEPTH] {
            let bytes = nested(depth).encode_to_vec();
            assert_eq!(txn_depth(&bytes, MAX_TXN_DEPTH), Some(depth), "depth {depth}");
        }
        let too_deep = nested(MAX_TXN_DEPTH + 1).encode_to_vec();
        assert_eq!(txn_depth(&too_deep, MAX_TXN_DEPTH), None);
        assert_eq!(txn_depth(&[], MAX_TXN_DEPTH), Some(1), "an empty txn");
    }

    #[test]
    fn the_deepest_branch_counts() {
        let mut txn = nested(3);
        txn.success.push(RequestOp {
            request: Some(request_op::Request::RequestTxn(nested(9))),
        });
        assert_eq!(txn_depth(&txn.encode_to_vec(), MAX_TXN_DEPTH), Some(10));
    }

    #[test]
    fn a_hundred_thousand_levels_are_refused_without_recursion() {
        // Built by hand, inside out: each level is a RequestOp (field 4) inside a
        // TxnRequest's success (field 2), so it adds only the two tags and lengths.
        let mut headers: Vec<Vec<u8>> = Vec::new();
        let mut inner = 0;
        for _ in 0..100_000 {
            let mut txn_header = vec![0x12];
            let mut op_header = vec![0x22];
            encode_len(inner, &mut op_header);
            encode_len(op_header.len() + inner, &mut txn_header);
            inner += txn_header.len() + op_header.len();
            headers.push(op_header);
            headers.push(txn_header);
        }
        let bytes: Vec<u8> = headers.into_iter().rev().flatten().collect();
        assert_eq!(bytes.len(), inner);
        assert_eq!(txn_depth(&bytes, MAX_TXN_DEPTH), None);
        assert!(
            TxnRequest::decode(bytes.as_slice()).is_err(),
            "prost refuses it too"
        );
    }

    fn encode_len(mut len: usize, out: &mut Vec<u8>) {
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }

    #[test]
    fn a_command_is_measured_by_its_txn() {
        use crate::raftpb::{Command, command};
        let command = |depth| {
            Command {
                request: Some(command::Request::Txn(nested(depth))),
                // A field after the txn is skipped like any other.
                auth_revision: 7,
            }
            .encode_to_vec()
        };
        assert_eq!(field_txn_depth(&command(5), 3, MAX_TXN_DEPTH), Some(5));
        assert_eq!(
            field_txn_depth(&command(MAX_TXN_DEPTH + 1), 3, MAX_TXN_DEPTH),
            None
        );
        let put = Command {
            request: Some(command::Request::Put(Default::default())),
            auth_revision: 0,
        };
        assert_eq!(field_txn_depth(&put.encode_to_vec(), 3, MAX_TXN_DEPTH), Some(0));
    }

    #[test]
    fn groups_prost_skips_do_not_hide_what_follows() {
        // An empty group of field 15, a nested pair of groups, then a txn too deep: prost
        // skips the groups and decodes the txn, so the scan must step over them too.
        let too_deep = nested(MAX_TXN_DEPTH + 1).encode_to_vec();
        for groups in [
            &[0x7b_u8, 0x7c][..],
            &[0x7b, 0x83, 0x01, 0x08, 0x01, 0x84, 0x01, 0x7c],
        ] {
            let bytes = [groups, &too_deep].concat();
            assert!(
                TxnRequest::decode(bytes.as_slice()).is_ok(),
                "prost skips the group"
            );
            assert_eq!(txn_depth(&bytes, MAX_TXN_DEPTH), None);
        }
    }

    #[test]
    fn garbage_is_measured_as_far_as_it_reads() {
        for bytes in [
            &[0xff_u8; 16][..],
            &[0x12, 0x7f],
            &[0x12, 0x02, 0x22],
            &[0x0b, 0x00],
        ] {
            assert_eq!(txn_depth(bytes, MAX_TXN_DEPTH), Some(1));
        }
    }
}

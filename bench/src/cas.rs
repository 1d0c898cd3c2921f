//! The txn workload: each client compare-and-swaps its own key in a loop. The compare is the
//! key's mod revision as the client last saw it; the success branch puts a new value, the
//! failure branch reads the key back (so a client that lost a race would catch up). With one
//! key per client every txn succeeds: the rate is that of durable, conditional writes.

use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::response_op::Response;
use concord_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

use crate::Kv;

/// Runs `count` compare-and-swaps of key `key` on `kv`; returns each one's latency.
pub async fn cas_loop(
    mut kv: Kv,
    key: Vec<u8>,
    count: usize,
    value_size: usize,
) -> anyhow::Result<Vec<Duration>> {
    let value = vec![b'v'; value_size];
    let mut seen = 0i64; // the key's mod revision as last seen; 0: absent
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::ModRevision(seen)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            }],
        };
        let answer = kv.txn(txn).await.context("txn")?.into_inner();
        latencies.push(started.elapsed());
        seen = if answer.succeeded {
            // The put is the txn's own write: its revision is the header's.
            answer.header.map_or(0, |h| h.revision)
        } else {
            match answer.responses.first().and_then(|r| r.response.as_ref()) {
                Some(Response::ResponseRange(range)) => range.kvs.first().map_or(0, |kv| kv.mod_revision),
                _ => anyhow::bail!("a failed CAS did not read the key back"),
            }
        };
    }
    Ok(latencies)
}

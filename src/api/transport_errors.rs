//! Errors tonic's transport answers by itself, before any service sees the request, rewritten
//! to what etcd's transport (grpc-go) answers, because clients choose their error types by
//! code and text.
//!
//! Today one: a request larger than the gRPC limit (`--max-request-bytes` + 512 KiB). tonic
//! answers `OUT_OF_RANGE` ("Error, decoded message length too large: ..."), which etcd
//! clients read as a compaction error; grpc-go answers `RESOURCE_EXHAUSTED` "grpc: received
//! message larger than max (N vs. LIMIT)". A request above `--max-request-bytes` but within
//! the gRPC limit reaches the service and gets etcd's `request is too large`, as in etcd.

use concord_proto::rpctypes;
use tonic::{Code, Status};

/// What tonic's refusal of an oversized message starts with.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Rewrites a response carrying one of tonic's transport errors (a unary call's status travels
/// in the response headers) to grpc-go's; every other response passes unchanged.
pub fn as_grpc_go<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let Some(rewritten) = rewrite(&status) else {
        return response;
    };
    let headers = response.headers_mut();
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if rewritten.add_header(headers).is_err() {
        tracing::warn!(status = ?rewritten, "cannot rewrite a transport error");
    }
    response
}

/// grpc-go's status for one of tonic's transport errors, if `status` is one.
fn rewrite(status: &Status) -> Option<Status> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let rest = status.message().strip_prefix(TONIC_TOO_LARGE)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some(rpctypes::message_too_large(found, limit))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn response(status: &Status) -> http::Response<()> {
        let mut response = http::Response::new(());
        status.add_header(response.headers_mut()).unwrap();
        response
    }

    #[test]
    fn oversized_requests_answer_as_grpc_go() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 3145738 bytes, the limit is: 2097152 bytes",
        );
        let rewritten = Status::from_header_map(as_grpc_go(response(&tonic)).headers()).unwrap();
        assert_eq!(rewritten.code(), Code::ResourceExhausted);
        assert_eq!(
            rewritten.message(),
            "grpc: received message larger than max (3145738 vs. 2097152)"
        );
    }

    #[test]
    fn etcds_own_errors_pass_unchanged() {
        let compacted = Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        let kept = Status::from_header_map(as_grpc_go(response(&compacted)).headers()).unwrap();
        assert_eq!(
            (kept.code(), kept.message()),
            (compacted.code(), compacted.message())
        );
        let plain = http::Response::new(());
        assert!(as_grpc_go(plain).headers().is_empty());
    }
}

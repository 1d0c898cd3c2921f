//! The gateway's JSON: request bodies into messages, messages and errors into responses, in
//! the shapes etcd's grpc-gateway uses.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use concord_proto::rpctypes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

/// The content type of every gateway answer.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A request body as one message. An empty body is the default message, as grpc-gateway
/// takes it (`curl -X POST .../v3/maintenance/status` works without `-d`).
pub fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|err| invalid_json(&err))
}

/// The status a body that is not a valid request gets: grpc-gateway's `InvalidArgument`, with
/// serde's description (which names the line, the column and, for an unknown field, the field).
pub fn invalid_json(err: &serde_json::Error) -> Status {
    Status::invalid_argument(err.to_string())
}

/// `message` as a `200 OK` JSON answer.
pub fn answer<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => respond(StatusCode::OK, Body::from(body)),
        Err(err) => error(&rpctypes::gateway_cannot_encode(&err)),
    }
}

/// The gateway's error answer: the HTTP status of the gRPC code and
/// `{"error": MESSAGE, "message": MESSAGE, "code": CODE}`.
pub fn error(status: &Status) -> Response {
    /// Field order is the gateway's.
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        message: &'a str,
        code: i32,
    }
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    respond(http_status(status.code()), Body::from(body))
}

/// One line of a streamed answer: `{"result": MESSAGE}`.
pub fn result_line<T: Serialize>(message: &T) -> Result<Vec<u8>, Status> {
    #[derive(Serialize)]
    struct Line<'a, T> {
        result: &'a T,
    }
    let mut line =
        serde_json::to_vec(&Line { result: message }).map_err(|err| rpctypes::gateway_cannot_encode(&err))?;
    line.push(b'\n');
    Ok(line)
}

/// The last line of a stream that failed: grpc-gateway's
/// `{"error": {"grpc_code", "http_code", "message", "http_status"}}`.
pub fn error_line(status: &Status) -> Vec<u8> {
    #[derive(Serialize)]
    struct Inner<'a> {
        grpc_code: i32,
        http_code: u16,
        message: &'a str,
        http_status: &'a str,
    }
    #[derive(Serialize)]
    struct Line<'a> {
        error: Inner<'a>,
    }
    let http = http_status(status.code());
    let line = Line {
        error: Inner {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or_default(),
        },
    };
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// A JSON answer with `status`, carrying the CORS headers etcd's gateway sends.
pub fn respond(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, JSON);
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

/// The HTTP status grpc-gateway answers for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use concord_proto::etcdserverpb::{PutRequest, StatusRequest};

    use super::*;

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn an_empty_body_is_the_default_request() {
        assert_eq!(decode::<StatusRequest>(b"").unwrap(), StatusRequest::default());
        assert_eq!(decode::<StatusRequest>(b" \n").unwrap(), StatusRequest::default());
    }

    #[test]
    fn malformed_requests_are_invalid_arguments_that_say_why() {
        let truncated = decode::<PutRequest>(br#"{"key":"Zm9v""#).unwrap_err();
        assert_eq!(truncated.code(), Code::InvalidArgument);
        let unknown = decode::<PutRequest>(br#"{"key":"Zm9v","vlaue":"YmFy"}"#).unwrap_err();
        assert!(unknown.message().contains("vlaue"), "{}", unknown.message());
        let wrong_type = decode::<PutRequest>(br#"{"key":5}"#).unwrap_err();
        assert_eq!(wrong_type.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn errors_answer_as_the_gateway() {
        let response = error(&Status::not_found("etcdserver: requested lease not found"));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body_of(response).await,
            r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#
        );
    }

    #[test]
    fn stream_lines_wrap_results_and_errors() {
        let line = result_line(&PutRequest {
            key: b"foo".to_vec(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(line, b"{\"result\":{\"key\":\"Zm9v\"}}\n");
        assert_eq!(
            error_line(&Status::permission_denied("etcdserver: permission denied")),
            b"{\"error\":{\"grpc_code\":7,\"http_code\":403,\"message\":\"etcdserver: permission denied\",\"http_status\":\"Forbidden\"}}\n"
        );
    }
}

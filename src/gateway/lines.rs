//! Streams over HTTP: a request body read as a sequence of JSON messages (what a client sends
//! to a bidirectional call such as `/v3/watch`), and a gRPC answer stream written as one JSON
//! object per line.

use axum::body::{Body, BodyDataStream};
use bytes::{Buf, Bytes, BytesMut};
use concord_proto::rpctypes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Status, Streaming};

use super::json;

/// Reads JSON messages one after another (whitespace between them, or none) from a request
/// body as it arrives, never buffering more than `limit` bytes of one message.
pub struct JsonMessages {
    body: BodyDataStream,
    buffered: BytesMut,
    ended: bool,
    limit: usize,
}

impl JsonMessages {
    /// Messages from `body`, each at most `limit` bytes of JSON.
    pub fn new(body: Body, limit: usize) -> Self {
        JsonMessages {
            body: body.into_data_stream(),
            buffered: BytesMut::new(),
            ended: false,
            limit,
        }
    }

    /// The next message; `None` once the body ended between messages. A body that ends inside
    /// a message, a malformed one, or one past the limit is an error.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, Status>> {
        loop {
            let start = self.buffered.iter().position(|byte| !byte.is_ascii_whitespace());
            match start {
                None => self.buffered.clear(),
                Some(start) => {
                    self.buffered.advance(start);
                    let mut parsed = serde_json::Deserializer::from_slice(&self.buffered).into_iter::<T>();
                    match parsed.next() {
                        Some(Ok(message)) => {
                            let used = parsed.byte_offset();
                            self.buffered.advance(used);
                            return Some(Ok(message));
                        }
                        // Final, unless the message is only cut short by the end of what has
                        // arrived so far (then more is read below).
                        Some(Err(err)) if !err.is_eof() || self.ended => {
                            return Some(Err(json::invalid_json(&err)));
                        }
                        _ => {}
                    }
                }
            }
            if self.ended {
                return None;
            }
            if self.buffered.len() > self.limit {
                return Some(Err(rpctypes::gateway_request_too_large(self.limit)));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffered.extend_from_slice(&chunk),
                Some(Err(err)) => {
                    return Some(Err(Status::cancelled(format!(
                        "gateway: reading the request: {err}"
                    ))));
                }
                None => self.ended = true,
            }
        }
    }

    /// The messages after the first, as a stream for a gRPC call: it ends at the body's end or
    /// at the first message that cannot be read (grpc-gateway closes the sending side then).
    pub fn rest<T: DeserializeOwned + Send + 'static>(self) -> impl Stream<Item = T> + Send {
        futures::stream::unfold(self, |mut messages| async move {
            match messages.next::<T>().await? {
                Ok(message) => Some((message, messages)),
                Err(status) => {
                    tracing::debug!(error = %status.message(), "gateway: stream request ended");
                    None
                }
            }
        })
    }
}

/// A gRPC answer stream as a body of `{"result": ...}` lines, ended by an `{"error": ...}` line
/// if the stream fails.
pub fn answer_lines<T>(answers: Streaming<T>) -> Body
where
    T: Serialize + Send + 'static,
{
    let lines = futures::stream::unfold(Some(answers), |answers| async move {
        let mut answers = answers?;
        let line = match answers.message().await {
            Ok(Some(message)) => match json::result_line(&message) {
                Ok(line) => return Some((Ok::<_, std::io::Error>(Bytes::from(line)), Some(answers))),
                Err(status) => json::error_line(&status),
            },
            Ok(None) => return None,
            Err(status) => json::error_line(&status),
        };
        Some((Ok(Bytes::from(line)), None))
    });
    Body::from_stream(lines)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use concord_proto::etcdserverpb::LeaseKeepAliveRequest;
    use futures::stream;

    use super::*;

    fn chunked(chunks: &[&'static str]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|chunk| Ok(Bytes::from(*chunk))).collect();
        Body::from_stream(stream::iter(chunks))
    }

    #[tokio::test]
    async fn messages_split_anywhere_are_read_in_order() {
        let body = chunked(&[r#"{"ID":"#, r#""1"}{"ID""#, r#":2}"#, "\n ", r#"{"ID":3}"#]);
        let mut messages = JsonMessages::new(body, 1024);
        for id in 1..=3 {
            let message: LeaseKeepAliveRequest = messages.next().await.unwrap().unwrap();
            assert_eq!(message.id, id);
        }
        assert!(messages.next::<LeaseKeepAliveRequest>().await.is_none());
    }

    #[tokio::test]
    async fn a_body_ending_inside_a_message_is_an_error() {
        let mut messages = JsonMessages::new(chunked(&[r#"{"ID":1}{"ID""#]), 1024);
        assert!(messages.next::<LeaseKeepAliveRequest>().await.unwrap().is_ok());
        let cut = messages.next::<LeaseKeepAliveRequest>().await.unwrap();
        assert_eq!(cut.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_message_past_the_limit_is_refused() {
        let mut messages = JsonMessages::new(chunked(&[r#"{"ID":"#, "          ", "1"]), 8);
        let refused = messages.next::<LeaseKeepAliveRequest>().await.unwrap();
        assert_eq!(refused.unwrap_err().code(), tonic::Code::ResourceExhausted);
    }
}

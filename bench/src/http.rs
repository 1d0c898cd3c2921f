//! Puts through the HTTP/JSON gateway (`POST /v3/kv/put`), each client on its own HTTP/1.1
//! keep-alive connection, as curl-style clients and `etcd3gw` use it.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;

/// `ops` puts of distinct keys (`key_size`, `value_size` bytes) on `endpoint`'s gateway; the
/// latency of each.
pub async fn put_loop(
    endpoint: String,
    ops: Range<usize>,
    (key_size, value_size): (usize, usize),
) -> anyhow::Result<Vec<Duration>> {
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connect to {authority}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let b64 = base64::engine::general_purpose::STANDARD;
    let value = b64.encode(vec![b'v'; value_size]);
    let mut latencies = Vec::with_capacity(ops.len());
    for i in ops {
        let body = format!(
            r#"{{"key":"{}","value":"{value}"}}"#,
            b64.encode(crate::key(i, key_size))
        );
        let request = Request::post("/v3/kv/put")
            .header(HOST, &authority)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        let response = sender.send_request(request).await.context("put")?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "put: {status} {answer:?}");
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

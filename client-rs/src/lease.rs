//! Lease keep-alives on one LeaseKeepAlive stream that every session of a client shares.
//!
//! Keep-alives go one at a time: a request, then its answer. The stream is taken out of its
//! slot while in use and put back only after a complete exchange, so a keep-alive abandoned
//! half-way (timed out, cancelled) takes the stream with it and its late answer can never be
//! read as the next one's.

use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::endpoints::Conn;
use crate::endpoints::MAX_RESPONSE_BYTES;

/// The shared keep-alive stream, opened on first use and after any failure.
#[derive(Default)]
pub(crate) struct KeepAlives {
    stream: Mutex<Option<KeepAliveStream>>,
}

struct KeepAliveStream {
    /// The endpoint and channel generation the stream runs on.
    index: usize,
    generation: u64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlives {
    /// Renews lease `id` once over `conn`: the TTL it now has (0: the lease is gone).
    pub(crate) async fn renew(&self, conn: Conn, id: i64) -> Result<i64, Status> {
        let mut slot = self.stream.lock().await;
        let reusable = slot
            .take()
            .filter(|stream| stream.index == conn.index && stream.generation == conn.generation);
        let mut stream = match reusable {
            Some(stream) => stream,
            None => open(conn).await?,
        };
        stream
            .requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::unavailable("the keep-alive stream is closed"))?;
        let answer = stream
            .responses
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the server closed the keep-alive stream"))?;
        if answer.id != id {
            return Err(Status::internal(format!(
                "keep-alive of lease {id} answered for lease {}",
                answer.id
            )));
        }
        *slot = Some(stream);
        Ok(answer.ttl)
    }
}

async fn open(conn: Conn) -> Result<KeepAliveStream, Status> {
    let (requests, outbound) = mpsc::channel(1);
    let responses = LeaseClient::new(conn.channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .lease_keep_alive(ReceiverStream::new(outbound))
        .await?
        .into_inner();
    Ok(KeepAliveStream {
        index: conn.index,
        generation: conn.generation,
        requests,
        responses,
    })
}

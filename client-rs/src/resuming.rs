//! [`Resuming`]: a server stream that outlives its gRPC stream, for the long-lived watches of
//! the registry, the config center and pub/sub.
//!
//! When the stream breaks (an endpoint died, the cluster was unreachable for a while) or cannot
//! be opened for the same kind of reason, it is opened again, on the next endpoint if need be,
//! after the client's capped, jittered backoff, for as long as it takes. The caller says how to open it
//! from where it left off. Only an error that retrying cannot fix (a bad name, a start below
//! what is kept, permission denied) ends it.

use std::future::Future;

use crate::credentials::AuthChannel as Channel;
use tonic::Status;
use tonic::codec::Streaming;

use crate::client::Client;
use crate::endpoints::{OpenStream, is_transient};
use crate::error::Result;

/// A resuming server stream of `T` (see the module docs).
pub(crate) struct Resuming<T> {
    client: Client,
    /// What the stream follows, for the logs.
    what: String,
    stream: Option<OpenStream<T>>,
    /// Failures in a row, for the backoff.
    failures: usize,
}

impl<T> Resuming<T> {
    /// A stream not opened yet.
    pub(crate) fn new(client: Client, what: String) -> Self {
        Self {
            client,
            what,
            stream: None,
            failures: 0,
        }
    }

    /// Opens the stream now with `open`, once: a refusal is returned as it is.
    pub(crate) async fn open<F, Fut>(&mut self, open: F) -> Result<()>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Streaming<T>>, Status>>,
    {
        self.stream = Some(self.client.transport().open_stream(open).await?);
        Ok(())
    }

    /// The next message. Whenever the stream is not open (or breaks) it is opened with
    /// `open`, which must start where the caller left off.
    pub(crate) async fn next<F, Fut>(&mut self, mut open: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Streaming<T>>, Status>>,
    {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match self.client.transport().open_stream(&mut open).await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(status) if is_transient(&status) => self.pause(&status).await,
                    Err(status) => return Err(status.into()),
                }
                continue;
            };
            let status = match stream.responses.message().await {
                Ok(Some(message)) => {
                    self.failures = 0;
                    return Ok(message);
                }
                Ok(None) => Status::unavailable(format!("the server ended the stream of {}", self.what)),
                Err(status) => status,
            };
            if !is_transient(&status) {
                return Err(status.into());
            }
            if let Some(broken) = self.stream.take() {
                self.client.transport().stream_broke(&broken, &status);
            }
            self.pause(&status).await;
        }
    }

    /// Waits before reopening: the client's retry backoff, capped and jittered.
    async fn pause(&mut self, status: &Status) {
        tracing::info!(what = %self.what, error = %status, attempt = self.failures + 1, "stream broke; reopening");
        let pause = self.client.options().jittered_backoff(self.failures);
        self.failures += 1;
        tokio::time::sleep(pause).await;
    }
}

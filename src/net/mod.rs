//! Client connections with write coalescing.
//!
//! hyper's HTTP/2 connection task flushes at the end of every poll, and it is polled again as
//! soon as any stream of the connection has data. When a committed write wakes hundreds of watch
//! streams at once, that turned into one TCP packet (and one client wake-up) per response.
//! [`CoalescingStream`] buffers writes and, on a flush, first yields once to the scheduler so
//! the streams woken together can add their frames; the next flush writes them in one go. It
//! adds one scheduler round (microseconds), no timer, and never holds data past a flush that
//! follows a yield.
//!
//! Its read side runs what the client sends through `authority::AuthorityFilter`, which
//! repairs the scheme-qualified `:authority` etcdctl 3.4 sends in some commands, within a
//! bounded amount of memory per connection. A read fails with `InvalidData` when the filter can
//! no longer follow a connection it rewrites.

mod authority;
pub mod listen;
pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use authority::AuthorityFilter;

/// Past this many buffered bytes a write goes out without waiting for a flush.
const HIGH_WATER: usize = 256 * 1024;

/// Bytes read from the socket at a time while the authority filter is still looking.
const FILTER_READ_BYTES: usize = 16 * 1024;

/// A connection (TCP, or TLS over TCP) whose writes are coalesced until a flush; see the
/// module docs.
pub struct CoalescingStream<S = TcpStream> {
    inner: S,
    buf: Vec<u8>,
    yielded: bool,
    filter: AuthorityFilter,
    /// Filtered bytes the server has not read yet.
    filtered: Vec<u8>,
}

impl CoalescingStream {
    /// Wraps an accepted connection (and turns Nagle off: we do our own batching).
    pub fn new(inner: TcpStream) -> io::Result<Self> {
        inner.set_nodelay(true)?;
        Ok(Self::wrap(inner))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> CoalescingStream<S> {
    /// Wraps an established stream (a TLS session over a TCP connection without Nagle).
    pub fn wrap(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(16 * 1024),
            yielded: false,
            filter: AuthorityFilter::default(),
            filtered: Vec::new(),
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescingStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.filtered.is_empty() {
                let n = this.filtered.len().min(buf.remaining());
                buf.put_slice(&this.filtered[..n]);
                this.filtered.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.filter.is_pass_through() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut raw = [0u8; FILTER_READ_BYTES];
            let mut read = ReadBuf::new(&mut raw);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: hand over whatever the filter still holds, then the end.
                this.filter.finish(&mut this.filtered);
                if this.filtered.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            } else if let Err(error) = this.filter.feed(read.filled(), &mut this.filtered) {
                // The connection is being closed: frames filtered before the error are moot.
                this.filtered.clear();
                return Poll::Ready(Err(error));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for CoalescingStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        if !self.yielded {
            // Let the tasks woken together with us add their frames first.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_drain(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for CoalescingStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn writes_arrive_whole_and_in_order_after_flush() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got
        });
        let (accepted, _) = listener.accept().await.unwrap();
        let mut stream = CoalescingStream::new(accepted).unwrap();
        let mut sent = Vec::new();
        for i in 0..1000u32 {
            let chunk = i.to_be_bytes().repeat(100);
            stream.write_all(&chunk).await.unwrap();
            sent.extend(chunk);
            if i % 7 == 0 {
                stream.flush().await.unwrap();
            }
        }
        stream.shutdown().await.unwrap();
        assert_eq!(client.await.unwrap(), sent);
    }
}

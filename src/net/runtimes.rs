//! Client connections spread over one single-threaded runtime per core.
//!
//! A write is a chain of hand-offs between tasks: the connection's task, the request's, Raft's
//! core, the state machine, and back. On tokio's work-stealing runtime each hand-off may park
//! one worker thread and wake another, and on a small virtual machine those wake-ups cost more
//! than the work itself. So Concord runs on single-threaded runtimes instead:
//!
//! - the main runtime runs Raft, the state machine, leases and the peer service, and serves
//!   client connections;
//! - K-1 more runtimes, each on its own thread, serve client connections too, K being the
//!   number of cores, so CPU-heavy work such as a watch fan-out still uses every core.
//!
//! Each accepted connection goes to the runtime with the fewest open connections (the main
//! runtime on a tie) and stays there for life: its requests, responses and watch streams never
//! change thread. A request served on the main runtime reaches Raft without leaving its thread;
//! one served elsewhere crosses threads once each way.
//!
//! Measured on a 2-core VM (16 contenders on one lock through the Lock service, one
//! connection): 13 context switches and about 1.1 ms of server CPU per handover on tokio's
//! multi-threaded runtime, 6 and about 0.7 ms with the connection on the main runtime, and the
//! same as before (12–13) with it on the other one.
//!
//! The price: a request that computes for long on the main runtime (a huge range) delays Raft's
//! heartbeats by as much, where the multi-threaded runtime had another worker to run them.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::CoalescingStream;

/// Accepted connections not yet picked up by their runtime, per runtime.
const ACCEPT_QUEUE: usize = 128;

/// The runtimes client connections are served on: the current one and `count - 1` more.
pub struct ConnectionRuntimes {
    handles: Vec<Handle>,
    threads: Vec<RuntimeThread>,
    /// Open client connections per runtime, in `handles` order.
    open: Vec<Arc<AtomicUsize>>,
}

/// One open connection on a runtime: counted while this lives.
pub(super) struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A single-threaded runtime driven by its own thread until told to stop.
struct RuntimeThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectionRuntimes {
    /// The current runtime plus `count - 1` single-threaded runtimes on threads of their own.
    /// Must be called inside a runtime.
    pub fn start(count: usize) -> io::Result<Self> {
        let mut handles = vec![Handle::current()];
        let mut threads = Vec::new();
        for index in 1..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("concord-conn-{index}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            threads.push(RuntimeThread {
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        let open = handles.iter().map(|_| Arc::default()).collect();
        Ok(Self {
            handles,
            threads,
            open,
        })
    }

    /// One runtime per available core (at least one).
    pub fn per_core() -> io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The runtimes, the current one first.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Deals the connections accepted on `listener` over the runtimes, each to the one with the
    /// fewest open connections: returns, for each runtime in [`handles`](Self::handles) order,
    /// the stream of connections to serve there. Each stream must be polled on its own runtime (a connection is registered with the
    /// runtime that polls it out of the stream). Accepting stops once every stream is dropped.
    pub fn deal(
        &self,
        listener: TcpListener,
    ) -> Vec<impl Stream<Item = io::Result<CoalescingStream>> + Send + 'static> {
        let (senders, receivers): (Vec<_>, Vec<_>) = self
            .handles
            .iter()
            .map(|_| mpsc::channel::<io::Result<Dealt>>(ACCEPT_QUEUE))
            .unzip();
        tokio::spawn(accept_loop(listener, senders, self.open.clone()));
        receivers
            .into_iter()
            .map(|receiver| {
                ReceiverStream::new(receiver).map(|dealt| {
                    let (stream, open) = dealt?;
                    let stream = CoalescingStream::new(tokio::net::TcpStream::from_std(stream)?)?;
                    Ok(stream.counted(open))
                })
            })
            .collect()
    }
}

/// A connection on its way to its runtime, already counted there.
type Dealt = (std::net::TcpStream, OpenConnection);

/// Accepts connections and hands each to the queue of the runtime with the fewest open ones
/// (accept errors to the main runtime's, so its server reports them), until every queue's
/// receiver is gone.
async fn accept_loop(
    listener: TcpListener,
    senders: Vec<mpsc::Sender<io::Result<Dealt>>>,
    open: Vec<Arc<AtomicUsize>>,
) {
    let all_closed = futures::future::join_all(senders.iter().map(|s| s.closed()));
    tokio::pin!(all_closed);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut all_closed => return,
        };
        let least = least_loaded(&open);
        let dealt = accepted
            .and_then(|(stream, _)| stream.into_std())
            .map(|stream| (stream, OpenConnection::new(&open[least])));
        // A runtime whose server has stopped takes no more (the connection is dropped).
        let _ = senders[least].send(dealt).await;
    }
}

/// The runtime with the fewest open connections; the first (main) one on a tie.
fn least_loaded(open: &[Arc<AtomicUsize>]) -> usize {
    (0..open.len())
        .min_by_key(|&i| open[i].load(Ordering::Relaxed))
        .unwrap_or(0)
}

impl Drop for ConnectionRuntimes {
    fn drop(&mut self) {
        for runtime in &mut self.threads {
            if let Some(stop) = runtime.stop.take() {
                let _ = stop.send(());
            }
        }
        for runtime in &mut self.threads {
            if let Some(thread) = runtime.thread.take()
                && thread.join().is_err()
            {
                tracing::error!("a connection runtime's thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves each connection in a task of its own: sends the name of the thread serving it,
    /// then holds the connection open until the client closes it.
    async fn serve_names(connections: impl Stream<Item = io::Result<CoalescingStream>>) {
        tokio::pin!(connections);
        while let Some(connection) = connections.next().await {
            let mut connection = connection.unwrap();
            tokio::spawn(async move {
                let name = std::thread::current().name().unwrap_or("unnamed").to_string();
                connection
                    .write_all(format!("{name}\n").as_bytes())
                    .await
                    .unwrap();
                connection.flush().await.unwrap();
                let mut rest = Vec::new();
                let _ = connection.read_to_end(&mut rest).await;
            });
        }
    }

    /// Connects and reads the name of the thread serving the connection.
    async fn connect(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut name = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
            name.push(byte[0]);
        }
        (stream, String::from_utf8(name).unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_connection_goes_to_the_runtime_with_the_fewest_open() {
        let runtimes = ConnectionRuntimes::start(3).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut servers = Vec::new();
        for (handle, connections) in runtimes.handles().iter().zip(runtimes.deal(listener)) {
            servers.push(handle.spawn(serve_names(connections)));
        }
        let main = std::thread::current().name().unwrap_or("unnamed").to_string();
        let mut held = Vec::new();
        let mut names = Vec::new();
        for _ in 0..4 {
            let (stream, name) = connect(addr).await;
            held.push(stream);
            names.push(name);
        }
        assert_eq!(
            names,
            [main.as_str(), "concord-conn-1", "concord-conn-2", main.as_str()]
        );
        // Closing the connection on concord-conn-1 leaves it the least loaded.
        drop(held.remove(1));
        let freed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while runtimes.open[1].load(Ordering::Relaxed) != 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert!(freed.await.is_ok(), "the closed connection was still counted");
        assert_eq!(connect(addr).await.1, "concord-conn-1");
        for server in servers {
            server.abort();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn accepting_stops_once_every_server_is_gone() {
        let runtimes = ConnectionRuntimes::start(2).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(runtimes.deal(listener));
        // The accept loop drops the listener: connecting is refused from then on.
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "the listener was still accepting");
        drop(runtimes);
    }
}

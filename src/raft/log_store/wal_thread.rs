//! The WAL thread: group commit. It takes every operation waiting at that moment, writes
//! their records with one write and makes them durable with one fdatasync, then tells each
//! waiter, and tells the log cache where the entries lie so that it may let go of old ones.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::IOFlushed;
use tokio::sync::{mpsc, oneshot};

use super::{poisoned, read_cache};
use crate::raft::log_cache::LogCache;
use crate::raft::wal::{Location, Record, Wal};
use crate::raft::{LogId, TypeConfig, Vote};

/// The most operations one WAL batch takes; bounds the latency of a huge backlog.
const MAX_OPS_PER_COMMIT: usize = 4096;

/// One write for the WAL thread.
pub enum WalOp {
    /// Entries to append (log id and encoded entry), and whom to tell once they are durable.
    Append {
        rows: Vec<(LogId, Vec<u8>)>,
        flushed: IOFlushed<TypeConfig>,
    },
    /// Entries from this index on are gone.
    TruncateFrom(u64),
    /// Entries up to this log id are purged.
    Purge(LogId),
    /// The vote to save, and whom to tell once it is durable.
    SaveVote {
        vote: Vote,
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// Who waits for a batch to be written.
enum Waiter {
    Flushed(IOFlushed<TypeConfig>),
    Vote(oneshot::Sender<io::Result<()>>),
}

/// The WAL, and what one batch's waiters are told; held by whoever writes a batch.
pub struct Writer {
    wal: Wal,
    waiters: Vec<Waiter>,
    /// When the last batch was written.
    pub last_done: Instant,
    /// The log in memory, told where each written entry lies.
    cache: Arc<RwLock<LogCache>>,
    /// The most bytes of written entries the cache keeps in memory.
    cache_bytes: u64,
}

impl Writer {
    /// A writer of `wal` that tells `cache` where entries lie, keeping at most `cache_bytes` of
    /// them in memory. It counts as idle since long enough for a write in place.
    pub fn new(wal: Wal, cache: Arc<RwLock<LogCache>>, cache_bytes: u64, idle: Duration) -> Self {
        Self {
            wal,
            waiters: Vec::new(),
            last_done: Instant::now().checked_sub(idle).unwrap_or_else(Instant::now),
            cache,
            cache_bytes,
        }
    }

    /// Writes `ops` (and the committed id, see [`run_wal`]), tells the cache where the entries
    /// lie, then tells every waiter the outcome.
    pub fn write(&mut self, ops: impl Iterator<Item = WalOp>, committed: io::Result<Option<LogId>>) {
        let mut placed = Vec::new();
        let result = committed
            .and_then(|committed| write_batch(&mut self.wal, ops, committed, &mut self.waiters, &mut placed))
            .and_then(|()| self.place(placed))
            .map_err(|e| e.to_string());
        if let Err(err) = &result {
            tracing::error!(error = %err, "raft log write failed");
        }
        self.last_done = Instant::now();
        for waiter in self.waiters.drain(..) {
            let outcome = result.clone().map_err(io::Error::other);
            match waiter {
                Waiter::Flushed(flushed) => flushed.io_completed(outcome),
                Waiter::Vote(done) => {
                    let _ = done.send(outcome);
                }
            }
        }
    }

    /// The committed log id the next batch writes, as the store last recorded it.
    pub fn committed(&self) -> io::Result<Option<LogId>> {
        read_cache(&self.cache).map(|c| c.committed)
    }

    /// Tells the cache where the entries just written lie, and lets it keep to its budget.
    fn place(&self, placed: Vec<(LogId, Location)>) -> io::Result<()> {
        if placed.is_empty() {
            return Ok(());
        }
        let mut cache = self.cache.write().map_err(|_| poisoned())?;
        for (log_id, at) in placed {
            cache.placed(log_id, at);
        }
        cache.evict(self.cache_bytes);
        Ok(())
    }
}

/// Starts the WAL thread: it writes what `rx` brings with `writer`.
pub fn spawn(
    writer: Arc<Mutex<Writer>>,
    rx: mpsc::UnboundedReceiver<WalOp>,
    queued: Arc<AtomicUsize>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("concord-wal".into())
        .spawn(move || run_wal(&writer, rx, &queued))?;
    Ok(())
}

/// The WAL writer: one write and one fdatasync for everything waiting.
///
/// The committed log id is not sent as an op: [`LogStore::save_committed`] only records it in
/// the cache, and each batch ends with a record of it if it moved. That saves a wake-up and a
/// write per commit; openraft allows the committed id to be saved late, and it was never
/// fdatasynced on its own anyway. It is read before the batch is taken from the channel:
/// openraft appends an entry before it saves a committed id that covers it, so the entry is
/// already in the channel, and the record never names an entry the WAL does not hold.
///
/// [`LogStore::save_committed`]: openraft::storage::RaftLogStorage::save_committed
fn run_wal(writer: &Mutex<Writer>, mut rx: mpsc::UnboundedReceiver<WalOp>, queued: &AtomicUsize) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut writer = match writer.lock() {
            Ok(writer) => writer,
            Err(poisoned) => poisoned.into_inner(),
        };
        let committed = writer.committed();
        batch.push(first);
        while batch.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::SeqCst);
        writer.write(batch.drain(..), committed);
    }
}

/// Writes every op's records, then the committed log id if it moved; fdatasync only if an
/// append, a vote or a purge is among them (the rest rides along with the next one). Collects
/// who waits in `waiters`, and where each entry was written in `placed`.
fn write_batch(
    wal: &mut Wal,
    ops: impl Iterator<Item = WalOp>,
    committed: Option<LogId>,
    waiters: &mut Vec<Waiter>,
    placed: &mut Vec<(LogId, Location)>,
) -> io::Result<()> {
    let mut sync = false;
    for op in ops {
        match op {
            WalOp::Append { rows, flushed } => {
                waiters.push(Waiter::Flushed(flushed));
                sync = true;
                for (log_id, bytes) in rows {
                    let at = wal.push(Record::Entry {
                        index: log_id.index,
                        bytes,
                    })?;
                    placed.push((log_id, at));
                }
            }
            WalOp::SaveVote { vote, done } => {
                waiters.push(Waiter::Vote(done));
                sync = true;
                wal.push(Record::Vote(vote))?;
            }
            WalOp::Purge(log_id) => {
                // Segments are deleted once the purge is durable: sync now, purges are rare.
                sync = true;
                wal.push(Record::Purge(log_id))?;
            }
            WalOp::TruncateFrom(from) => {
                wal.push(Record::TruncateFrom(from))?;
            }
        }
    }
    if let Some(log_id) = committed.filter(|c| Some(*c) > wal.committed()) {
        wal.push(Record::Committed(log_id))?;
    }
    wal.commit(sync)
}

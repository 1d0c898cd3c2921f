//! The Raft log, stored in its own redb file with group commit.
//!
//! Appends are made readable at once from an in-memory copy of the unpurged log, and handed to
//! one writer thread. The writer takes every operation waiting at that moment, writes them in one
//! redb transaction and commits it with one fsync, then reports each append as flushed. So under
//! load one fsync covers many proposals, and throughput grows with the number of clients while a
//! lone client still pays one fsync per write.
//!
//! The log is bounded by snapshots: openraft purges entries a snapshot covers.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, decode_entry, decode_json, encode_entry, encode_json};
use super::{Entry, LogId, TypeConfig, Vote};

/// Log entries by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Vote, committed log id, last purged log id, format version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_FORMAT: &str = "format_version";

/// The most operations one WAL transaction takes; bounds the latency of a huge backlog.
const MAX_OPS_PER_COMMIT: usize = 4096;

/// What is known of the log in memory: everything not yet purged.
#[derive(Default)]
struct LogCache {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// One write for the WAL thread.
enum WalOp {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        flushed: IOFlushed<TypeConfig>,
    },
    TruncateFrom(u64),
    Purge {
        upto_index: u64,
        record: Vec<u8>,
    },
    SaveVote {
        record: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    SaveCommitted(Vec<u8>),
}

/// openraft's log storage: reads from memory, writes through the group-commit WAL thread.
pub struct LogStore {
    cache: Arc<RwLock<LogCache>>,
    wal: mpsc::UnboundedSender<WalOp>,
}

/// A cheap reader of the log for replication tasks.
#[derive(Clone)]
pub struct LogReader {
    cache: Arc<RwLock<LogCache>>,
}

impl LogStore {
    /// Opens the log in `db` (creating its tables), loads it and starts the WAL writer thread.
    pub fn open(db: Database) -> io::Result<Self> {
        let cache = load(&db)?;
        let cache = Arc::new(RwLock::new(cache));
        let (wal, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("concord-wal".into())
            .spawn(move || run_wal(db, rx))?;
        Ok(Self { cache, wal })
    }

    fn send(&self, op: WalOp) -> io::Result<()> {
        self.wal
            .send(op)
            .map_err(|_| io::Error::other("the WAL writer has stopped"))
    }

    fn write(&self) -> io::Result<RwLockWriteGuard<'_, LogCache>> {
        self.cache.write().map_err(|_| poisoned())
    }
}

fn poisoned() -> io::Error {
    io::Error::other("raft log cache lock poisoned")
}

fn read_cache(cache: &RwLock<LogCache>) -> io::Result<RwLockReadGuard<'_, LogCache>> {
    cache.read().map_err(|_| poisoned())
}

fn redb_err(err: impl Into<redb::Error>) -> io::Error {
    io::Error::other(err.into())
}

/// Reads the whole unpurged log and its metadata from `db`, creating tables on first use.
fn load(db: &Database) -> io::Result<LogCache> {
    let txn = db.begin_write().map_err(redb_err)?;
    {
        let mut meta = txn.open_table(META).map_err(redb_err)?;
        let format = meta
            .get(KEY_FORMAT)
            .map_err(redb_err)?
            .map(|v| v.value().to_vec());
        match format {
            None => {
                meta.insert(KEY_FORMAT, codec::FORMAT_VERSION.to_be_bytes().as_slice())
                    .map_err(redb_err)?;
            }
            Some(v) if v == codec::FORMAT_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(codec::invalid_data(format!(
                    "raft log format {v:?} is not the supported version {}",
                    codec::FORMAT_VERSION
                )));
            }
        }
        txn.open_table(LOG).map_err(redb_err)?;
    }
    txn.commit().map_err(redb_err)?;

    let txn = db.begin_read().map_err(redb_err)?;
    let meta = txn.open_table(META).map_err(redb_err)?;
    let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
        Ok(meta.get(key).map_err(redb_err)?.map(|v| v.value().to_vec()))
    };
    let mut cache = LogCache {
        vote: get(KEY_VOTE)?.map(|b| decode_json(&b)).transpose()?,
        committed: get(KEY_COMMITTED)?.map(|b| decode_json(&b)).transpose()?,
        last_purged: get(KEY_LAST_PURGED)?.map(|b| decode_json(&b)).transpose()?,
        entries: BTreeMap::new(),
    };
    let log = txn.open_table(LOG).map_err(redb_err)?;
    for row in log.iter().map_err(redb_err)? {
        let (index, bytes) = row.map_err(redb_err)?;
        let entry = decode_entry(bytes.value())?;
        if entry.index() != index.value() {
            return Err(codec::invalid_data(format!(
                "log entry at index {} claims index {}",
                index.value(),
                entry.index()
            )));
        }
        cache.entries.insert(index.value(), entry);
    }
    Ok(cache)
}

/// The WAL writer: one transaction and one fsync for everything waiting.
fn run_wal(db: Database, mut rx: mpsc::UnboundedReceiver<WalOp>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = write_ops(&db, &batch).map_err(|e| e.to_string());
        if let Err(err) = &result {
            tracing::error!(error = %err, "raft log write failed");
        }
        for op in batch.drain(..) {
            let outcome = result.clone().map_err(io::Error::other);
            match op {
                WalOp::Append { flushed, .. } => flushed.io_completed(outcome),
                WalOp::SaveVote { done, .. } => {
                    let _ = done.send(outcome);
                }
                WalOp::TruncateFrom(_) | WalOp::Purge { .. } | WalOp::SaveCommitted(_) => {}
            }
        }
    }
}

fn write_ops(db: &Database, ops: &[WalOp]) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(redb_err)?;
    // Only appends and votes must be durable before we answer; the rest rides along.
    let must_sync = ops
        .iter()
        .any(|op| matches!(op, WalOp::Append { .. } | WalOp::SaveVote { .. }));
    if !must_sync {
        txn.set_durability(Durability::None).map_err(redb_err)?;
    }
    {
        let mut log = txn.open_table(LOG).map_err(redb_err)?;
        let mut meta = txn.open_table(META).map_err(redb_err)?;
        for op in ops {
            match op {
                WalOp::Append { rows, .. } => {
                    for (index, bytes) in rows {
                        log.insert(*index, bytes.as_slice()).map_err(redb_err)?;
                    }
                }
                WalOp::TruncateFrom(from) => {
                    log.retain_in(*from.., |_, _| false).map_err(redb_err)?;
                }
                WalOp::Purge { upto_index, record } => {
                    meta.insert(KEY_LAST_PURGED, record.as_slice())
                        .map_err(redb_err)?;
                    log.retain_in(..=*upto_index, |_, _| false).map_err(redb_err)?;
                }
                WalOp::SaveVote { record, .. } => {
                    meta.insert(KEY_VOTE, record.as_slice()).map_err(redb_err)?;
                }
                WalOp::SaveCommitted(record) => {
                    meta.insert(KEY_COMMITTED, record.as_slice()).map_err(redb_err)?;
                }
            }
        }
    }
    txn.commit().map_err(redb_err)
}

fn entries_in<RB: RangeBounds<u64>>(cache: &LogCache, range: RB) -> Vec<Entry> {
    cache.entries.range(range).map(|(_, e)| e.clone()).collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(entries_in(&*read_cache(&self.cache)?, range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_cache(&self.cache)?.vote)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(entries_in(&*read_cache(&self.cache)?, range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_cache(&self.cache)?.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let cache = read_cache(&self.cache)?;
        let last_log_id = cache
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id())
            .or_else(|| cache.last_purged);
        Ok(LogState {
            last_purged_log_id: cache.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            cache: self.cache.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let record = encode_json(vote)?;
        let (done, flushed) = oneshot::channel();
        self.send(WalOp::SaveVote { record, done })?;
        flushed
            .await
            .map_err(|_| io::Error::other("the WAL writer has stopped"))??;
        self.write()?.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        if let Some(log_id) = &committed {
            self.send(WalOp::SaveCommitted(encode_json(log_id)?))?;
        }
        self.write()?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(read_cache(&self.cache)?.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let rows = entries
            .iter()
            .map(|e| Ok((e.index(), encode_entry(e)?)))
            .collect::<io::Result<Vec<_>>>()?;
        {
            let mut cache = self.write()?;
            for entry in entries {
                cache.entries.insert(entry.index(), entry);
            }
        }
        self.send(WalOp::Append {
            rows,
            flushed: callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.write()?.entries.split_off(&from);
        self.send(WalOp::TruncateFrom(from))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let record = encode_json(&log_id)?;
        {
            let mut cache = self.write()?;
            let keep = cache.entries.split_off(&(log_id.index + 1));
            cache.entries = keep;
            cache.last_purged = Some(log_id);
        }
        self.send(WalOp::Purge {
            upto_index: log_id.index,
            record,
        })
    }
}

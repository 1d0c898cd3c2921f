//! The Raft log, kept in an append-only segmented WAL ([`super::wal`]) with group commit.
//!
//! Appends are made readable at once from an in-memory copy of the unpurged log, and handed to
//! one writer thread. The writer takes every operation waiting at that moment, writes their
//! records with one write and makes them durable with one fdatasync, then reports each append as
//! flushed. So under load one fdatasync covers many proposals, and throughput grows with the
//! number of clients while a lone client still pays one fdatasync per write.
//!
//! When nothing is queued for the writer and its WAL is idle, an append that waits for nothing
//! else may be written and fdatasynced by the caller itself ([`InPlace`]): a follower's (the
//! leader waits for its answer) or a lone voter's (its own fdatasync is the commit). That saves
//! the two thread wake-ups of the hand-off, each about as costly as the fdatasync on a small VM.
//! A leader with followers never does: it must send the entries on while its own sync runs.
//!
//! The log is bounded by snapshots: openraft purges entries a snapshot covers, and the WAL
//! deletes segments once every entry in them is purged. Its memory is bounded by bytes: the
//! WAL thread tells the [`LogCache`] where each written entry lies, the cache lets go of the
//! oldest beyond `--log-cache-bytes`, and [`LogReader`] reads those back from the WAL.
//!
//! Layout: `wal_thread` writes (group commit), `reader` reads.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use tokio::sync::{mpsc, oneshot};

pub use self::reader::LogReader;
use self::wal_thread::{WalOp, Writer};
use super::codec::encode_entry;
use super::log_cache::LogCache;
use super::wal::{self, Wal};
use super::{Entry, LogId, TypeConfig, Vote};

mod reader;
mod wal_thread;

/// How many bytes of written entries the log keeps in memory unless told otherwise
/// (`--log-cache-bytes`); older entries are read back from the WAL when a follower needs them.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// How long the WAL must have been idle before an append is written in place. Under load the
/// next append follows a write within microseconds, and the WAL thread's pipelining (the core
/// takes new proposals while an fdatasync runs) is worth more than the saved wake-ups; a lone
/// client's next put comes a round trip (half a millisecond here) after its last.
const IDLE_BEFORE_IN_PLACE: Duration = Duration::from_micros(200);

/// openraft's log storage: reads from memory (or the WAL, for entries past the cache's budget),
/// writes through the group-commit WAL thread (or in place, see the module docs).
pub struct LogStore {
    cache: Arc<RwLock<LogCache>>,
    /// The WAL's directory.
    dir: Arc<PathBuf>,
    wal: mpsc::UnboundedSender<WalOp>,
    writer: Arc<Mutex<Writer>>,
    /// Ops sent to the WAL thread that it has not taken yet.
    queued: Arc<AtomicUsize>,
    in_place: Arc<InPlace>,
}

/// When an append may be written in place: set by the member from what Raft reports.
#[derive(Debug, Default)]
pub struct InPlace {
    /// This member's id; 0 until known (then nothing is written in place).
    member_id: AtomicU64,
    /// Whether this member is the only voter, so its own fdatasync commits.
    lone_voter: AtomicBool,
}

impl InPlace {
    /// Records this member's id.
    pub fn set_member_id(&self, id: u64) {
        self.member_id.store(id, Ordering::Relaxed);
    }

    /// Records whether this member is the only voter.
    pub fn set_lone_voter(&self, lone: bool) {
        self.lone_voter.store(lone, Ordering::Relaxed);
    }

    /// Whether entries proposed by `leader` may be written in place.
    fn allows(&self, leader: u64) -> bool {
        let me = self.member_id.load(Ordering::Relaxed);
        me != 0 && (leader != me || self.lone_voter.load(Ordering::Relaxed))
    }
}

impl LogStore {
    /// Opens the WAL in `dir` (creating it), replays it and starts the WAL writer thread. At
    /// most `cache_bytes` of written entries are kept in memory.
    pub fn open(dir: &Path, cache_bytes: u64) -> io::Result<Self> {
        Self::open_with_segment_size(dir, wal::SEGMENT_SIZE, cache_bytes)
    }

    /// [`LogStore::open`] with another segment size (small ones make tests rotate).
    pub fn open_with_segment_size(dir: &Path, segment_size: u64, cache_bytes: u64) -> io::Result<Self> {
        let (wal, cache) = Wal::open_bounded(dir, segment_size, cache_bytes)?;
        let cache = Arc::new(RwLock::new(cache));
        let (tx, rx) = mpsc::unbounded_channel();
        // Idle since long enough: the first append may be written in place.
        let writer = Writer::new(wal, cache.clone(), cache_bytes, IDLE_BEFORE_IN_PLACE);
        let writer = Arc::new(Mutex::new(writer));
        let queued = Arc::new(AtomicUsize::new(0));
        wal_thread::spawn(writer.clone(), rx, queued.clone())?;
        Ok(Self {
            cache,
            dir: Arc::new(dir.to_path_buf()),
            wal: tx,
            writer,
            queued,
            in_place: Arc::default(),
        })
    }

    /// Where the member says when appends may be written in place (see the module docs).
    pub fn in_place(&self) -> Arc<InPlace> {
        self.in_place.clone()
    }

    fn send(&self, op: WalOp) -> io::Result<()> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.wal.send(op).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            io::Error::other("the WAL writer has stopped")
        })
    }

    /// Writes `op` on this thread if nothing is queued for the WAL thread and the WAL has been
    /// idle for [`IDLE_BEFORE_IN_PLACE`]; otherwise hands `op` back. Every earlier op was then
    /// written and its waiters told (the writer tells them before it lets go of the WAL), so
    /// completions stay in order. Only openraft's core task writes to the store, so nothing can
    /// be queued behind our back.
    fn write_in_place(&self, op: WalOp) -> Result<(), WalOp> {
        if self.queued.load(Ordering::SeqCst) != 0 {
            return Err(op);
        }
        let Ok(mut writer) = self.writer.try_lock() else {
            return Err(op);
        };
        if writer.last_done.elapsed() < IDLE_BEFORE_IN_PLACE {
            return Err(op);
        }
        let committed = writer.committed();
        writer.write(std::iter::once(op), committed);
        Ok(())
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

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let cache = read_cache(&self.cache)?;
        Ok(LogState {
            last_purged_log_id: cache.last_purged,
            last_log_id: cache.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader::new(self.cache.clone(), self.dir.clone())
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let (done, flushed) = oneshot::channel();
        self.send(WalOp::SaveVote { vote: *vote, done })?;
        flushed
            .await
            .map_err(|_| io::Error::other("the WAL writer has stopped"))??;
        self.write()?.vote = Some(*vote);
        Ok(())
    }

    /// Recorded in memory; the WAL thread writes it with its next batch.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
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
            .map(|e| Ok((e.log_id(), encode_entry(e)?)))
            .collect::<io::Result<Vec<_>>>()?;
        let leader = entries.first().map(|e| e.log_id().leader_id.node_id);
        {
            let mut cache = self.write()?;
            for entry in entries {
                cache.append(entry);
            }
        }
        let mut op = WalOp::Append {
            rows,
            flushed: callback,
        };
        if leader.is_some_and(|leader| self.in_place.allows(leader)) {
            match self.write_in_place(op) {
                Ok(()) => return Ok(()),
                Err(not_now) => op = not_now,
            }
        }
        self.send(op)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.write()?.truncate_from(from);
        self.send(WalOp::TruncateFrom(from))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.write()?.purge(log_id);
        self.send(WalOp::Purge(log_id))
    }
}

#[cfg(test)]
mod tests {
    use openraft::impls::EntryPayload;
    use openraft::storage::RaftLogReader;
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::raft::codec::log_id;

    /// A blank entry proposed by `leader` in `term`.
    fn blank_by(term: u64, leader: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, leader, index),
            payload: EntryPayload::Blank,
        }
    }

    /// A blank entry proposed by member 1.
    fn blank(term: u64, index: u64) -> Entry {
        blank_by(term, 1, index)
    }

    /// Appends `entries` and waits until they are durable; whether they already were when
    /// `append` returned (written in place).
    async fn append(store: &mut LogStore, entries: Vec<Entry>) -> bool {
        use futures::FutureExt;
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        let mut rx = Box::pin(rx);
        let done_at_return = (&mut rx).now_or_never().is_some();
        if !done_at_return {
            rx.await.unwrap().unwrap();
        }
        done_at_return
    }

    /// Every entry the store holds.
    async fn all_entries(store: &mut LogStore) -> Vec<Entry> {
        store
            .get_log_reader()
            .await
            .try_get_log_entries(0..)
            .await
            .unwrap()
    }

    #[test]
    fn a_followers_append_is_written_in_place_and_a_leaders_is_not() {
        TypeConfig::run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal");
            let mut store = LogStore::open(&path, DEFAULT_CACHE_BYTES).unwrap();
            // Until the member id is known, nothing is written in place.
            assert!(!append(&mut store, vec![blank_by(1, 1, 1)]).await);
            store.in_place().set_member_id(2);
            std::thread::sleep(IDLE_BEFORE_IN_PLACE);
            // Proposed by member 1: this member (2) follows, and the WAL is idle.
            assert!(append(&mut store, vec![blank_by(1, 1, 2)]).await);
            // Its own proposals, with other voters: always through the WAL thread.
            std::thread::sleep(IDLE_BEFORE_IN_PLACE);
            assert!(!append(&mut store, vec![blank_by(1, 2, 3)]).await);
            // A lone voter's own proposals may be written in place.
            store.in_place().set_lone_voter(true);
            std::thread::sleep(IDLE_BEFORE_IN_PLACE);
            assert!(append(&mut store, vec![blank_by(1, 2, 4)]).await);
            // Right after a write the WAL thread takes it (unless this thread was descheduled
            // for the idle time: not asserted). Either way it lands after the others.
            append(&mut store, vec![blank_by(1, 2, 5)]).await;
            let written = all_entries(&mut store).await;
            drop(store);
            let mut store = LogStore::open(&path, DEFAULT_CACHE_BYTES).unwrap();
            let replayed = all_entries(&mut store).await;
            assert_eq!(replayed, written);
            assert_eq!(replayed.len(), 5);
        });
    }

    #[test]
    fn the_committed_id_rides_along_with_the_next_write() {
        TypeConfig::run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal");
            let mut store = LogStore::open(&path, DEFAULT_CACHE_BYTES).unwrap();
            append(&mut store, (1..=3).map(|i| blank(1, i)).collect()).await;
            store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
            assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
            // Nothing was written for it alone: a crash now loses it (openraft allows that).
            drop(store);
            let mut store = LogStore::open(&path, DEFAULT_CACHE_BYTES).unwrap();
            assert_eq!(store.read_committed().await.unwrap(), None);
            // The next append carries it.
            store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
            append(&mut store, vec![blank(1, 4)]).await;
            drop(store);
            let mut store = LogStore::open(&path, DEFAULT_CACHE_BYTES).unwrap();
            assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id, Some(log_id(1, 1, 4)));
        });
    }

    #[test]
    fn what_the_store_was_told_survives_reopen() {
        TypeConfig::run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal");
            let mut store = LogStore::open_with_segment_size(&path, 4096, DEFAULT_CACHE_BYTES).unwrap();
            for index in 1..=200 {
                append(&mut store, vec![blank(1, index)]).await;
            }
            store.save_committed(Some(log_id(1, 1, 190))).await.unwrap();
            store.truncate_after(Some(log_id(1, 1, 195))).await.unwrap();
            append(&mut store, (196..=198).map(|i| blank(2, i)).collect()).await;
            store.purge(log_id(1, 1, 150)).await.unwrap();
            // The vote waits for durability, and everything before it is written first.
            store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
            let files = std::fs::read_dir(&path).unwrap().count();
            assert!(files > 1, "the log spans several segments");
            let state = store.get_log_state().await.unwrap();
            let entries = all_entries(&mut store).await;
            assert_eq!(entries.len(), 48);
            drop(store);

            let mut store = LogStore::open_with_segment_size(&path, 4096, DEFAULT_CACHE_BYTES).unwrap();
            let reopened = store.get_log_state().await.unwrap();
            assert_eq!(reopened.last_purged_log_id, state.last_purged_log_id);
            assert_eq!(reopened.last_log_id, Some(log_id(2, 1, 198)));
            assert_eq!(all_entries(&mut store).await, entries);
            let mut reader = store.get_log_reader().await;
            assert_eq!(reader.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
            assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 190)));
        });
    }

    /// The last entry index whose frame is in segment `seq`, among the spilled entries.
    fn last_index_in_segment(store: &LogStore, seq: u64) -> u64 {
        let cache = read_cache(&store.cache).unwrap();
        let in_segment = cache.spilled.iter().filter(|(_, (_, at))| at.seq == seq);
        in_segment.map(|(index, _)| *index).max().unwrap()
    }

    #[test]
    fn entries_past_the_cache_budget_are_read_back_from_the_wal() {
        TypeConfig::run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal");
            // A budget of about three blank entries' frames, and small segments.
            let mut store = LogStore::open_with_segment_size(&path, 4096, 200).unwrap();
            for index in 1..=300 {
                append(&mut store, vec![blank(1, index)]).await;
            }
            let expected: Vec<Entry> = (1..=300).map(|i| blank(1, i)).collect();
            {
                let cache = read_cache(&store.cache).unwrap();
                assert!(cache.spilled.len() > 290, "only {} spilled", cache.spilled.len());
                assert!(cache.written_bytes() <= 200);
            }
            assert_eq!(all_entries(&mut store).await, expected);
            let mut reader = store.get_log_reader().await;
            assert_eq!(
                reader.try_get_log_entries(40..43).await.unwrap(),
                expected[39..42]
            );

            // Truncating spilled entries and appending others in their place.
            store.truncate_after(Some(log_id(1, 1, 250))).await.unwrap();
            append(&mut store, (251..=260).map(|i| blank(2, i)).collect()).await;
            let mut expected: Vec<Entry> = expected[..250].to_vec();
            expected.extend((251..=260).map(|i| blank(2, i)));
            assert_eq!(all_entries(&mut store).await, expected);

            // A purge deletes old segments: what is left still reads back.
            let first_segment_ends = last_index_in_segment(&store, 1);
            assert!(first_segment_ends < 250, "the log spans several segments");
            store.purge(log_id(1, 1, first_segment_ends)).await.unwrap();
            append(&mut store, vec![blank(2, 261)]).await; // the purge is durable after this
            expected.drain(..first_segment_ends as usize);
            expected.push(blank(2, 261));
            assert_eq!(all_entries(&mut store).await, expected);
            assert!(!path.join(wal::segment::Segment::file_name(1)).exists());

            // Reopened with the same budget, replay keeps to it too.
            drop(store);
            let mut store = LogStore::open_with_segment_size(&path, 4096, 200).unwrap();
            assert!(read_cache(&store.cache).unwrap().written_bytes() <= 200);
            assert_eq!(all_entries(&mut store).await, expected);
        });
    }

    #[test]
    fn a_read_that_races_a_purge_leaves_out_only_purged_entries() {
        TypeConfig::run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wal");
            let mut store = LogStore::open_with_segment_size(&path, 4096, 0).unwrap();
            for index in 1..=100 {
                append(&mut store, vec![blank(1, index)]).await;
            }
            // A reader took the spilled entries' places, then a purge deleted the first
            // segment before it read them: it must leave those entries out, not fail. Here
            // the segment goes and the purge is recorded by hand, with nothing else changed.
            let reader = store.get_log_reader().await;
            let first_segment_ends = last_index_in_segment(&store, 1);
            std::fs::remove_file(path.join(wal::segment::Segment::file_name(1))).unwrap();
            assert!(reader.read(1..=100).is_err(), "unpurged entries gone is an error");
            store.write().unwrap().last_purged = Some(log_id(1, 1, first_segment_ends));
            let read = reader.read(1..=100).unwrap();
            let expected: Vec<Entry> = (first_segment_ends + 1..=100).map(|i| blank(1, i)).collect();
            assert_eq!(read, expected);
        });
    }

    /// openraft may purge entries a replication stream is about to read (even one it starts
    /// after the purge); those still in memory stay readable until the next purge, so the
    /// stream's read has no gap in front.
    #[test]
    fn a_lagging_read_after_a_purge_still_gets_the_entries_before_it() {
        TypeConfig::run(async {
            let dir = tempfile::tempdir().unwrap();
            let mut store = LogStore::open(&dir.path().join("wal"), DEFAULT_CACHE_BYTES).unwrap();
            for index in 1..=100 {
                append(&mut store, vec![blank(1, index)]).await;
            }
            let mut reader = store.get_log_reader().await;
            store.purge(log_id(1, 1, 60)).await.unwrap();
            let read = reader.try_get_log_entries(41..71).await.unwrap();
            assert_eq!(read, (41..71).map(|i| blank(1, i)).collect::<Vec<_>>());
            assert_eq!(
                store.get_log_state().await.unwrap().last_purged_log_id,
                Some(log_id(1, 1, 60)),
                "openraft is told what it purged"
            );
            // A reader made after the purge gets them too; a read from the beginning of the log
            // sees it as purged (as openraft's suite wants).
            let mut fresh = store.get_log_reader().await;
            let read = fresh.try_get_log_entries(41..71).await.unwrap();
            assert_eq!(read, (41..71).map(|i| blank(1, i)).collect::<Vec<_>>());
            let read = fresh.try_get_log_entries(0..71).await.unwrap();
            assert_eq!(read, (61..71).map(|i| blank(1, i)).collect::<Vec<_>>());
            store.purge(log_id(1, 1, 90)).await.unwrap();
            let read = reader.try_get_log_entries(65..96).await.unwrap();
            assert_eq!(read, (65..96).map(|i| blank(1, i)).collect::<Vec<_>>());
            let read = reader.try_get_log_entries(41..96).await.unwrap();
            assert_eq!(
                read,
                (91..96).map(|i| blank(1, i)).collect::<Vec<_>>(),
                "one purge back only"
            );
        });
    }
}

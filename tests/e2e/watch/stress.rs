//! 100 watchers on overlapping ranges while 8 writers put, delete and run txns: every watcher
//! gets exactly the events of its range, in revision order, with no duplicates and no gaps.
//!
//! The oracle is the writers' own record. Every write's response says at which revision it
//! happened and what it changed: a put its key, a delete its `prev_kvs` (the keys it removed,
//! in key order), a txn its branch and its operations' responses. Sorted by revision these
//! records are the store's history, and the test checks they cover every revision from 2 to
//! the last exactly once, so nothing the server did can escape them. Replaying them derives
//! each event's create revision, version and previous value as MVCC defines them, and a
//! watcher's expected events are that history filtered by its range, filters and start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::etcdserverpb::{WatchCreateRequest, WatchResponse};
use concord_proto::mvccpb::{Event, KeyValue, event::EventType};
use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnOpResponse};
use tokio::task::JoinHandle;

use super::support::{RawWatch, RequestSender, WAIT, connection, create, is_progress, prefix_end, revision};
use crate::harness::Server;

const WRITERS: usize = 8;
const OPS_PER_WRITER: usize = 300;
const WATCHERS: usize = 100;
/// Watchers created before the writers start; the rest are created while they run.
const EARLY_WATCHERS: usize = 80;
const STREAMS: usize = 10;

/// xorshift64*: deterministic per writer, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn s_key(i: usize) -> String {
    format!("s/{i:02}")
}

/// One of 40 keys: 30 under `s/`, 10 under `t/`.
fn any_key(rng: &mut Rng) -> String {
    let i = rng.below(40);
    if i < 30 {
        s_key(i)
    } else {
        format!("t/{:02}", i - 30)
    }
}

/// One key's change in a revision: `Some(value)` for a put, `None` for a delete.
type Change = (String, Option<String>);

/// Everything one write did, as its response told.
struct Write {
    revision: i64,
    changes: Vec<Change>,
}

/// One writer: puts, single and range deletes, and txns whose branch depends on the others.
async fn writer(server_url: String, w: usize, done: Arc<AtomicUsize>, newest: Arc<AtomicI64>) -> Vec<Write> {
    let mut c = etcd_client::Client::connect([server_url], None).await.unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) * 0x1000_0001));
    let mut writes = Vec::new();
    let with_prev = || Some(DeleteOptions::new().with_prev_key());
    for i in 0..OPS_PER_WRITER {
        let value = format!("w{w}.{i}");
        let op = rng.below(100);
        let write = if op < 45 {
            let key = any_key(&mut rng);
            let rev = c
                .put(key.as_str(), value.as_str(), None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
            Some(Write {
                revision: rev,
                changes: vec![(key, Some(value))],
            })
        } else if op < 70 {
            // A single key or a short range [s/a, s/a+n).
            let resp = if op < 58 {
                c.delete(any_key(&mut rng), with_prev()).await.unwrap()
            } else {
                let a = rng.below(28);
                let end = s_key(a + 1 + rng.below(5));
                let options = DeleteOptions::new().with_prev_key().with_range(end);
                c.delete(s_key(a), Some(options)).await.unwrap()
            };
            assert_eq!(resp.deleted() as usize, resp.prev_kvs().len());
            let changes: Vec<Change> = resp
                .prev_kvs()
                .iter()
                .map(|kv| (kv.key_str().unwrap().to_string(), None))
                .collect();
            // Deleting nothing changes nothing, and takes no revision.
            (!changes.is_empty()).then(|| Write {
                revision: resp.header().unwrap().revision(),
                changes,
            })
        } else {
            let mut keys: Vec<String> = Vec::new();
            while keys.len() < 4 {
                let key = any_key(&mut rng);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            let txn = Txn::new()
                .when([Compare::version(keys[0].as_str(), CompareOp::Greater, 0)])
                .and_then([
                    TxnOp::put(keys[1].as_str(), value.as_str(), None),
                    TxnOp::delete(keys[2].as_str(), with_prev()),
                ])
                .or_else([TxnOp::put(keys[3].as_str(), value.as_str(), None)]);
            let resp = c.txn(txn).await.unwrap();
            let put_key = if resp.succeeded() { &keys[1] } else { &keys[3] };
            let mut changes = Vec::new();
            for op in resp.op_responses() {
                match op {
                    TxnOpResponse::Put(_) => changes.push((put_key.clone(), Some(value.clone()))),
                    TxnOpResponse::Delete(d) => changes.extend(
                        d.prev_kvs()
                            .iter()
                            .map(|kv| (kv.key_str().unwrap().to_string(), None)),
                    ),
                    other => panic!("unexpected txn response {other:?}"),
                }
            }
            Some(Write {
                revision: resp.header().unwrap().revision(),
                changes,
            })
        };
        if let Some(write) = write {
            newest.fetch_max(write.revision, Ordering::Relaxed);
            writes.push(write);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    writes
}

/// Replays the writers' records into the full event history (previous values included).
fn history(mut writes: Vec<Write>) -> Vec<Event> {
    writes.sort_by_key(|w| w.revision);
    let revisions: Vec<i64> = writes.iter().map(|w| w.revision).collect();
    let want: Vec<i64> = (2..2 + writes.len() as i64).collect();
    assert_eq!(
        revisions, want,
        "the writers' records cover every revision exactly once"
    );
    let mut live: HashMap<String, KeyValue> = HashMap::new();
    let mut events = Vec::new();
    for write in writes {
        for (key, value) in write.changes {
            let prev = live.remove(&key);
            let event = match value {
                Some(value) => {
                    let kv = KeyValue {
                        key: key.clone().into_bytes().into(),
                        value: value.into_bytes().into(),
                        create_revision: prev.as_ref().map_or(write.revision, |p| p.create_revision),
                        mod_revision: write.revision,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: 0,
                    };
                    live.insert(key, kv.clone());
                    Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv),
                        prev_kv: prev,
                    }
                }
                None => Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: key.into_bytes().into(),
                        mod_revision: write.revision,
                        ..Default::default()
                    }),
                    prev_kv: Some(prev.expect("a delete removes a live key")),
                },
            };
            events.push(event);
        }
    }
    events
}

/// What one watcher asked for, and the first revision it must see.
struct Spec {
    stream: usize,
    id: i64,
    request: WatchCreateRequest,
    start: i64,
}

impl Spec {
    fn expected(&self, history: &[Event]) -> Vec<Event> {
        let (key, end) = (&self.request.key, &self.request.range_end);
        let (key, end) = (key.as_slice(), end.as_slice());
        let in_range = |k: &[u8]| match end {
            [] => k == key,
            [0] => k >= key,
            end => k >= key && k < end,
        };
        let filtered = |e: &Event| {
            let filter = if e.r#type == EventType::Put as i32 {
                FilterType::Noput
            } else {
                FilterType::Nodelete
            };
            self.request.filters.contains(&(filter as i32))
        };
        history
            .iter()
            .filter(|e| {
                let kv = e.kv.as_ref().unwrap();
                kv.mod_revision >= self.start && in_range(&kv.key[..]) && !filtered(e)
            })
            .map(|e| Event {
                prev_kv: if self.request.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
                ..e.clone()
            })
            .collect()
    }
}

/// Watcher `i`'s range: single keys, prefixes, ranges, from-key and everything, overlapping.
fn request(i: usize) -> WatchCreateRequest {
    let a = (i * 7) % 30;
    let (key, end) = match i % 7 {
        0 => (s_key(a).into_bytes(), vec![]),
        1 => {
            let prefix = format!("s/{}", i % 3).into_bytes();
            let end = prefix_end(&prefix);
            (prefix, end)
        }
        2 => (s_key(a).into_bytes(), s_key(a + 7).into_bytes()),
        3 => (s_key(a).into_bytes(), vec![0]),
        4 => (vec![0], vec![0]),
        5 => (b"t/".to_vec(), b"t0".to_vec()),
        _ => (b"s/".to_vec(), b"s0".to_vec()),
    };
    let mut filters = Vec::new();
    if i % 5 == 1 {
        filters.push(FilterType::Noput as i32);
    }
    if i % 6 == 2 {
        filters.push(FilterType::Nodelete as i32);
    }
    WatchCreateRequest {
        filters,
        prev_kv: i.is_multiple_of(3),
        ..create(&key, &end)
    }
}

/// Reads a stream into a shared log until the stream ends or the task is aborted.
fn reader(mut watch: RawWatch) -> (RequestSender, Arc<Mutex<Vec<WatchResponse>>>, JoinHandle<()>) {
    let log: Arc<Mutex<Vec<WatchResponse>>> = Arc::default();
    let sink = log.clone();
    let sender = watch.requests.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(response)) = watch.responses.message().await {
            sink.lock().unwrap().push(response);
        }
    });
    (sender, log, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_watchers_under_concurrent_writers_see_exact_history() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let channels = [connection(&server).await, connection(&server).await];
    let mut streams = Vec::new();
    for s in 0..STREAMS {
        streams.push(RawWatch::open(&channels[s % 2]).await);
    }

    // The early watchers take automatic ids; their created responses say where "now" was.
    let mut specs = Vec::new();
    for i in 0..EARLY_WATCHERS {
        let stream = i % STREAMS;
        let request = request(i);
        let created = streams[stream].created(request.clone()).await;
        specs.push(Spec {
            stream,
            id: created.watch_id,
            start: revision(&created) + 1,
            request,
        });
    }
    let mut senders = Vec::new();
    let mut logs = Vec::new();
    let mut readers = Vec::new();
    for watch in streams {
        let (sender, log, task) = reader(watch);
        senders.push(sender);
        logs.push(log);
        readers.push(task);
    }

    let done = Arc::new(AtomicUsize::new(0));
    let newest = Arc::new(AtomicI64::new(1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(server.url(), w, done.clone(), newest.clone())))
        .collect();

    // The late watchers arrive mid-load with ids of their own choosing: half replay history
    // from a past revision and must hand over to live events seamlessly, half start "now".
    let deadline = Instant::now() + WAIT;
    while done.load(Ordering::Relaxed) < WRITERS * OPS_PER_WRITER / 3 {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut late = Vec::new();
    for i in EARLY_WATCHERS..WATCHERS {
        let stream = i % STREAMS;
        let id = 1000 + i as i64;
        let past = 1 + (i as i64 * 37) % newest.load(Ordering::Relaxed);
        let start_revision = if i % 2 == 0 { past } else { 0 };
        let request = WatchCreateRequest {
            watch_id: id,
            start_revision,
            ..request(i)
        };
        senders[stream].create(request.clone()).await;
        late.push((stream, id, request));
    }

    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.unwrap());
    }
    let history = history(writes);
    let last = history.last().unwrap().kv.as_ref().unwrap().mod_revision;
    let written = started.elapsed();

    // A progress response at `last` on a stream means the server has queued everything up to
    // `last` for every watcher of that stream before it.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (sender, log) in senders.iter().zip(&logs) {
        loop {
            sender.request_progress().await;
            let asked = Instant::now();
            let mut reached = false;
            while !reached && asked.elapsed() < Duration::from_millis(200) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                reached = log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|r| r.watch_id == -1 && is_progress(r) && revision(r) >= last);
            }
            if reached {
                break;
            }
            assert!(Instant::now() < deadline, "no progress at {last} on a stream");
        }
    }
    for task in readers {
        task.abort();
    }

    // The late watchers' starts come from their created responses.
    for (stream, id, request) in late {
        let log = logs[stream].lock().unwrap();
        let created: Vec<&WatchResponse> = log.iter().filter(|r| r.watch_id == id && r.created).collect();
        assert_eq!(created.len(), 1, "watch {id}: one created response");
        assert!(!created[0].canceled, "watch {id}: {:?}", created[0]);
        let start = if request.start_revision > 0 {
            request.start_revision
        } else {
            revision(created[0]) + 1
        };
        specs.push(Spec {
            stream,
            id,
            request,
            start,
        });
    }

    let mut delivered = 0;
    for spec in &specs {
        let log = logs[spec.stream].lock().unwrap();
        let mine: Vec<&WatchResponse> = log.iter().filter(|r| r.watch_id == spec.id).collect();
        let mut got = Vec::new();
        let mut created_seen = spec.id < 1000; // the early ones' created was read before
        for r in &mine {
            assert!(
                !r.canceled && !r.fragment && r.compact_revision == 0,
                "watch {}: {r:?}",
                spec.id
            );
            if r.created {
                assert!(!created_seen, "watch {}: created twice", spec.id);
                created_seen = true;
                continue;
            }
            assert!(created_seen, "watch {}: events before created", spec.id);
            assert!(!r.events.is_empty(), "watch {}: empty response {r:?}", spec.id);
            got.extend(r.events.iter().cloned());
        }
        let want = spec.expected(&history);
        if got != want {
            let at = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g != w)
                .unwrap_or(got.len().min(want.len()));
            panic!(
                "watch {} ({:?}..{:?}, filters {:?}, prev_kv {}, from {}): got {} events, want {}; first difference at {at}: got {:?}, want {:?}",
                spec.id,
                String::from_utf8_lossy(&spec.request.key),
                String::from_utf8_lossy(&spec.request.range_end),
                spec.request.filters,
                spec.request.prev_kv,
                spec.start,
                got.len(),
                want.len(),
                got.get(at),
                want.get(at)
            );
        }
        delivered += got.len();
    }
    assert_eq!(specs.len(), WATCHERS);
    eprintln!(
        "stress: {} revisions, {} events, {delivered} delivered to {WATCHERS} watchers; writes took {written:?}, all {:?}",
        last - 1,
        history.len(),
        started.elapsed()
    );
}

//! The load a robustness run puts on the cluster, and what it records: clients doing gets,
//! puts, compare-and-swaps and deletes on a few hot keys (each a register), range reads of all
//! of them, and atomic two-key txns, through one member at a time; and one watcher per member
//! over every key, resuming from where it was when its stream breaks. The lease, lock and
//! election load is in [`super::leases`] and [`super::ownership`].

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions};

use crate::checkers::lease::Life;
use crate::checkers::ownership::Claim;
use crate::checkers::register::{self, Entry, Op, Outcome, Ret, Value};
use crate::checkers::watch::{Event, Received};
use crate::cluster::harness::XorShift;

/// Every key of a run starts with this.
pub const PREFIX: &str = "rb/";
/// The hot keys, each a register.
pub const REGISTERS: usize = 4;
/// The two keys an atomic txn writes together.
pub const PAIR: [&str; 2] = ["rb/pair/a", "rb/pair/b"];
/// Per-request timeout of the clients: an op without an answer by then is unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A client pauses this long after an op that failed.
pub const BACKOFF: Duration = Duration::from_millis(100);
/// A watcher that hears nothing this long (not even an answer to its progress requests) takes
/// its stream for broken.
const WATCH_SILENCE: Duration = Duration::from_secs(3);
/// How often a watcher asks for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_millis(300);

/// The random choices of task `id` of one kind (`kind` tells the kinds of task apart), drawn
/// from the run's seed.
pub fn task_rng(seed: u64, kind: u64, id: usize) -> XorShift {
    XorShift((seed ^ (id as u64 + kind).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
}

/// The register key `k`.
pub fn register(k: usize) -> String {
    format!("{PREFIX}k{k}")
}

/// A write that was acknowledged, to be found in the history afterwards.
#[derive(Debug, Clone)]
pub struct Acked {
    pub keys: Vec<String>,
    pub value: String,
    /// When its answer came.
    pub at: Instant,
}

/// What the client tasks record.
#[derive(Default)]
pub struct Recorder {
    /// Per register, its operations.
    pub histories: Mutex<Vec<Vec<Entry>>>,
    /// Every acknowledged write (register puts and swaps, pair txns).
    pub acked: Mutex<Vec<Acked>>,
    /// Reads of the pair that saw its two keys differ (each one a violation of atomicity).
    pub torn_pairs: Mutex<Vec<String>>,
    /// What the lease tasks saw of each lease.
    pub leases: Mutex<Vec<Life>>,
    /// Lock holders' and election leaders' claims of ownership.
    pub claims: Mutex<Vec<Claim>>,
    /// Operations by outcome: succeeded, unknown.
    pub ok: std::sync::atomic::AtomicUsize,
    pub unknown: std::sync::atomic::AtomicUsize,
    pub stop: AtomicBool,
}

impl Recorder {
    pub fn new() -> Recorder {
        let recorder = Recorder::default();
        *recorder.histories.lock().unwrap() = vec![Vec::new(); REGISTERS];
        recorder
    }

    /// Records an acknowledged write of `value` to `keys`, answered now.
    pub fn ack(&self, keys: &[&str], value: &str) {
        self.acked.lock().unwrap().push(Acked {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            value: value.to_string(),
            at: Instant::now(),
        });
    }
}

/// A client of `endpoint` whose requests time out after [`REQUEST_TIMEOUT`].
pub async fn connect(endpoint: &str) -> Client {
    let options = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(1));
    Client::connect([endpoint], Some(options))
        .await
        .expect("a lazy client connects")
}

/// What a client does next.
#[derive(Debug, Clone, Copy)]
enum Action {
    Register(usize, Op),
    /// A read of every register at once.
    RangeRead,
    PairWrite(Value),
    PairRead,
}

/// Client task `id`: random operations through `clients[member]` until told to stop, moving to
/// another member after an operation that failed.
pub async fn client_task(
    id: usize,
    mut clients: Vec<Client>,
    mut member: usize,
    seed: u64,
    rec: Arc<Recorder>,
) {
    let mut rng = task_rng(seed, 1, id);
    // The last value this client saw per register: what its swaps expect, so some succeed.
    let mut last_seen: [Option<Value>; REGISTERS] = [None; REGISTERS];
    let mut seq = 0;
    while !rec.stop.load(Ordering::Relaxed) {
        seq += 1;
        let value = (id as Value + 1) * 1_000_000_000 + seq;
        let k = rng.below(REGISTERS);
        let action = match rng.below(20) {
            0..6 => Action::Register(k, Op::Get),
            6..11 => Action::Register(k, Op::Put(value)),
            11 => Action::Register(k, Op::Delete),
            12..16 => Action::Register(
                k,
                Op::Cas {
                    expected: last_seen[k],
                    new: value,
                },
            ),
            16..18 => Action::PairWrite(value),
            18 => Action::PairRead,
            _ => Action::RangeRead,
        };
        let client = &mut clients[member];
        let call = Instant::now();
        let ok = match action {
            Action::Register(k, op) => {
                let within = REQUEST_TIMEOUT + Duration::from_millis(500);
                let outcome = register::perform(client, &register(k), op, within).await;
                let ret = Instant::now();
                if let Some(value) = register::learned(op, outcome) {
                    last_seen[k] = value;
                    if let (Some(v), Op::Put(_) | Op::Cas { .. }) = (value, op) {
                        rec.ack(&[register(k).as_str()], &v.to_string());
                    }
                }
                // A read without an answer says nothing: left out of the history.
                if !(op == Op::Get && outcome == Outcome::Unknown) {
                    rec.histories.lock().unwrap()[k].push(Entry {
                        op,
                        outcome,
                        call,
                        ret,
                        client: id,
                        member,
                    });
                }
                outcome != Outcome::Unknown
            }
            Action::RangeRead => {
                // One read of every register: for each key, a get at the same instant. A key's
                // history stays linearizable with it (each key's part of a linearizable history
                // is), and the clients' last values follow.
                let got =
                    bounded(client.get(format!("{PREFIX}k"), Some(GetOptions::new().with_prefix()))).await;
                if let Some(resp) = &got {
                    let ret = Instant::now();
                    let mut histories = rec.histories.lock().unwrap();
                    for (k, history) in histories.iter_mut().enumerate() {
                        let seen = resp
                            .kvs()
                            .iter()
                            .find(|kv| kv.key() == register(k).as_bytes())
                            .map(|kv| kv.value_str().unwrap().parse().unwrap());
                        last_seen[k] = seen;
                        history.push(Entry {
                            op: Op::Get,
                            outcome: Outcome::Ok(Ret::Get(seen)),
                            call,
                            ret,
                            client: id,
                            member,
                        });
                    }
                }
                got.is_some()
            }
            Action::PairWrite(v) => {
                let txn = Txn::new().and_then(PAIR.map(|key| TxnOp::put(key, v.to_string(), None)));
                let done = bounded(client.txn(txn)).await.is_some();
                if done {
                    rec.ack(&PAIR, &v.to_string());
                }
                done
            }
            Action::PairRead => {
                let got = bounded(client.get("rb/pair/", Some(GetOptions::new().with_prefix()))).await;
                if let Some(resp) = &got {
                    let values: Vec<&[u8]> = resp.kvs().iter().map(|kv| kv.value()).collect();
                    if values.len() == 1 || (values.len() == 2 && values[0] != values[1]) {
                        rec.torn_pairs.lock().unwrap().push(format!(
                            "c{id} via m{member} at revision {}: {:?}",
                            resp.header().map_or(0, |h| h.revision()),
                            resp.kvs()
                                .iter()
                                .map(|kv| (kv.key_str().unwrap_or("?"), kv.value_str().unwrap_or("?")))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
                got.is_some()
            }
        };
        if ok {
            rec.ok.fetch_add(1, Ordering::Relaxed);
            // A little think time keeps the histories small enough to check.
            tokio::time::sleep(Duration::from_millis(rng.below(8) as u64)).await;
        } else {
            rec.unknown.fetch_add(1, Ordering::Relaxed);
            member = rng.below(clients.len());
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// The answer of `call`, or `None` when it failed or did not come in time.
pub async fn bounded<T>(call: impl Future<Output = Result<T, etcd_client::Error>>) -> Option<T> {
    // The client's own timeout should fire first; this only bounds the wait for sure.
    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_millis(500), call).await {
        Ok(Ok(answer)) => Some(answer),
        _ => None,
    }
}

/// Until when a watcher runs: once told to stop, it still waits (bounded) to have heard of
/// `until` (by an event or a bookmark), the run's last revision.
pub struct WatchEnd {
    pub stop: AtomicBool,
    pub until: AtomicI64,
    /// Per watcher, the newest revision it heard of.
    pub heard: Vec<AtomicI64>,
}

impl WatchEnd {
    /// For `watchers` watchers.
    pub fn new(watchers: usize) -> WatchEnd {
        WatchEnd {
            stop: AtomicBool::new(false),
            until: AtomicI64::new(0),
            heard: (0..watchers).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// A revision every watcher has heard of, so none needs the history below it again.
    pub fn compactable(&self) -> i64 {
        self.heard
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// One watcher over every key of the run, from revision 1, first through `endpoints[member]`;
/// on a broken or silent stream it watches again from the revision after the newest it heard
/// of, through the next member. Returns every response and resumption, in order.
pub async fn watcher_task(
    id: usize,
    endpoints: Vec<String>,
    mut member: usize,
    end: Arc<WatchEnd>,
) -> Vec<Received> {
    let mut received = Vec::new();
    let mut next = 1;
    let mut first = true;
    loop {
        if !first {
            member = (member + 1) % endpoints.len();
            received.push(Received::Resumed { from: next, member });
            tokio::time::sleep(BACKOFF).await;
        }
        first = false;
        if end.stop.load(Ordering::Relaxed) && next > end.until.load(Ordering::Relaxed) {
            return received;
        }
        let mut client = connect(&endpoints[member]).await;
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let Some(mut stream) = bounded(client.watch(PREFIX, Some(options))).await else {
            continue;
        };
        let mut last_heard = Instant::now();
        let mut last_asked: Option<Instant> = None;
        loop {
            if end.stop.load(Ordering::Relaxed) && next > end.until.load(Ordering::Relaxed) {
                return received;
            }
            if last_asked.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
                last_asked = Some(Instant::now());
                if stream.request_progress().await.is_err() {
                    break;
                }
            }
            let message = match tokio::time::timeout(PROGRESS_EVERY, stream.message()).await {
                Err(_) if last_heard.elapsed() < WATCH_SILENCE => continue,
                Err(_) | Ok(Err(_)) | Ok(Ok(None)) => break,
                Ok(Ok(Some(message))) => message,
            };
            last_heard = Instant::now();
            if message.canceled() {
                break;
            }
            if message.created() && message.events().is_empty() {
                continue;
            }
            let revision = message.header().map_or(0, |h| h.revision());
            if message.events().is_empty() {
                received.push(Received::Progress(revision));
                next = next.max(revision + 1);
                end.heard[id].store(next - 1, Ordering::Relaxed);
                continue;
            }
            let events: Vec<Event> = message
                .events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    Some(Event {
                        revision: kv.mod_revision(),
                        key: kv.key_str().unwrap_or("?").to_string(),
                        value: kv.value_str().unwrap_or("?").to_string(),
                        delete: e.event_type() == etcd_client::EventType::Delete,
                    })
                })
                .collect();
            if let Some(last) = events.last() {
                next = next.max(last.revision + 1);
            }
            end.heard[id].store(next - 1, Ordering::Relaxed);
            received.push(Received::Events(events));
        }
    }
}

/// The history every watcher's events add up to, in revision order, each event once; `Err`
/// names an event two watchers saw differently. Compactions during the run remove the early
/// history from the members, so the watchers' record is the only one left whole.
pub fn merged_history(watched: &[Vec<Received>]) -> Result<Vec<Event>, String> {
    let mut merged: std::collections::BTreeMap<(i64, String), Event> = std::collections::BTreeMap::new();
    for (w, received) in watched.iter().enumerate() {
        for event in received.iter().flat_map(|r| match r {
            Received::Events(events) => events.as_slice(),
            _ => &[],
        }) {
            let slot = (event.revision, event.key.clone());
            match merged.get(&slot) {
                Some(seen) if seen != event => {
                    return Err(format!("watcher {w} saw {event:?}, another {seen:?}"));
                }
                Some(_) => {}
                None => {
                    merged.insert(slot, event.clone());
                }
            }
        }
    }
    Ok(merged.into_values().collect())
}

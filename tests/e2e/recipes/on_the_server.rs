//! The recipes beyond Mutex and Election (RwMutex, Semaphore, Barrier, DoubleBarrier, Queue,
//! PriorityQueue and pub/sub), each in one scenario against the real server through
//! `concord_client::Client`.
//!
//! Their unit tests run against `MemoryKv`, an in-memory double of etcd's semantics. A recipe
//! is only as right as the double is faithful: where the double and the Raft-backed store
//! disagree (a sort, a range's create-revision bound, a watch's start revision, a txn's
//! revision, a compare on a missing key), the unit tests would keep passing while the recipe
//! breaks for real. So each scenario here mirrors what the recipe's unit tests check, on the
//! store, and a difference between the two fails a test here.
//!
//! Every wait is bounded by [`WAIT`]; the only sleeps check that something does *not* happen
//! within [`STILL_WAITING`] (a waiter that must stay blocked).

use std::fmt::Debug;
use std::time::Instant;

use concord_client::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_client::proto::etcdserverpb::{Compare, RangeRequest, TxnRequest};
use concord_client::recipes::Error;
use concord_client::recipes::barrier::{Barrier, DoubleBarrier};
use concord_client::recipes::kv::prefix_end;
use concord_client::recipes::pubsub::{Message, Retention, Subscription, Topic};
use concord_client::recipes::queue::{PriorityQueue, Queue};
use concord_client::recipes::rwmutex::RwMutex;
use concord_client::recipes::semaphore::Semaphore;
use concord_client::recipes::session::Session;
use concord_client::{Client, Kv};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::harness::Server;

use super::support::{STILL_WAITING, WAIT};

/// A new connection to `server` (each participant gets its own, like separate processes).
async fn client(server: &Server) -> Client {
    Client::connect([server.url()]).await.expect("connect to concord")
}

/// A session (a 10 s lease, kept alive) on a connection of its own.
async fn session(server: &Server) -> Session<Client> {
    Session::new(client(server).await, 10).await.unwrap()
}

/// `future`'s output, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {WAIT:?}"))
}

/// Asserts that nothing arrives on `events` for [`STILL_WAITING`].
async fn quiet<T: Debug>(events: &mut mpsc::UnboundedReceiver<T>, why: &str) {
    if let Ok(event) = tokio::time::timeout(STILL_WAITING, events.recv()).await {
        panic!("{why}, yet {event:?} happened");
    }
}

/// Asserts that none of `tasks` finishes within [`STILL_WAITING`].
async fn all_waiting<T>(tasks: &[JoinHandle<T>], why: &str) {
    tokio::time::sleep(STILL_WAITING).await;
    assert!(tasks.iter().all(|task| !task.is_finished()), "{why}");
}

/// The keys under `prefix`, oldest (lowest create revision) first.
async fn queued(kv: &Client, prefix: &str) -> Vec<Vec<u8>> {
    let range = RangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix.as_bytes()),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        keys_only: true,
        ..Default::default()
    };
    let read = kv.range(range).await.unwrap();
    read.kvs.into_iter().map(|kv| kv.key.to_vec()).collect()
}

/// Polls until `n` keys are under `prefix`, failing after [`WAIT`].
async fn wait_queued(kv: &Client, prefix: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let keys = queued(kv, prefix).await;
        if keys.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} keys under {prefix:?}, expected {n}",
            keys.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Whether a txn guarded by `fence` succeeds.
async fn holds(kv: &Client, fence: Compare) -> bool {
    let guarded = TxnRequest {
        compare: vec![fence],
        ..Default::default()
    };
    kv.txn(guarded).await.unwrap().succeeded
}

/// Takes the lock `rw` for reading or writing in a task, reporting `label` on `order` once it
/// holds it; the task returns the handle.
fn spawn_rw_lock(
    session: Session<Client>,
    write: bool,
    label: &'static str,
    order: &mpsc::UnboundedSender<&'static str>,
) -> JoinHandle<RwMutex<Client>> {
    let order = order.clone();
    tokio::spawn(async move {
        let mut lock = RwMutex::new(&session, "rw");
        if write {
            lock.write_lock().await
        } else {
            lock.read_lock().await
        }
        .unwrap();
        order.send(label).unwrap();
        lock
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwmutex_readers_share_and_a_writer_holds_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;

    // Two readers hold the lock together.
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut reader = RwMutex::new(&session(&server).await, "rw");
        within("a reader taking a lock only readers hold", reader.read_lock())
            .await
            .unwrap();
        assert!(reader.key().unwrap().starts_with(b"rw/read/"));
        readers.push(reader);
    }

    // A writer queues behind them, and a reader behind the writer.
    let (order_tx, mut order) = mpsc::unbounded_channel();
    let writer = spawn_rw_lock(session(&server).await, true, "writer", &order_tx);
    wait_queued(&kv, "rw/", 3).await;
    let late_reader = spawn_rw_lock(session(&server).await, false, "late reader", &order_tx);
    wait_queued(&kv, "rw/", 4).await;
    quiet(
        &mut order,
        "two readers hold the lock: nobody behind the writer passes",
    )
    .await;

    readers[0].unlock().await.unwrap();
    quiet(&mut order, "one reader still holds the lock: the writer waits").await;
    readers[1].unlock().await.unwrap();
    let first = within("the writer taking the lock", order.recv()).await;
    assert_eq!(first, Some("writer"));
    let mut writer = within("the writer task", writer).await.unwrap();
    assert!(writer.key().unwrap().starts_with(b"rw/write/"));
    let fence = writer.fence().unwrap();
    assert!(holds(&kv, fence.clone()).await, "the writer's fence holds");
    quiet(&mut order, "the writer holds the lock: the late reader waits").await;
    assert_eq!(
        queued(&kv, "rw/").await.len(),
        2,
        "the writer and the late reader"
    );

    writer.unlock().await.unwrap();
    assert!(
        !holds(&kv, fence).await,
        "the fence fails once the writer unlocked"
    );
    let second = within("the late reader taking the lock", order.recv()).await;
    assert_eq!(second, Some("late reader"));
    let mut late_reader = within("the late reader task", late_reader).await.unwrap();
    late_reader.unlock().await.unwrap();
    assert!(queued(&kv, "rw/").await.is_empty());
}

/// Acquires the semaphore `sem` (2 slots) in a task, reporting `label` on `admitted` once it
/// holds a slot; the task returns the handle.
fn spawn_acquire(
    session: Session<Client>,
    label: &'static str,
    admitted: &mpsc::UnboundedSender<&'static str>,
) -> JoinHandle<Semaphore<Client>> {
    let admitted = admitted.clone();
    tokio::spawn(async move {
        let mut semaphore = Semaphore::new(&session, "sem", 2).unwrap();
        semaphore.acquire().await.unwrap();
        admitted.send(label).unwrap();
        semaphore
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_of_two_admits_two_and_queues_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;

    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut holder = Semaphore::new(&session(&server).await, "sem", 2).unwrap();
        within("acquiring a free slot", holder.acquire()).await.unwrap();
        holders.push(holder);
    }
    let keys = queued(&kv, "sem/").await;
    assert_eq!(keys, [holders[0].key().unwrap(), holders[1].key().unwrap()]);

    // Full: try_acquire is refused and leaves no key behind.
    let mut tried = Semaphore::new(&session(&server).await, "sem", 2).unwrap();
    assert!(matches!(tried.try_acquire().await, Err(Error::Locked)));
    assert_eq!(queued(&kv, "sem/").await, keys);

    // Two waiters: the front one watches both holders, the one behind watches the front one.
    let (admitted_tx, mut admitted) = mpsc::unbounded_channel();
    let third = spawn_acquire(session(&server).await, "third", &admitted_tx);
    wait_queued(&kv, "sem/", 3).await;
    let fourth = spawn_acquire(session(&server).await, "fourth", &admitted_tx);
    wait_queued(&kv, "sem/", 4).await;
    quiet(&mut admitted, "both slots are held: nobody else gets in").await;

    // The newer holder leaves: the front waiter must notice although the older one stays.
    holders[1].release().await.unwrap();
    let first = within("the front waiter taking the freed slot", admitted.recv()).await;
    assert_eq!(first, Some("third"));
    quiet(&mut admitted, "one slot was freed: only one waiter gets in").await;
    assert!(matches!(tried.try_acquire().await, Err(Error::Locked)));

    holders[0].release().await.unwrap();
    let second = within("the next waiter taking the freed slot", admitted.recv()).await;
    assert_eq!(second, Some("fourth"));
    let mut third = within("the third task", third).await.unwrap();
    let mut fourth = within("the fourth task", fourth).await.unwrap();
    assert_eq!(
        queued(&kv, "sem/").await,
        [third.key().unwrap(), fourth.key().unwrap()]
    );
    assert!(holds(&kv, third.fence().unwrap()).await);
    assert!(holds(&kv, fourth.fence().unwrap()).await);

    third.release().await.unwrap();
    tried.try_acquire().await.unwrap(); // a free slot is taken at once
    fourth.release().await.unwrap();
    tried.release().await.unwrap();
    assert!(queued(&kv, "sem/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_blocks_waiters_until_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;
    let barrier = Barrier::new(kv.clone(), "gate");
    within("waiting at a barrier nobody holds", barrier.wait())
        .await
        .unwrap();

    assert!(barrier.hold().await.unwrap());
    assert!(!barrier.hold().await.unwrap(), "already held");
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let barrier = Barrier::new(client(&server).await, "gate");
        waiters.push(tokio::spawn(async move { barrier.wait().await }));
    }
    all_waiting(&waiters, "the barrier is held: every waiter waits").await;

    barrier.release().await.unwrap();
    for waiter in waiters {
        within("a waiter passing the released barrier", waiter)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(queued(&kv, "gate").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_barrier_of_three_enters_together_and_leaves_together() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let mut entering = Vec::new();
    for participant in 0..3 {
        if participant == 2 {
            wait_queued(&kv, "double/waiters/", 2).await;
            quiet(&mut entered, "two of three have arrived: nobody passes enter").await;
        }
        let (session, entered_tx) = (session(&server).await, entered_tx.clone());
        entering.push(tokio::spawn(async move {
            let mut barrier = DoubleBarrier::new(&session, "double", 3).unwrap();
            barrier.enter().await.unwrap();
            entered_tx.send(participant).unwrap();
            barrier
        }));
    }
    let mut passed = Vec::new();
    for _ in 0..3 {
        passed.push(within("entering once three have", entered.recv()).await.unwrap());
    }
    passed.sort();
    assert_eq!(passed, [0, 1, 2]);
    let mut barriers = Vec::new();
    for task in entering {
        barriers.push(within("an entering task", task).await.unwrap());
    }
    assert!(kv.get("double/ready").await.unwrap().is_some());

    // A fourth is one too many: refused, and it leaves no key.
    let mut fourth = DoubleBarrier::new(&session(&server).await, "double", 3).unwrap();
    let refused = fourth.enter().await.unwrap_err();
    assert_eq!(refused.to_string(), "too many clients");
    assert_eq!(queued(&kv, "double/waiters/").await.len(), 3);

    // Two leave: they wait for the third.
    let mut last = barriers.pop().unwrap();
    let leaving: Vec<_> = barriers
        .into_iter()
        .map(|mut barrier| tokio::spawn(async move { barrier.leave().await.map(|()| barrier) }))
        .collect();
    // The newer of the two deletes its key and waits; the oldest keeps its own until last.
    wait_queued(&kv, "double/waiters/", 2).await;
    all_waiting(&leaving, "the third has not left: nobody passes leave").await;

    within("the third leaving", last.leave()).await.unwrap();
    for leaver in leaving {
        let barrier = within("leaving once all three have", leaver).await.unwrap();
        assert!(barrier.unwrap().key().is_none());
    }
    assert!(
        queued(&kv, "double/").await.is_empty(),
        "waiter keys and the ready key are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_first_in_first_out_and_an_empty_dequeue_waits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;
    let producer = Queue::new(kv.clone(), "jobs");
    let consumer = Queue::new(client(&server).await, "jobs");
    for i in 0..5 {
        let key = producer.enqueue(format!("job {i}")).await.unwrap();
        assert!(key.starts_with(b"jobs/"));
    }
    for i in 0..5 {
        let item = within("dequeuing a queued item", consumer.dequeue()).await;
        assert_eq!(item.unwrap(), format!("job {i}").into_bytes());
    }
    assert!(queued(&kv, "jobs/").await.is_empty());

    // Two consumers wait on the empty queue; two items wake them, one each.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let consumer = Queue::new(client(&server).await, "jobs");
        waiting.push(tokio::spawn(async move { consumer.dequeue().await }));
    }
    all_waiting(&waiting, "the queue is empty: every dequeue waits").await;
    producer.enqueue("a").await.unwrap();
    producer.enqueue("b").await.unwrap();
    let mut got = Vec::new();
    for consumer in waiting {
        let item = within("a waiting dequeue getting an item", consumer).await;
        got.push(item.unwrap().unwrap());
    }
    got.sort();
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
    assert!(queued(&kv, "jobs/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_serves_low_numbers_first_and_in_arrival_order_within_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;
    let producer = PriorityQueue::new(kv.clone(), "prio");
    let mut keys = Vec::new();
    for (value, priority) in [("c", 5), ("a", 1), ("b", 1), ("d", 0), ("e", u16::MAX), ("b2", 1)] {
        let key = producer.enqueue(value, priority).await.unwrap();
        keys.push(String::from_utf8(key).unwrap());
    }
    assert_eq!(
        keys,
        [
            "prio/00005/0000000000000000",
            "prio/00001/0000000000000000",
            "prio/00001/0000000000000001",
            "prio/00000/0000000000000000",
            "prio/65535/0000000000000000",
            "prio/00001/0000000000000002",
        ]
    );

    let consumer = PriorityQueue::new(client(&server).await, "prio");
    let mut order = Vec::new();
    for _ in 0..6 {
        let item = within("dequeuing a queued item", consumer.dequeue()).await;
        order.push(String::from_utf8(item.unwrap()).unwrap());
    }
    assert_eq!(order, ["d", "a", "b", "b2", "c", "e"]);
    assert!(queued(&kv, "prio/").await.is_empty());

    // An empty priority queue blocks too.
    let waiting = [tokio::spawn(async move { consumer.dequeue().await })];
    all_waiting(&waiting, "the queue is empty: dequeue waits").await;
    let key = producer.enqueue("late", 7).await.unwrap();
    assert_eq!(key, b"prio/00007/0000000000000000");
    let [waiting] = waiting;
    let item = within("the waiting dequeue getting the item", waiting).await;
    assert_eq!(item.unwrap().unwrap(), b"late");
}

/// The next `n` messages of `subscription`, each within [`WAIT`].
async fn take(subscription: &mut Subscription, n: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    for _ in 0..n {
        let next = within("the next message", subscription.next()).await;
        messages.push(next.expect("the subscription ended").unwrap());
    }
    messages
}

fn payloads(messages: &[Message]) -> Vec<String> {
    let payload = |m: &Message| String::from_utf8(m.payload.clone()).unwrap();
    messages.iter().map(payload).collect()
}

fn revisions(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.revision).collect()
}

/// `m<from>` to `m<to - 1>`.
fn numbered(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_delivers_in_order_and_a_resumed_subscription_has_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;
    let topic = Topic::new(kv.clone(), "news");
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    let other = Topic::new(kv.clone(), "other");
    other.publish("elsewhere").await.unwrap();

    // From the first message's revision: the history, then live. From 0: only what follows.
    let subscriber = Topic::new(client(&server).await, "news");
    let mut from_start = subscriber.subscribe(published[0]).await.unwrap();
    let mut live_only = subscriber.subscribe(0).await.unwrap();
    for i in 3..6 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    let seen = take(&mut from_start, 6).await;
    assert_eq!(payloads(&seen), numbered(0, 6));
    assert_eq!(revisions(&seen), published);
    assert!(seen.iter().all(|m| m.key.starts_with(b"news/")));
    assert_eq!(payloads(&take(&mut live_only, 3).await), numbered(3, 6));
    let more = tokio::time::timeout(STILL_WAITING, from_start.next()).await;
    assert!(more.is_err(), "a message nobody published: {more:?}");

    // The subscriber stops after processing m3, and resumes after it: no gap, no duplicate.
    drop((from_start, live_only));
    for i in 6..8 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    let mut resumed = subscriber.subscribe(seen[3].revision + 1).await.unwrap();
    let mut received = take(&mut resumed, 4).await;
    for i in 8..10 {
        published.push(topic.publish(format!("m{i}")).await.unwrap());
    }
    received.extend(take(&mut resumed, 2).await);
    assert_eq!(payloads(&received), numbered(4, 10));
    assert_eq!(revisions(&received), published[4..]);

    let retained = subscriber.retained().await.unwrap();
    assert_eq!(payloads(&retained), numbered(0, 10));
    assert_eq!(revisions(&retained), published);

    // A retention of 4 messages removes the oldest at once; a start below it is refused with
    // the oldest revision still kept, and a start from there replays exactly what is kept.
    let four = Retention {
        max_messages: Some(4),
        ..Default::default()
    };
    topic.set_retention(four).await.unwrap();
    let retained = subscriber.retained().await.unwrap();
    assert_eq!(payloads(&retained), numbered(6, 10));
    let floor = published[5] + 1;
    let below = subscriber.subscribe(published[0]).await.err().unwrap();
    assert!(
        below
            .to_string()
            .contains(&format!("oldest revision still kept is {floor}")),
        "{below}"
    );
    let mut replay = subscriber.subscribe(floor).await.unwrap();
    topic.publish("new").await.unwrap();
    assert_eq!(
        payloads(&take(&mut replay, 5).await),
        ["m6", "m7", "m8", "m9", "new"]
    );
    let more = tokio::time::timeout(STILL_WAITING, replay.next()).await;
    assert!(more.is_err(), "a message nobody published: {more:?}");
    assert_eq!(subscriber.retained().await.unwrap().len(), 4);
}

/// The one pub/sub behaviour the double cannot show (it never compacts; the unit test wraps
/// it to fail such watches): resuming from a compacted revision is an error, not a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_resuming_from_a_compacted_revision_is_an_error_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let kv = client(&server).await;
    let topic = Topic::new(kv.clone(), "audit");
    let first = topic.publish("m0").await.unwrap();
    let second = topic.publish("m1").await.unwrap();
    let mut etcd = super::support::connect(&server).await;
    etcd.compact(second, None).await.unwrap();

    let mut subscription = topic.subscribe(first).await.unwrap();
    let Some(Err(Error::Store(status))) = within("the compaction error", subscription.next()).await else {
        panic!("expected the compaction error");
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(
        status.message().contains("required revision has been compacted"),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .contains(&format!("topic audit, from revision {first}")),
        "{status:?}"
    );
    let after = within("the stream ending", subscription.next()).await;
    assert!(after.is_none(), "the stream ends after its error");

    let mut from_retained = topic.subscribe(second).await.unwrap();
    topic.publish("m2").await.unwrap();
    assert_eq!(payloads(&take(&mut from_retained, 2).await), ["m1", "m2"]);
}

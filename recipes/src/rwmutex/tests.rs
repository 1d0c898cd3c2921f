use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use concord_proto::etcdserverpb::TxnRequest;

use super::*;
use crate::memory::MemoryKv;
use crate::test_util::{bounded, keys_by_creation, session, until};

/// The keys under `name/`, in queue (create revision) order.
async fn queued(kv: &MemoryKv, name: &str) -> Vec<Vec<u8>> {
    keys_by_creation(kv, &prefix_of(name)).await
}

/// Locks in a task, reporting `label` on `order` once locked; the task returns the handle.
fn spawn_lock(
    session: &Session<MemoryKv>,
    write: bool,
    label: &'static str,
    order: &tokio::sync::mpsc::UnboundedSender<&'static str>,
) -> tokio::task::JoinHandle<RwMutex<MemoryKv>> {
    let (session, order) = (session.clone(), order.clone());
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

#[tokio::test(start_paused = true)]
async fn readers_share_the_lock() {
    let kv = MemoryKv::new();
    let mut readers = Vec::new();
    for _ in 0..5 {
        let mut reader = RwMutex::new(&session(&kv).await, "rw");
        bounded(reader.read_lock()).await.unwrap();
        assert!(reader.key().unwrap().starts_with(b"rw/read/"));
        readers.push(reader);
    }
    assert_eq!(queued(&kv, "rw").await.len(), 5);
    for reader in &mut readers {
        reader.unlock().await.unwrap();
    }
    assert!(queued(&kv, "rw").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_writer_waits_for_earlier_keys_and_readers_behind_it_wait_for_it() {
    let kv = MemoryKv::new();
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut first = RwMutex::new(&session(&kv).await, "rw");
    first.read_lock().await.unwrap();

    let writer = spawn_lock(&session(&kv).await, true, "writer", &order_tx);
    until(async || queued(&kv, "rw").await.len() == 2).await;
    let late_reader = spawn_lock(&session(&kv).await, false, "late reader", &order_tx);
    until(async || queued(&kv, "rw").await.len() == 3).await;
    let keys = queued(&kv, "rw").await;
    // Each waiter watches only the newest key that blocks it.
    until(async || kv.watchers(&keys[0]) == 1 && kv.watchers(&keys[1]) == 1).await;
    assert_eq!(kv.watchers(&keys[2]), 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(order.try_recv().is_err(), "nobody may pass the first reader");

    first.unlock().await.unwrap();
    let mut writer = bounded(writer).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !late_reader.is_finished(),
        "a reader queued behind a writer waits for it"
    );
    writer.unlock().await.unwrap();
    let mut late_reader = bounded(late_reader).await.unwrap();
    late_reader.unlock().await.unwrap();
    assert_eq!(order.recv().await, Some("writer"));
    assert_eq!(order.recv().await, Some("late reader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_exclude_everyone_and_readers_overlap() {
    let kv = MemoryKv::new();
    // > 0: that many readers inside; -1: a writer inside.
    let inside = Arc::new(AtomicI64::new(0));
    let most_readers = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (kv, inside, most_readers) = (kv.clone(), inside.clone(), most_readers.clone());
        tasks.push(tokio::spawn(async move {
            let mut lock = RwMutex::new(&session(&kv).await, "mixed");
            for round in 0..6 {
                if (task + round) % 4 == 0 {
                    lock.write_lock().await.unwrap();
                    assert_eq!(inside.swap(-1, Ordering::SeqCst), 0, "writer with company");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    assert_eq!(inside.swap(0, Ordering::SeqCst), -1);
                } else {
                    lock.read_lock().await.unwrap();
                    let readers = inside.fetch_add(1, Ordering::SeqCst);
                    assert!(readers >= 0, "reader beside a writer");
                    most_readers.fetch_max(readers + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
                lock.unlock().await.unwrap();
            }
        }));
    }
    for task in tasks {
        bounded(task).await.unwrap();
    }
    assert!(
        most_readers.load(Ordering::SeqCst) > 1,
        "readers never overlapped"
    );
    assert!(queued(&kv, "mixed").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_expired_reader_lets_the_writer_in() {
    let kv = MemoryKv::new();
    let reader_session = session(&kv).await;
    let mut reader = RwMutex::new(&reader_session, "rw");
    reader.read_lock().await.unwrap();
    let (order_tx, _order) = tokio::sync::mpsc::unbounded_channel();
    let writer = spawn_lock(&session(&kv).await, true, "writer", &order_tx);
    until(async || queued(&kv, "rw").await.len() == 2).await;
    kv.expire_lease(reader_session.lease());
    let writer = bounded(writer).await.unwrap();
    assert!(kv.txn(guarded(writer.fence().unwrap())).await.unwrap().succeeded);
    assert!(!kv.txn(guarded(reader.fence().unwrap())).await.unwrap().succeeded);
}

/// A txn that succeeds only if `fence` holds.
fn guarded(fence: Compare) -> TxnRequest {
    TxnRequest {
        compare: vec![fence],
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_writer_stops_blocking_readers_behind_it() {
    let kv = MemoryKv::new();
    let mut first = RwMutex::new(&session(&kv).await, "rw");
    first.read_lock().await.unwrap();
    let mut writer = RwMutex::new(&session(&kv).await, "rw");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), writer.write_lock())
            .await
            .is_err()
    );
    until(async || queued(&kv, "rw").await.len() == 1).await;
    let mut second = RwMutex::new(&session(&kv).await, "rw");
    bounded(second.read_lock()).await.unwrap();
    assert!(matches!(writer.unlock().await, Err(Error::NotHeld(_))));
    assert!(matches!(
        second.write_lock().await,
        Err(Error::InvalidArgument(_))
    ));
}

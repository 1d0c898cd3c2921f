//! Online defragmentation end to end: a database with most of its space freed by compaction is
//! defragmented while 16 clients put; no put fails, the file shrinks, and every acknowledged
//! write is there afterwards, also after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragmenting_under_sixteen_writers_loses_nothing_and_shrinks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut client = etcd_client::Client::connect([server.url()], None).await.unwrap();
    // About 24 MiB of history over 8 keys, then compacted away.
    let big = "x".repeat(48 * 1024);
    for i in 0..512 {
        client
            .put(format!("big/{}", i % 8), big.as_str(), None)
            .await
            .unwrap();
    }
    let revision = client
        .get("big/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    server.ctl(&["compact", &revision.to_string(), "--physical"]);
    let before = server.db_size();

    // Sixteen writers put until the defragmentation is over.
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..16 {
        let mut client = etcd_client::Client::connect([server.url()], None).await.unwrap();
        let (stop, puts) = (stop.clone(), puts.clone());
        writers.push(tokio::spawn(async move {
            let (mut written, mut worst) = (Vec::new(), Duration::ZERO);
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) || k < 20 {
                let started = Instant::now();
                let key = format!("w/{w}/{k}");
                client
                    .put(key.as_str(), "v", None)
                    .await
                    .expect("a put failed during defrag");
                worst = worst.max(started.elapsed());
                written.push(key);
                puts.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
            (written, worst)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while puts.load(Ordering::Relaxed) < 32 {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let defragmented = Instant::now();
    client.defragment().await.unwrap();
    let took = defragmented.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    let mut worst = Duration::ZERO;
    for writer in writers {
        let (keys, slowest) = writer.await.unwrap();
        written.extend(keys);
        worst = worst.max(slowest);
    }
    let after = server.db_size();
    eprintln!(
        "defrag: {before} -> {after} bytes in {took:?}; worst put {worst:?}; {} puts",
        written.len()
    );
    assert!(after < before / 2, "{before} -> {after} bytes");

    // Every acknowledged put is there, before and after a restart.
    for round in 0..2 {
        let count = client
            .get(
                "w/",
                Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap()
            .count();
        assert_eq!(count as usize, written.len(), "round {round}");
        assert_eq!(
            client.get("big/3", None).await.unwrap().kvs()[0].value().len(),
            big.len()
        );
        if round == 0 {
            server.terminate();
            server.restart();
            client = etcd_client::Client::connect([server.url()], None).await.unwrap();
        }
    }
}

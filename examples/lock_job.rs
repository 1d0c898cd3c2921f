//! A job only one process may run at a time: each of three workers takes the `demo-job` lock,
//! runs, and releases it; the lock's fencing compare makes a write by a holder that lost the
//! lock (paused past its lease, say) fail instead of landing.
//!
//! ```text
//! cargo run --example lock_job -- 127.0.0.1:2379
//! concordctl lock demo-job -- echo "I hold it"    # in another terminal
//! ```
//!
//! Runs its three workers once and exits (`--bounded` is accepted and changes nothing).

use std::time::Duration;

use concord_client::Client;
use concord_client::proto::etcdserverpb::TxnRequest;
use concord_client::recipes::Kv;
use concord_client::recipes::kv::put_op;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or("127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(',')).await?;

    let mut workers = Vec::new();
    for worker in 1..=3 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let guard = client.lock("demo-job").await?;
            println!("worker {worker} holds the lock");
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Written only while this guard still holds the lock.
            let fenced = TxnRequest {
                compare: vec![guard.fence()],
                success: vec![put_op("demo-job/last-run", format!("worker {worker}"), 0)],
                failure: vec![],
            };
            let written = client.txn(fenced).await?.succeeded;
            println!("worker {worker} wrote its result: {written}");
            guard.unlock().await?;
            Ok::<_, concord_client::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let last = client.get("demo-job/last-run").await?.ok_or("no result")?;
    println!("last run by {}", String::from_utf8_lossy(&last.value));
    Ok(())
}

//! A leader among workers: three workers campaign for `demo-scheduler`; the leader does the
//! scheduling until it resigns (or dies: its lease ends and the next one takes over), and every
//! worker can ask who leads.
//!
//! ```text
//! cargo run --example worker_election -- 127.0.0.1:2379
//! concordctl elect demo-scheduler      # in another terminal: prints each leader
//! ```
//!
//! With `--bounded` each worker leads once, briefly, and it exits.

use std::time::Duration;

use concord_client::Client;
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bounded = args.iter().any(|a| a == "--bounded");
    let endpoints = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or("127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(',')).await?;
    let term = if bounded {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(10)
    };

    let mut leaders = client.observe("demo-scheduler");
    tokio::spawn(async move {
        while let Some(Ok(leader)) = leaders.next().await {
            println!("observed leader: {}", String::from_utf8_lossy(&leader.value));
        }
    });
    let mut workers = Vec::new();
    for worker in 1..=3 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("worker-{worker}");
            let leadership = client
                .campaign("demo-scheduler", name.clone(), Duration::from_secs(5))
                .await?;
            println!("{name} leads");
            tokio::select! {
                () = tokio::time::sleep(term) => println!("{name} scheduled its round"),
                () = leadership.lost() => println!("{name} lost its lease"),
            }
            println!("{name} resigns");
            leadership.resign().await?;
            Ok::<_, concord_client::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

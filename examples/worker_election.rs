//! A leader among workers, with the client's leader loop: three workers each run
//! `client.lead(...)`; whoever leads `demo-scheduler` runs the scheduling round, resigns when
//! the round is done, and campaigns again. A leader that loses its lease (it hung, the network
//! failed) has its round cancelled at once, and the next worker takes over.
//!
//! ```text
//! cargo run --example worker_election -- 127.0.0.1:2379
//! concordctl elect demo-scheduler      # in another terminal: prints each leader
//! ```
//!
//! With `--bounded` it stops after three rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concord_client::Client;
use tokio::sync::watch;

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
    let round = if bounded {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(10)
    };

    let rounds = Arc::new(AtomicUsize::new(0));
    let (done, mut finished) = watch::channel(false);
    let mut workers = Vec::new();
    for worker in 1..=3 {
        let name = format!("worker-{worker}");
        let (rounds, done) = (rounds.clone(), done.clone());
        let work = move |_key| {
            let (name, rounds, done) = (name.clone(), rounds.clone(), done.clone());
            async move {
                /// Says so when the round ends, finished or cancelled (leadership lost, stop).
                struct Round(String);
                impl Drop for Round {
                    fn drop(&mut self) {
                        println!("{} resigns", self.0);
                    }
                }
                println!("{name} leads");
                let _round = Round(name);
                tokio::time::sleep(round).await; // the round; cancelled if the lease is lost
                if rounds.fetch_add(1, Ordering::SeqCst) + 1 >= 3 && bounded {
                    done.send_replace(true);
                }
            }
        };
        workers.push(client.lead(
            "demo-scheduler",
            format!("worker-{worker}"),
            Duration::from_secs(5),
            work,
        ));
    }
    tokio::select! {
        _ = finished.wait_for(|done| *done) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for worker in workers {
        worker.stop().await;
    }
    Ok(())
}

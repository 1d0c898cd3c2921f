//! Publish/subscribe: a subscriber receives every message of a topic once, in order, and would
//! resume by itself after a disconnect; the topic keeps only its newest 100 messages.
//!
//! ```text
//! cargo run --example pubsub -- 127.0.0.1:2379
//! concordctl pub demo-events hello    # in another terminal
//! ```
//!
//! With `--bounded` it publishes five messages itself and exits once it received them.

use concord_client::{Client, Retention};
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

    let retention = Retention {
        max_messages: Some(100),
        ..Retention::default()
    };
    client.set_retention("demo-events", retention).await?;
    let mut events = client.subscribe("demo-events").await?;
    if bounded {
        let publisher = client.clone();
        tokio::spawn(async move {
            for i in 1..=5 {
                let _ = publisher.publish("demo-events", format!("event {i}")).await;
            }
        });
    }
    let mut received = 0;
    while let Some(event) = events.next().await {
        let event = event?;
        println!("{}: {}", event.revision, String::from_utf8_lossy(&event.payload));
        received += 1;
        if bounded && received == 5 {
            break;
        }
    }
    Ok(())
}

//! Typed config hot reload: a program follows `demo/settings` as a Rust struct; every version
//! written (say with `concordctl config put demo settings --format yaml`) reaches it in order,
//! and a version it cannot use is rejected (and reported: `concordctl config status demo
//! settings`) while it keeps running on the last good one.
//!
//! ```text
//! cargo run --example config_hot_reload -- 127.0.0.1:2379
//! echo 'workers: 8' | concordctl config put demo settings --format yaml
//! ```
//!
//! With `--bounded` it writes two more versions itself (the first one bad) and exits.

use concord_client::{Client, ConfigOptions, ConfigWrite};

#[derive(Debug, serde::Deserialize)]
struct Settings {
    workers: u32,
}

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

    let first = client
        .put_config_text("demo", "settings", "workers: 2\n", ConfigWrite::format("yaml"))
        .await?;
    let options = ConfigOptions {
        // Where the last good version is kept, to start from when no member is reachable.
        cache_file: Some(std::env::temp_dir().join("concord-demo-settings.json")),
        ..ConfigOptions::default()
    };
    let mut settings = client
        .config_with::<Settings>("demo", "settings", options)
        .await?;
    let mut rejections = settings.rejections();
    if let Some(current) = settings.current() {
        println!("version {}: {} workers", current.version, current.value.workers);
    }
    if bounded {
        let writer = client.clone();
        tokio::spawn(async move {
            for text in ["workers: many\n", "workers: 4\n"] {
                let _ = writer
                    .put_config_text("demo", "settings", text, ConfigWrite::default())
                    .await;
            }
        });
    }
    loop {
        tokio::select! {
            changed = settings.changed() => {
                let Some(current) = changed? else { continue };
                println!("version {}: {} workers", current.version, current.value.workers);
                if bounded && current.version >= first + 2 {
                    return Ok(());
                }
            }
            Ok(()) = rejections.changed() => {
                if let Some(rejected) = rejections.borrow_and_update().clone() {
                    println!("version {} rejected, still on the last good one: {}", rejected.version, rejected.error);
                }
            }
        }
    }
}

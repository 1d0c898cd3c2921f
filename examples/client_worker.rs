//! A worker built on `concord-client`: it registers itself as an instance of the `workers`
//! service, follows its typed config, and campaigns to be the one worker that runs the
//! scheduler, until Ctrl-C.
//!
//! ```text
//! cargo run --example client_worker -- 127.0.0.1:2379 worker-1
//! etcdctl put config/workers '{"batch_size": 50}'
//! etcdctl get --prefix services/workers/
//! ```

use std::time::Duration;

use concord_client::{Client, MembershipChange};
use futures::StreamExt;

/// The workers' config: namespace `workers`, key `settings`, as JSON.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct WorkerConfig {
    batch_size: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoints = args.next().unwrap_or_else(|| "127.0.0.1:2379".into());
    let id = args.next().unwrap_or_else(|| "worker-1".into());
    let client = Client::connect(endpoints.split(',')).await?;
    let ttl = Duration::from_secs(5);

    let registration = client
        .register("workers", &id, &format!("{id}.local:9000"), ttl)
        .await?;
    println!("registered as {}", registration.key());

    let mut members = client.watch_service("workers").await?;
    tokio::spawn(async move {
        while let Some(Ok(membership)) = members.next().await {
            for change in membership.changes {
                match change {
                    MembershipChange::Added(instance) => println!("+ {}", instance.id),
                    MembershipChange::Updated(instance) => println!("~ {}", instance.id),
                    MembershipChange::Removed { id } => println!("- {id}"),
                }
            }
        }
    });

    if client.config_version("workers", "settings", 0).await.is_err() {
        client
            .put_config("workers", "settings", &WorkerConfig { batch_size: 10 })
            .await?;
    }
    let mut config = client.config::<WorkerConfig>("workers", "settings").await?;
    println!("config: {:?}", config.current().map(|c| c.value.batch_size));
    tokio::spawn(async move {
        while let Ok(Some(new)) = config.changed().await {
            println!("config v{}: batch size {}", new.version, new.value.batch_size);
        }
    });

    tokio::select! {
        leadership = client.campaign("workers/scheduler", id.clone(), ttl) => {
            let leadership = leadership?;
            println!("{id} runs the scheduler");
            tokio::select! {
                () = leadership.lost() => println!("lost the scheduler's lease"),
                _ = tokio::signal::ctrl_c() => leadership.resign().await?,
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    registration.deregister().await?;
    Ok(())
}

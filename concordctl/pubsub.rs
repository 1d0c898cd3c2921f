//! `concordctl pub TOPIC MESSAGE` and `concordctl sub TOPIC [--from REV]`.

use std::process::ExitCode;

use clap::Args;
use concord_client::Client;
use futures::StreamExt;
use serde_json::json;

use crate::output::{self, Format};

#[derive(Debug, Args)]
pub struct Pub {
    /// The topic.
    topic: String,
    /// The message.
    message: String,
}

#[derive(Debug, Args)]
pub struct Sub {
    /// The topic.
    topic: String,
    /// Start with the messages published at this revision or later (default: only new ones).
    #[arg(long)]
    from: Option<i64>,
}

pub async fn publish(client: &Client, out: Format, command: Pub) -> anyhow::Result<ExitCode> {
    let revision = client.publish(&command.topic, command.message).await?;
    output::one(
        out,
        &revision.to_string(),
        &["TOPIC", "REVISION"],
        vec![command.topic.clone(), revision.to_string()],
        &json!({"topic": command.topic, "revision": revision}),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn subscribe(client: &Client, out: Format, command: Sub) -> anyhow::Result<ExitCode> {
    let mut messages = match command.from {
        Some(from) => client.subscribe_from(&command.topic, from).await?,
        None => client.subscribe(&command.topic).await?,
    };
    loop {
        let message = tokio::select! {
            () = crate::interrupted() => break,
            next = messages.next() => match next {
                Some(message) => message?,
                None => break,
            },
        };
        let payload = String::from_utf8_lossy(&message.payload);
        match out {
            Format::Json => println!("{}", json!({"revision": message.revision, "payload": payload})),
            _ => println!("{} {payload}", message.revision),
        }
    }
    Ok(ExitCode::SUCCESS)
}

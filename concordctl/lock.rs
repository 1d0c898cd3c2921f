//! `concordctl lock NAME [COMMAND...]` and `concordctl elect NAME [VALUE]`, over etcd's Lock
//! and Election services, as etcdctl's `lock` and `elect` are.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use concord_client::Client;
use concord_client::proto::v3electionpb::election_client::ElectionClient;
use concord_client::proto::v3electionpb::{CampaignRequest, LeaderRequest, ResignRequest};
use concord_client::proto::v3lockpb::lock_client::LockClient;
use concord_client::proto::v3lockpb::{LockRequest, UnlockRequest};
use concord_client::recipes::session::Session;
use futures::StreamExt;
use serde_json::json;

use crate::output::Format;

#[derive(Debug, Args)]
pub struct Lock {
    /// The lock's name.
    name: String,
    /// A command to run while holding the lock (with ETCD_LOCK_KEY and ETCD_LOCK_REV set);
    /// without one, the lock is held until interrupted.
    command: Vec<String>,
    /// The TTL in seconds of the session lease that holds the lock.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

#[derive(Debug, Args)]
pub struct Elect {
    /// The election's name.
    name: String,
    /// The value to campaign with; without one, prints each leader's value.
    value: Option<String>,
    /// The TTL in seconds of the session lease that holds the leadership.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

pub async fn lock(client: &Client, out: Format, command: Lock) -> anyhow::Result<ExitCode> {
    let session = Session::new(client.clone(), command.ttl).await?;
    let mut locks = LockClient::new(client.channel().await?);
    let request = LockRequest {
        name: command.name.clone().into_bytes(),
        lease: session.lease(),
    };
    let locked = tokio::select! {
        () = crate::interrupted() => {
            session.close().await?;
            bail!("interrupted while waiting for the lock");
        }
        locked = locks.lock(request) => locked?.into_inner(),
    };
    let key = String::from_utf8_lossy(&locked.key).into_owned();
    let revision = locked.header.map_or(0, |h| h.revision);
    let code = match command.command.split_first() {
        Some((program, args)) => {
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .env("ETCD_LOCK_KEY", &key)
                .env("ETCD_LOCK_REV", revision.to_string())
                .spawn()
                .with_context(|| format!("running {program}"))?;
            let status = tokio::select! {
                status = child.wait() => status?,
                () = session.lost() => {
                    let _ = child.kill().await;
                    bail!("lost the lock's lease while {program} ran");
                }
            };
            ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
        }
        None => {
            match out {
                Format::Json => println!("{}", json!({"key": key, "revision": revision})),
                _ => println!("{key}"),
            }
            tokio::select! {
                () = crate::interrupted() => {}
                () = session.lost() => bail!("lost the lock's lease"),
            }
            ExitCode::SUCCESS
        }
    };
    locks
        .unlock(UnlockRequest {
            key: locked.key.clone(),
        })
        .await?;
    session.close().await?;
    Ok(code)
}

pub async fn elect(client: &Client, out: Format, command: Elect) -> anyhow::Result<ExitCode> {
    let mut elections = ElectionClient::new(client.channel().await?);
    let Some(value) = command.value else {
        // Observe: print each leader's value.
        let request = LeaderRequest {
            name: command.name.into_bytes(),
        };
        let mut leaders = elections.observe(request).await?.into_inner();
        loop {
            let leader = tokio::select! {
                () = crate::interrupted() => break,
                next = leaders.next() => match next {
                    Some(leader) => leader?,
                    None => break,
                },
            };
            let Some(kv) = leader.kv else { continue };
            let value = String::from_utf8_lossy(&kv.value);
            match out {
                Format::Json => println!(
                    "{}",
                    json!({"key": String::from_utf8_lossy(&kv.key), "value": value, "revision": kv.create_revision})
                ),
                _ => println!("{value}"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let session = Session::new(client.clone(), command.ttl).await?;
    let request = CampaignRequest {
        name: command.name.clone().into_bytes(),
        lease: session.lease(),
        value: value.clone().into_bytes(),
    };
    let campaign = tokio::select! {
        () = crate::interrupted() => {
            session.close().await?;
            bail!("interrupted while campaigning");
        }
        campaign = elections.campaign(request) => campaign?.into_inner(),
    };
    let leader = campaign
        .leader
        .context("the campaign's answer has no leader key")?;
    let key = String::from_utf8_lossy(&leader.key).into_owned();
    match out {
        Format::Json => println!("{}", json!({"key": key, "value": value, "revision": leader.rev})),
        _ => println!("{key}\n{value}"),
    }
    tokio::select! {
        () = crate::interrupted() => {}
        () = session.lost() => bail!("lost the leadership's lease"),
    }
    elections.resign(ResignRequest { leader: Some(leader) }).await?;
    session.close().await?;
    Ok(ExitCode::SUCCESS)
}

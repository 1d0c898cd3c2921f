//! `concordctl registry ...`: register (with heartbeats until interrupted), list, watch,
//! deregister and drain instances.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use concord_client::{Client, Instance, MembershipChange, NewInstance, SERVICES_PREFIX};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Registers an instance and keeps its heartbeats going until interrupted, then
    /// deregisters it. Prints the lease.
    Register {
        /// The service's name.
        service: String,
        /// The instance's ID.
        id: String,
        /// Where to reach it.
        addr: String,
        /// The lease's TTL in seconds: a crashed instance is gone this long after its last
        /// heartbeat.
        #[arg(long, default_value_t = 10)]
        ttl: u64,
        /// Metadata, a JSON object (zone, weight, version, tags ...).
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Lists a service's instances.
    List {
        /// The service's name.
        service: String,
    },
    /// Prints a service's membership, then every change, until interrupted.
    Watch {
        /// The service's name.
        service: String,
    },
    /// Removes an instance at once.
    Deregister {
        /// The service's name.
        service: String,
        /// The instance's ID.
        id: String,
    },
    /// Marks an instance draining: still registered, not to be picked.
    Drain {
        /// The service's name.
        service: String,
        /// The instance's ID.
        id: String,
    },
}

pub async fn run(client: &Client, out: Format, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Register {
            service,
            id,
            addr,
            ttl,
            metadata,
        } => {
            let mut instance = NewInstance::new(&service, &id, &addr).ttl(Duration::from_secs(ttl));
            if let Some(metadata) = metadata {
                let value: Value = serde_json::from_str(&metadata).context("--metadata is not valid JSON")?;
                instance = instance.metadata(value);
            }
            let mut registration = client.register_instance(instance).await?;
            let lease = registration.lease();
            output::one(
                out,
                &format!("registered {} with lease {lease:x}", registration.key()),
                &["KEY", "LEASE", "TTL"],
                vec![
                    registration.key().to_string(),
                    format!("{lease:x}"),
                    format!("{ttl}s"),
                ],
                &json!({"key": registration.key(), "lease": lease, "ttl": ttl}),
            );
            loop {
                tokio::select! {
                    () = crate::interrupted() => break,
                    state = registration.changed() => match state {
                        Some(state) if state.registered && state.registrations > 1 => {
                            eprintln!("registered again with lease {:x} after losing the lease", state.instance.lease);
                        }
                        Some(state) if !state.registered => eprintln!("lost the lease; registering again"),
                        Some(_) => {}
                        None => bail!("the registration ended"),
                    },
                }
            }
            let key = registration.key().to_string();
            registration.deregister().await?;
            if out == Format::Simple {
                println!("deregistered {key}");
            }
        }
        Command::List { service } => {
            let instances = client.instances(&service).await?;
            let rows: Vec<Vec<String>> = instances.iter().map(row).collect();
            let document: Vec<Value> = instances.iter().map(document).collect();
            output::rows(
                out,
                &["ID", "ADDR", "STATE", "METADATA", "LEASE"],
                &rows,
                &Value::Array(document),
            );
        }
        Command::Watch { service } => {
            let mut members = client.watch_service(&service).await?;
            loop {
                let membership = tokio::select! {
                    () = crate::interrupted() => break,
                    next = members.next() => match next {
                        Some(membership) => membership?,
                        None => break,
                    },
                };
                if out == Format::Json {
                    let changes: Vec<Value> = membership.changes.iter().map(change_document).collect();
                    println!("{}", json!({"revision": membership.revision, "changes": changes}));
                    continue;
                }
                for change in &membership.changes {
                    match change {
                        MembershipChange::Added(i) => println!("ADDED {}", row(i).join(" ")),
                        MembershipChange::Updated(i) => println!("UPDATED {}", row(i).join(" ")),
                        MembershipChange::Removed { id } => println!("REMOVED {id}"),
                    }
                }
            }
        }
        Command::Deregister { service, id } => {
            if !client.deregister(&service, &id).await? {
                bail!("{SERVICES_PREFIX}{service}/{id} is not registered");
            }
            if out == Format::Simple {
                println!("deregistered {SERVICES_PREFIX}{service}/{id}");
            }
        }
        Command::Drain { service, id } => {
            if !client.drain(&service, &id).await? {
                bail!("{SERVICES_PREFIX}{service}/{id} is not registered");
            }
            if out == Format::Simple {
                println!("draining {SERVICES_PREFIX}{service}/{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(instance: &Instance) -> Vec<String> {
    vec![
        instance.id.clone(),
        instance.endpoint.addr.clone(),
        if instance.endpoint.draining {
            "draining"
        } else {
            "up"
        }
        .to_string(),
        instance
            .endpoint
            .metadata
            .as_ref()
            .map_or_else(|| "null".to_string(), Value::to_string),
        format!("{:x}", instance.lease),
    ]
}

fn document(instance: &Instance) -> Value {
    json!({
        "id": instance.id,
        "addr": instance.endpoint.addr,
        "draining": instance.endpoint.draining,
        "metadata": instance.endpoint.metadata,
        "lease": instance.lease,
        "revision": instance.revision,
    })
}

fn change_document(change: &MembershipChange) -> Value {
    match change {
        MembershipChange::Added(i) => json!({"type": "ADDED", "instance": document(i)}),
        MembershipChange::Updated(i) => json!({"type": "UPDATED", "instance": document(i)}),
        MembershipChange::Removed { id } => json!({"type": "REMOVED", "id": id}),
    }
}

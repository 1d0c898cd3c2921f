//! `concordctl config ...`: put (the value from stdin), get, history, rollback, watch, status
//! and schema.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use concord_client::proto::concord::config::v1::Version;
use concord_client::{Client, ConfigWrite};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Writes a new version of NS/KEY; the value is read from stdin.
    Put {
        /// The namespace.
        ns: String,
        /// The key.
        key: String,
        /// json, yaml, toml or text (default: the key's current format, text for a new key).
        #[arg(long)]
        format: Option<String>,
        /// Write only if the key is at this version (0: only if it has none yet).
        #[arg(long)]
        if_version: Option<u64>,
        /// Why, for the history.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Prints a version's value (the latest by default).
    Get {
        /// The namespace.
        ns: String,
        /// The key.
        key: String,
        /// The version.
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// Lists the kept versions of NS/KEY.
    History {
        /// The namespace.
        ns: String,
        /// The key.
        key: String,
    },
    /// Writes VERSION's value again, as a new version.
    Rollback {
        /// The namespace.
        ns: String,
        /// The key.
        key: String,
        /// The version to restore.
        version: u64,
        /// Why (default: "rollback to version N").
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Prints every new version of NS (or of NS/KEY) until interrupted.
    Watch {
        /// The namespace.
        ns: String,
        /// The key (default: every key of the namespace).
        key: Option<String>,
        /// Start with the versions written at this revision or later.
        #[arg(long, default_value_t = 0)]
        from: i64,
    },
    /// Shows the latest version and what each client runs, or rejected.
    Status {
        /// The namespace.
        ns: String,
        /// The key.
        key: String,
    },
    /// Prints NS's JSON Schema, or with FILE sets it ("-": stdin).
    Schema {
        /// The namespace.
        ns: String,
        /// A JSON Schema document to set.
        file: Option<PathBuf>,
        /// Removes the schema.
        #[arg(long, conflicts_with = "file")]
        remove: bool,
    },
}

pub async fn run(client: &Client, out: Format, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Put {
            ns,
            key,
            format,
            if_version,
            comment,
        } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the value from stdin")?;
            let write = ConfigWrite {
                format: format.unwrap_or_default(),
                if_version,
                comment,
            };
            let version = client.put_config_text(&ns, &key, &value, write).await?;
            output::one(
                out,
                &format!("{ns}/{key} version {version}"),
                &["NAMESPACE", "KEY", "VERSION"],
                vec![ns.clone(), key.clone(), version.to_string()],
                &json!({"namespace": ns, "key": key, "version": version}),
            );
        }
        Command::Get { ns, key, version } => {
            let found = client.config_version(&ns, &key, version).await?;
            match out {
                Format::Simple => print!("{}", with_newline(&found.value)),
                _ => output::rows(out, &HISTORY, &[history_row(&found)], &document(&found)),
            }
        }
        Command::History { ns, key } => {
            let versions = client.config_history(&ns, &key).await?;
            let rows: Vec<Vec<String>> = versions.iter().map(history_row).collect();
            let documents: Vec<Value> = versions.iter().map(document).collect();
            output::rows(out, &HISTORY, &rows, &Value::Array(documents));
        }
        Command::Rollback {
            ns,
            key,
            version,
            comment,
        } => {
            let written = client.config_rollback(&ns, &key, version, &comment).await?;
            output::one(
                out,
                &format!(
                    "{ns}/{key} version {} (rollback to version {version})",
                    written.version
                ),
                &HISTORY,
                history_row(&written),
                &document(&written),
            );
        }
        Command::Watch { ns, key, from } => {
            let mut versions = client.watch_config(&ns, key.as_deref(), from).await?;
            loop {
                let version = tokio::select! {
                    () = crate::interrupted() => break,
                    next = versions.next() => match next {
                        Some(version) => version?,
                        None => break,
                    },
                };
                match out {
                    Format::Json => println!("{}", document(&version)),
                    _ => println!(
                        "{}/{} version {}\n{}",
                        version.namespace,
                        version.key,
                        version.version,
                        with_newline(&version.value).trim_end()
                    ),
                }
            }
        }
        Command::Status { ns, key } => {
            let status = client.config_status(&ns, &key).await?;
            let rows: Vec<Vec<String>> = status
                .clients
                .iter()
                .map(|c| {
                    let state = if c.applied { "applied" } else { "rejected" };
                    vec![
                        c.client.clone(),
                        c.version.to_string(),
                        state.to_string(),
                        c.error.clone(),
                    ]
                })
                .collect();
            let clients: Vec<Value> = status
                .clients
                .iter()
                .map(|c| json!({"client": c.client, "version": c.version, "applied": c.applied, "error": c.error}))
                .collect();
            let document = json!({"namespace": ns, "key": key, "latest": status.latest, "clients": clients});
            match out {
                Format::Simple => {
                    println!("{ns}/{key} latest version {}", status.latest);
                    for row in &rows {
                        println!("{}", row.join(" ").trim_end());
                    }
                }
                _ => output::rows(out, &["CLIENT", "VERSION", "STATE", "ERROR"], &rows, &document),
            }
        }
        Command::Schema { ns, file, remove } => {
            if remove {
                client.set_config_schema(&ns, None).await?;
                println!("removed the schema of {ns}");
            } else if let Some(file) = file {
                let schema = if file.as_os_str() == "-" {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text
                } else {
                    std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
                };
                client.set_config_schema(&ns, Some(&schema)).await?;
                println!("set the schema of {ns}");
            } else {
                match client.config_schema(&ns).await? {
                    Some(schema) => println!("{schema}"),
                    None => eprintln!("{ns} has no schema"),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

const HISTORY: [&str; 6] = ["VERSION", "REVISION", "TIME", "AUTHOR", "FORMAT", "COMMENT"];

fn history_row(version: &Version) -> Vec<String> {
    vec![
        version.version.to_string(),
        version.revision.to_string(),
        time(version.time_ms),
        version.author.clone(),
        version.format.clone(),
        version.comment.clone(),
    ]
}

fn document(version: &Version) -> Value {
    json!({
        "namespace": version.namespace,
        "key": version.key,
        "version": version.version,
        "revision": version.revision,
        "format": version.format,
        "value": version.value,
        "author": version.author,
        "comment": version.comment,
        "time_ms": version.time_ms,
        "rollback_of": version.rollback_of,
    })
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn with_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_in_utc() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_796_256_000_000), "2026-12-03T00:00:00Z");
        assert_eq!(super::time(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
    }
}

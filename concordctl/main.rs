//! `concordctl`: the command line for what etcdctl lacks — Concord's service registry, config
//! center and pub/sub — plus `lock` and `elect` over etcd's Lock and Election services.
//!
//! Flags as etcdctl's: `--endpoints` (default `127.0.0.1:2379`), `-w simple|json|table`,
//! `--user name:password` (or `--user name --password pw`), `--cacert`, `--cert`, `--key` for
//! `https://` endpoints.
//! Errors go to stderr with a non-zero exit.

mod config;
mod lock;
mod output;
mod pubsub;
mod registry;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use concord_client::{Client, ClientOptions, Credentials};

use crate::output::Format;

/// Concord's command line: registry, config center, pub/sub, locks and elections.
#[derive(Debug, Parser)]
#[command(name = "concordctl", version)]
struct Cli {
    /// Comma-separated endpoints (host:port or URL).
    #[arg(long, global = true, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Output format: simple, json or table.
    #[arg(short = 'w', long = "write-out", global = true, default_value = "simple")]
    write_out: Format,
    /// How long connecting to an endpoint may take.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime_secs)]
    dial_timeout: Duration,
    /// How long one request may take.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime_secs)]
    command_timeout: Duration,
    /// The user to authenticate as: `name:password`, or `name` with `--password`.
    #[arg(long, global = true)]
    user: Option<String>,
    /// The password of `--user` (when the user name has none after a colon).
    #[arg(long, global = true)]
    password: Option<String>,
    /// CA certificates (PEM) that sign the servers' certificates (for `https://` endpoints).
    #[arg(long, global = true)]
    cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for servers that require one.
    #[arg(long = "cert", id = "client_cert", global = true, requires = "client_key")]
    cert: Option<std::path::PathBuf>,
    /// The key (PEM) of `--cert`.
    #[arg(long = "key", id = "client_key", global = true, requires = "client_cert")]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The service registry.
    #[command(subcommand)]
    Registry(registry::Command),
    /// The config center.
    #[command(subcommand)]
    Config(config::Command),
    /// Publishes MESSAGE on TOPIC.
    Pub(pubsub::Pub),
    /// Prints TOPIC's messages as they are published.
    Sub(pubsub::Sub),
    /// Acquires lock NAME; runs COMMAND while holding it, or holds it until interrupted.
    Lock(lock::Lock),
    /// Campaigns in election NAME with VALUE until interrupted, or without VALUE prints its
    /// leaders.
    Elect(lock::Elect),
}

/// A duration as `5s`, `500ms`, `1m` or plain seconds.
fn humantime_secs(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(value)),
        "ms" => Ok(Duration::from_millis(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("invalid duration {text:?} (use e.g. 5s, 500ms, 1m)")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let options = ClientOptions {
        connect_timeout: cli.dial_timeout,
        request_timeout: cli.command_timeout,
        credentials: credentials(cli.user.as_deref(), cli.password.as_deref())?,
        tls: tls(&cli)?,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&cli.endpoints, options).await?;
    let out = cli.write_out;
    match cli.command {
        Command::Registry(command) => registry::run(&client, out, command).await,
        Command::Config(command) => config::run(&client, out, command).await,
        Command::Pub(command) => pubsub::publish(&client, out, command).await,
        Command::Sub(command) => pubsub::subscribe(&client, out, command).await,
        Command::Lock(command) => lock::lock(&client, out, command).await,
        Command::Elect(command) => lock::elect(&client, out, command).await,
    }
}

/// The credentials `--user` and `--password` give, as etcdctl reads them.
fn credentials(user: Option<&str>, password: Option<&str>) -> anyhow::Result<Option<Credentials>> {
    match (user, password) {
        (None, None) => Ok(None),
        (None, Some(_)) => anyhow::bail!("--password needs --user"),
        (Some(user), Some(password)) => Ok(Some(Credentials::new(user, password))),
        (Some(user), None) => match user.split_once(':') {
            Some((name, password)) => Ok(Some(Credentials::new(name, password))),
            None => anyhow::bail!("--user {user:?} has no password: use --user name:password or --password"),
        },
    }
}

/// The TLS `--cacert`, `--cert` and `--key` set up; `https://` endpoints need at least
/// `--cacert` (or a server certificate the system trusts).
fn tls(cli: &Cli) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use anyhow::Context;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let https = cli.endpoints.iter().any(|e| e.starts_with("https://"));
    if !https && cli.cacert.is_none() && cli.cert.is_none() {
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new();
    config = match &cli.cacert {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_enabled_roots(),
    };
    if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(config))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// clap's own consistency checks over every subcommand (a global flag named like a
    /// subcommand's argument, say), which it otherwise makes only when that command is used.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A subcommand argument named like a global flag (`key`, `--key`) parses as itself.
    #[test]
    fn subcommand_arguments_do_not_clash_with_global_flags() {
        let cli = Cli::try_parse_from([
            "concordctl",
            "--key",
            "k.pem",
            "--cert",
            "c.pem",
            "config",
            "get",
            "ns",
            "web",
        ])
        .unwrap();
        assert_eq!(cli.key, Some(std::path::PathBuf::from("k.pem")));
        assert!(matches!(cli.command, Command::Config(_)));
    }

    #[test]
    fn user_and_password_are_read_as_etcdctl_reads_them() {
        let both = credentials(Some("alice:pw:with:colons"), None).unwrap().unwrap();
        assert_eq!(
            (both.user.as_str(), both.password.as_str()),
            ("alice", "pw:with:colons")
        );
        let split = credentials(Some("alice"), Some("pw")).unwrap().unwrap();
        assert_eq!(split.password, "pw");
        assert!(credentials(Some("alice"), None).is_err());
        assert!(credentials(None, Some("pw")).is_err());
        assert_eq!(credentials(None, None).unwrap(), None);
    }
}

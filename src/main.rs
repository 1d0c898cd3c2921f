//! The `concord` binary: parses etcd's flags and runs the server until SIGINT or SIGTERM;
//! `concord snapshot restore|status` works on backup files instead.

use anyhow::Context;
use clap::Parser;
use concord::config::{Config, Flags};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `concord snapshot restore|status` works offline on backup files.
    let mut args = std::env::args();
    if std::env::args().nth(1).as_deref() == Some("snapshot") {
        let program = args.next().unwrap_or_default();
        let rest = args.skip(1);
        let printed = concord::backup::cli::run(std::iter::once(format!("{program} snapshot")).chain(rest))?;
        println!("{printed}");
        return Ok(());
    }
    let flags = Flags::parse();
    // Concord's own logs at --log-level; dependencies (openraft is chatty) only warnings.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // openraft warns on every failed heartbeat (every 50-100 ms while a peer is down);
        // the replication warnings say the same with backoff.
        EnvFilter::new(format!(
            "warn,openraft::core::heartbeat=error,concord={}",
            flags.log_level
        ))
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if flags.log_format == "json" {
        // One JSON object per line, for log shippers (etcd's --log-format json).
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    concord::crash::exit_on_panic();
    let config = Config::from_flags(flags)?;
    let listeners = concord::server::bind_client_listeners(&config)
        .await
        .context("cannot listen for clients")?;
    concord::server::run(config, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

//! Server configuration in two stages: [`Flags`] mirror etcd's command line, [`Config`] is the
//! validated result the server is built from. The library never reads argv itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::Error;

/// etcd's default for `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default for `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// Command-line flags, named and defaulted as etcd's.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "concord",
    version,
    about = "A distributed coordination service that speaks etcd's v3 API"
)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory.
    #[arg(long, default_value = "./default.concord")]
    pub data_dir: PathBuf,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// This member's client URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: `name=peerURL,...`.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster state: `new` or `existing`.
    #[arg(long, default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token, which makes member and cluster IDs unique per cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = DEFAULT_MAX_TXN_OPS)]
    pub max_txn_ops: usize,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Log entries kept after a snapshot for slow followers to catch up from; one further
    /// behind gets the snapshot instead (etcd 3.5's flag; etcd keeps 5000, Concord 1000).
    #[arg(long, default_value_t = 1000)]
    pub experimental_snapshot_catchup_entries: u64,
    /// Bytes of written Raft log entries kept in memory; older ones, until a snapshot purges
    /// them, are read back from the WAL when a lagging follower needs them (Concord's own).
    #[arg(long, default_value_t = crate::raft::log_store::DEFAULT_CACHE_BYTES)]
    pub log_cache_bytes: u64,
    /// Interval of periodic progress notifications to watchers that ask for them (e.g. `10m`,
    /// `5s`, `500ms`).
    #[arg(long, default_value = "10m")]
    pub experimental_watch_progress_notify_interval: String,
    /// How many versions of each config-center key are kept (Concord's own flag).
    #[arg(long, default_value_t = concord_recipes::config::DEFAULT_KEEP)]
    pub config_history_limit: u64,
    /// Auth token type: `simple` (tokens good on the member that issued them), or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256|ES256|EdDSA|HS256|...,ttl=5m` (signed
    /// tokens good on every member).
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Time (in seconds) a simple token lives without being used.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt's cost for hashing passwords (4 to 31).
    #[arg(long, default_value_t = crate::auth::password::DEFAULT_COST)]
    pub bcrypt_cost: u32,
    /// Path to the client server TLS certificate (PEM).
    #[arg(long, default_value = "")]
    pub cert_file: String,
    /// Path to the client server TLS key (PEM).
    #[arg(long, default_value = "")]
    pub key_file: String,
    /// Path to the client server TLS trusted CA certificates (PEM), for client certificates.
    #[arg(long, default_value = "")]
    pub trusted_ca_file: String,
    /// Require client certificates signed by --trusted-ca-file; with auth on, a request
    /// without a token acts as the certificate's common name.
    #[arg(long, default_value_t = false)]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS certificate (PEM), also this member's client certificate
    /// towards its peers.
    #[arg(long, default_value = "")]
    pub peer_cert_file: String,
    /// Path to the peer server TLS key (PEM).
    #[arg(long, default_value = "")]
    pub peer_key_file: String,
    /// Path to the peer TLS trusted CA certificates (PEM).
    #[arg(long, default_value = "")]
    pub peer_trusted_ca_file: String,
    /// Require peer client certificates signed by --peer-trusted-ca-file.
    #[arg(long, default_value_t = false)]
    pub peer_client_cert_auth: bool,
    /// Raise the NOSPACE alarm (and refuse writes that add data) when the database would grow
    /// past this many bytes; 0 is the default (2 GiB), a negative value means no quota.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// Auto-compaction mode: `periodic` (keep a period of history) or `revision` (keep a
    /// number of revisions).
    #[arg(long, default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// What auto-compaction keeps: a duration (`1h`, `30m`; a bare number is hours) in
    /// periodic mode, a number of revisions in revision mode; 0 turns it off.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Check, before serving clients, that this member's data agrees with the other members'.
    #[arg(long, default_value_t = false)]
    pub experimental_initial_corrupt_check: bool,
    /// How often the leader compares every member's data (e.g. `5m`); 0 turns it off.
    #[arg(long, default_value = "0")]
    pub experimental_corrupt_check_time: String,
    /// URLs to serve `/metrics` and the health endpoints on, besides the client URLs
    /// (comma-separated; `http://` only).
    #[arg(long, default_value = "")]
    pub listen_metrics_urls: String,
    /// Log format: `text` (the default) or `json` (one object per line).
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Log level: debug, info, warn, error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Whether this member starts a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a cluster that already exists (after `member add`).
    Existing,
}

/// One member named in `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// The member's name.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This member's name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Addresses to serve clients on.
    pub client_addrs: Vec<SocketAddr>,
    /// For each of `client_addrs`, whether its URL is `https://`.
    pub client_https: Vec<bool>,
    /// TLS of the client listeners, if any is `https://`.
    pub client_tls: Option<crate::net::tls::TlsFiles>,
    /// Client URLs advertised to the cluster.
    pub advertise_client_urls: Vec<String>,
    /// Addresses to serve peers on.
    pub peer_addrs: Vec<SocketAddr>,
    /// For each of `peer_addrs`, whether its URL is `https://`.
    pub peer_https: Vec<bool>,
    /// TLS between members (their listeners, and this member's calls to them).
    pub peer_tls: Option<crate::net::tls::TlsFiles>,
    /// Peer URLs advertised to the cluster.
    pub advertise_peer_urls: Vec<String>,
    /// The bootstrap membership.
    pub initial_cluster: Vec<InitialMember>,
    /// New or existing cluster.
    pub initial_cluster_state: ClusterState,
    /// Cluster token.
    pub initial_cluster_token: String,
    /// Largest accepted request, in bytes.
    pub max_request_bytes: usize,
    /// Most operations in one txn.
    pub max_txn_ops: usize,
    /// Raft heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Raft election timeout.
    pub election_timeout: Duration,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Log entries kept after a snapshot for slow followers.
    pub snapshot_catchup_entries: u64,
    /// Bytes of written Raft log entries kept in memory.
    pub log_cache_bytes: u64,
    /// Interval of progress notifications for watchers that asked for them.
    pub watch_progress_notify_interval: Duration,
    /// Versions kept per config-center key.
    pub config_history_limit: u64,
    /// Tokens and password hashing.
    pub auth: crate::auth::AuthOptions,
    /// `--quota-backend-bytes` as given (0: the default, negative: none).
    pub quota_backend_bytes: i64,
    /// Addresses to serve metrics and health on (`--listen-metrics-urls`).
    pub metrics_addrs: Vec<SocketAddr>,
    /// What auto-compaction keeps.
    pub auto_compaction: crate::compactor::AutoCompaction,
    /// Whether to check for corruption before serving.
    pub initial_corrupt_check: bool,
    /// How often the leader checks for corruption (`None`: never).
    pub corrupt_check_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are constants that always parse.
        Config::from_flags(Flags::parse_from(["concord"]))
            .unwrap_or_else(|err| unreachable!("etcd's default flags are valid: {err}"))
    }
}

impl Config {
    /// Validates flags into a configuration.
    pub fn from_flags(flags: Flags) -> Result<Self, Error> {
        let client_urls = split_urls(&flags.listen_client_urls);
        let peer_urls = split_urls(&flags.listen_peer_urls);
        let initial_cluster = parse_initial_cluster(&flags.initial_cluster)?;
        let initial_cluster_state = match flags.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(Error::Config(format!(
                    "unexpected --initial-cluster-state {other:?} (expected \"new\" or \"existing\")"
                )));
            }
        };
        let advertise_peer_urls = split_urls(&flags.initial_advertise_peer_urls);
        // A data directory that already holds a member (or one restored from a backup) ignores
        // the bootstrap flags, as etcd's does once it has a WAL.
        let has_member = flags.data_dir.join("member").join("identity.json").exists();
        if initial_cluster_state == ClusterState::New && !has_member {
            let me = initial_cluster
                .iter()
                .find(|m| m.name == flags.name)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "couldn't find local name {:?} in the initial cluster configuration",
                        flags.name
                    ))
                })?;
            let mut mine = me.peer_urls.clone();
            let mut advertised = advertise_peer_urls.clone();
            mine.sort();
            advertised.sort();
            if mine != advertised {
                return Err(Error::Config(format!(
                    "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                    me.name,
                    me.peer_urls.join(","),
                    advertise_peer_urls.join(",")
                )));
            }
        }
        if flags.heartbeat_interval == 0 || flags.election_timeout < 5 * flags.heartbeat_interval {
            return Err(Error::Config(format!(
                "--election-timeout[{}ms] should be at least 5 times as --heartbeat-interval[{}ms]",
                flags.election_timeout, flags.heartbeat_interval
            )));
        }
        if flags.config_history_limit == 0 {
            return Err(Error::Config("--config-history-limit must be positive".into()));
        }
        let token = crate::auth::TokenKind::parse(&flags.auth_token).map_err(Error::Config)?;
        if flags.auth_token_ttl == 0 {
            return Err(Error::Config("--auth-token-ttl must be positive".into()));
        }
        if !(4..=31).contains(&flags.bcrypt_cost) {
            return Err(Error::Config(format!(
                "--bcrypt-cost {} is out of range (4 to 31)",
                flags.bcrypt_cost
            )));
        }
        if flags.max_txn_ops == 0 || flags.max_request_bytes == 0 {
            return Err(Error::Config(
                "--max-txn-ops and --max-request-bytes must be positive".into(),
            ));
        }
        let client_tls = crate::net::tls::TlsFiles::from_flags(
            &flags.cert_file,
            &flags.key_file,
            &flags.trusted_ca_file,
            flags.client_cert_auth,
            "",
        )?;
        let peer_tls = crate::net::tls::TlsFiles::from_flags(
            &flags.peer_cert_file,
            &flags.peer_key_file,
            &flags.peer_trusted_ca_file,
            flags.peer_client_cert_auth,
            "peer-",
        )?;
        let (client_addrs, client_https): (Vec<_>, Vec<_>) = resolve_all(&client_urls)?.into_iter().unzip();
        let (peer_addrs, peer_https): (Vec<_>, Vec<_>) = resolve_all(&peer_urls)?.into_iter().unzip();
        let metrics_urls = split_urls(&flags.listen_metrics_urls);
        let (metrics_addrs, metrics_https): (Vec<_>, Vec<_>) = if metrics_urls.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            resolve_all(&metrics_urls)?.into_iter().unzip()
        };
        if metrics_https.contains(&true) {
            return Err(Error::Config(
                "--listen-metrics-urls takes http:// URLs only".into(),
            ));
        }
        let auto_compaction = crate::compactor::AutoCompaction::parse(
            &flags.auto_compaction_mode,
            &flags.auto_compaction_retention,
        )
        .map_err(Error::Config)?;
        if !["text", "json"].contains(&flags.log_format.as_str()) {
            return Err(Error::Config(format!(
                "unknown --log-format {:?} (expected \"text\" or \"json\")",
                flags.log_format
            )));
        }
        if client_https.contains(&true) && client_tls.is_none() {
            return Err(Error::Config(
                "TLS key/cert (--cert-file, --key-file) must be provided for an https:// client URL".into(),
            ));
        }
        let peer_urls_named = advertise_peer_urls
            .iter()
            .chain(initial_cluster.iter().flat_map(|m| &m.peer_urls));
        let any_https_peer =
            peer_https.contains(&true) || peer_urls_named.clone().any(|u| u.starts_with("https://"));
        if any_https_peer && peer_tls.is_none() {
            return Err(Error::Config(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for https:// peer URLs"
                    .into(),
            ));
        }
        Ok(Config {
            name: flags.name,
            data_dir: flags.data_dir,
            client_addrs,
            client_https,
            client_tls,
            advertise_client_urls: split_urls(&flags.advertise_client_urls),
            peer_addrs,
            peer_https,
            peer_tls,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token: flags.initial_cluster_token,
            max_request_bytes: flags.max_request_bytes,
            max_txn_ops: flags.max_txn_ops,
            heartbeat_interval: Duration::from_millis(flags.heartbeat_interval),
            election_timeout: Duration::from_millis(flags.election_timeout),
            snapshot_count: flags.snapshot_count.max(1),
            snapshot_catchup_entries: flags.experimental_snapshot_catchup_entries,
            log_cache_bytes: flags.log_cache_bytes,
            watch_progress_notify_interval: parse_duration(
                &flags.experimental_watch_progress_notify_interval,
            )?,
            config_history_limit: flags.config_history_limit,
            auth: crate::auth::AuthOptions {
                token,
                token_ttl: Duration::from_secs(flags.auth_token_ttl),
                bcrypt_cost: flags.bcrypt_cost,
            },
            quota_backend_bytes: flags.quota_backend_bytes,
            metrics_addrs,
            auto_compaction,
            initial_corrupt_check: flags.experimental_initial_corrupt_check,
            corrupt_check_interval: match flags.experimental_corrupt_check_time.trim() {
                "" | "0" | "0s" => None,
                period => Some(parse_duration(period)?),
            },
        })
    }
}

/// Parses a Go-style duration as etcd's flags take them: `10m`, `1m30s`, `1.5s`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let invalid = || Error::Config(format!("invalid duration {text:?} (use e.g. 10m, 5s, 250ms)"));
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let value: f64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(invalid()),
        };
        total += Duration::from_secs_f64(value * seconds);
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(invalid());
    }
    Ok(total)
}

fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `name=url,name=url` (a name may appear several times for several URLs).
fn parse_initial_cluster(spec: &str) -> Result<Vec<InitialMember>, Error> {
    let mut members: Vec<InitialMember> = Vec::new();
    for part in split_urls(spec) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("--initial-cluster: {part:?} is not name=URL")))?;
        url_host_port(url)?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    if members.is_empty() {
        return Err(Error::Config("--initial-cluster is empty".into()));
    }
    Ok(members)
}

/// `http://host:port` → `(host, port)`; only plain http and https URLs are accepted.
fn url_host_port(url: &str) -> Result<(&str, u16), Error> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| Error::Config(format!("URL {url:?} must start with http:// or https://")))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| Error::Config(format!("URL {url:?} has no port")))?;
    let port = port
        .parse()
        .map_err(|_| Error::Config(format!("URL {url:?} has an invalid port")))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// The address each of `urls` listens on, and whether it is `https://` (the first URL of an
/// address decides).
fn resolve_all(urls: &[String]) -> Result<Vec<(SocketAddr, bool)>, Error> {
    use std::net::ToSocketAddrs;
    let mut addrs = Vec::new();
    for url in urls {
        let (host, port) = url_host_port(url)?;
        let resolved = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("cannot resolve {url:?}: {e}")))?;
        // `localhost` resolves to both 127.0.0.1 and ::1; etcd listens on the first.
        let first = resolved
            .into_iter()
            .next()
            .ok_or_else(|| Error::Config(format!("{url:?} resolves to no address")))?;
        if !addrs.iter().any(|(addr, _)| *addr == first) {
            addrs.push((first, url.starts_with("https://")));
        }
    }
    if addrs.is_empty() {
        return Err(Error::Config("no listen URL given".into()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::parse_from(std::iter::once("concord").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_etcd() {
        let config = Config::default();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("./default.concord"));
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.initial_cluster_token, "etcd-cluster");
        assert_eq!(
            config.initial_cluster[0].peer_urls,
            vec!["http://localhost:2380".to_string()]
        );
        assert_eq!(config.client_addrs[0].port(), 2379);
    }

    #[test]
    fn rejects_bad_flags() {
        let bad = [
            vec!["--initial-cluster-state", "maybe"],
            vec!["--initial-cluster", "x"],
            vec!["--name", "other"],
            vec!["--listen-client-urls", "localhost:2379"],
            vec!["--heartbeat-interval", "500", "--election-timeout", "1000"],
        ];
        for args in bad {
            assert!(
                Config::from_flags(flags(&args)).is_err(),
                "{args:?} should be rejected"
            );
        }
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "5", "5x", "0s", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_initial_cluster() {
        let members =
            parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].peer_urls.len(), 2);
    }
}

//! Boots an N-member cluster of real `concord` processes on 127.0.0.1 and drives its members
//! one by one: find the leader, kill or restart a member, run `etcdctl` or a client against it.

use std::net::TcpListener;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use serde_json::Value;

use crate::harness::Server;

/// Raft heartbeat for test clusters, in milliseconds (etcd's default is 100).
pub const HEARTBEAT_MS: u64 = 50;
/// Raft election timeout for test clusters, in milliseconds: short so failover is quick, and at
/// least 5 heartbeats as the config demands.
pub const ELECTION_MS: u64 = 500;

/// Per-request timeout of the clients [`Cluster::client`] makes.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Tells clusters of concurrently running tests apart (see `--initial-cluster-token`).
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// One member's fixed identity and its process.
struct Member {
    name: String,
    /// `http://127.0.0.1:PORT` of the client listener (listened on and advertised).
    client_url: String,
    /// `http://127.0.0.1:PORT` of the peer listener (listened on and advertised).
    peer_url: String,
    server: Server,
    /// False between `kill9`/`terminate` and `restart`.
    up: bool,
}

/// What `etcdctl endpoint status` says about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    /// The answering member's ID.
    pub member_id: u64,
    /// The cluster ID it belongs to.
    pub cluster_id: u64,
    /// The member ID it believes leads (0: none).
    pub leader: u64,
    /// Its Raft term.
    pub raft_term: u64,
}

/// N `concord` members named `m0..m{N-1}`, each with its own data directory, client port and
/// peer port. Dropping the cluster kills every process (each [`Server`] kills its own).
pub struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    /// Bootstraps an `n`-member cluster with data directories `dir/m0..`. Every port is chosen
    /// before any member starts, since `--initial-cluster` names every peer URL. All members
    /// are spawned at once (none can elect a leader alone); this returns when each listens
    /// for clients, not when a leader is elected: see [`Cluster::wait_for_leader`].
    pub fn start(dir: &Path, n: usize) -> Cluster {
        assert!(n > 0, "a cluster needs a member");
        let ports = free_ports(2 * n);
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let client_urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", ports[2 * i]))
            .collect();
        let peer_urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_urls)
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "concord-e2e-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let spawned: Vec<_> = (0..n)
            .map(|i| {
                let args = [
                    "--name",
                    &names[i],
                    "--listen-client-urls",
                    &client_urls[i],
                    "--advertise-client-urls",
                    &client_urls[i],
                    "--listen-peer-urls",
                    &peer_urls[i],
                    "--initial-advertise-peer-urls",
                    &peer_urls[i],
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                    "--heartbeat-interval",
                    &HEARTBEAT_MS.to_string(),
                    "--election-timeout",
                    &ELECTION_MS.to_string(),
                    "--log-level",
                    "info",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Server::spawn(dir.join(&names[i]), args, false)
            })
            .collect();
        // If one member fails to come up, the panic drops the rest, which kills them.
        let mut members = Vec::with_capacity(n);
        for (i, spawned) in spawned.into_iter().enumerate() {
            let server = spawned.listening();
            let expected = client_urls[i].trim_start_matches("http://");
            assert_eq!(
                server.endpoint, expected,
                "m{i} listens for clients elsewhere than --listen-client-urls"
            );
            members.push(Member {
                name: names[i].clone(),
                client_url: client_urls[i].clone(),
                peer_url: peer_urls[i].clone(),
                server,
                up: true,
            });
        }
        Cluster { members }
    }

    /// Number of members, live or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Indexes of the members currently running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.members[i].up).collect()
    }

    /// Member `i`'s process. Panics if it was killed and not restarted.
    pub fn member(&self, i: usize) -> &Server {
        let member = &self.members[i];
        assert!(member.up, "{} is down", member.name);
        &member.server
    }

    /// Member `i`'s name (`m{i}`).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Member `i`'s client URL, `http://127.0.0.1:PORT` (stable across restarts).
    pub fn client_url(&self, i: usize) -> &str {
        &self.members[i].client_url
    }

    /// Member `i`'s peer URL, `http://127.0.0.1:PORT` (stable across restarts).
    pub fn peer_url(&self, i: usize) -> &str {
        &self.members[i].peer_url
    }

    /// Client URLs of the live members.
    pub fn endpoints(&self) -> Vec<String> {
        self.live()
            .into_iter()
            .map(|i| self.members[i].client_url.clone())
            .collect()
    }

    /// The last lines every member logged, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let state = if m.up { "up" } else { "down" };
                format!("--- {} ({state}) ---\n{}", m.name, m.server.log_tail())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// An `etcd-client` connected to member `i` only, with [`CLIENT_TIMEOUT`] per request.
    pub async fn client(&self, i: usize) -> Client {
        self.client_with_timeout(i, CLIENT_TIMEOUT).await
    }

    /// An `etcd-client` connected to member `i` only, with `timeout` per request.
    pub async fn client_with_timeout(&self, i: usize, timeout: Duration) -> Client {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(timeout);
        Client::connect([self.members[i].client_url.as_str()], Some(options))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.members[i].name))
    }

    /// Runs `etcdctl` against member `i`, asserts success and returns its stdout.
    pub fn ctl_on(&self, i: usize, args: &[&str]) -> String {
        self.member(i).ctl(args)
    }

    /// What member `i` reports through `etcdctl endpoint status -w json`, or `None` if it did
    /// not answer within a second.
    pub fn status(&self, i: usize) -> Option<MemberStatus> {
        let out = self
            .member(i)
            .etcdctl(&["--command-timeout=1s", "endpoint", "status", "-w", "json"]);
        if !out.status.success() {
            return None;
        }
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        let status = &json.get(0)?["Status"];
        // Go's JSON leaves zero fields out (`omitempty`): a missing leader is no leader.
        let number = |v: &Value| v.as_u64().unwrap_or(0);
        Some(MemberStatus {
            member_id: number(&status["header"]["member_id"]),
            cluster_id: number(&status["header"]["cluster_id"]),
            leader: number(&status["leader"]),
            raft_term: number(&status["raftTerm"]),
        })
    }

    /// Polls every live member until all answer and agree on one leader that is itself a live
    /// member; returns that member's index. Panics with what each member said (and their logs)
    /// if that does not happen within `timeout`.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let live = self.live();
        assert!(!live.is_empty(), "no member is running");
        loop {
            let statuses: Vec<(usize, Option<MemberStatus>)> =
                live.iter().map(|&i| (i, self.status(i))).collect();
            if let Some(leader) = agreed_leader(&statuses) {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "members {live:?} did not agree on a live leader within {timeout:?}; they said \
                 {statuses:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill9(&mut self, i: usize) {
        let member = &mut self.members[i];
        member.server.kill9();
        member.up = false;
    }

    /// SIGTERMs member `i` and waits for it to exit.
    #[allow(
        dead_code,
        reason = "harness API; no cluster test stops a member gracefully yet"
    )]
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        let member = &mut self.members[i];
        let status = member.server.terminate();
        member.up = false;
        status
    }

    /// Starts member `i` again with the same data directory, ports and flags (killing it first
    /// if it still runs); returns once it listens for clients.
    pub fn restart(&mut self, i: usize) {
        let member = &mut self.members[i];
        member.server.restart();
        member.up = true;
    }

    /// Whether member `i`'s process is still running (false after a crash, too).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].up && self.members[i].server.is_running()
    }
}

/// The index of the member every status names as leader, when all answered and agree.
fn agreed_leader(statuses: &[(usize, Option<MemberStatus>)]) -> Option<usize> {
    let mut leader = None;
    for (_, status) in statuses {
        let status = (*status)?;
        if status.leader == 0 || leader.is_some_and(|l| l != status.leader) {
            return None;
        }
        leader = Some(status.leader);
    }
    let leader = leader?;
    statuses
        .iter()
        .find(|(_, s)| s.is_some_and(|s| s.member_id == leader))
        .map(|(i, _)| *i)
}

/// `count` distinct free TCP ports on 127.0.0.1. Each is bound (all at once, so they differ)
/// and released; another process may grab one before the member binds it, a race accepted here.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

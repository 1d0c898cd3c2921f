//! Boots an N-member cluster of real `concord` processes on 127.0.0.1 and drives its members
//! one by one: find the leader, kill or restart a member, run `etcdctl` or a client against it,
//! add members (`etcdctl member add`, then a process started with
//! `--initial-cluster-state existing`) and remove them. What the tests read and wait for
//! across members is in [`super::checks`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use serde_json::Value;

use crate::harness::{Server, Spawned};

mod membership;

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
    /// `None` for a member announced with `member add` but not started yet.
    server: Option<Server>,
    /// False before the first start and between `kill9`/`terminate` and `restart`.
    up: bool,
    /// Set by [`Cluster::remove_member`]: no longer a member, whether or not it still runs.
    removed: bool,
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
    /// Index of the last entry in its Raft log.
    pub raft_index: u64,
    /// Index of the last entry it applied.
    pub raft_applied_index: u64,
}

/// What `etcdctl member add -w json` said about a member it added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The new member's ID (as the cluster derived it from its peer URLs and token).
    pub id: u64,
    /// The `--initial-cluster` etcdctl tells the new member to start with: `name=peerURL`
    /// for every member, built from the response as etcdctl builds `ETCD_INITIAL_CLUSTER`.
    pub initial_cluster: String,
}

/// N `concord` members named `m0..m{N-1}`, each with its own data directory, client port and
/// peer port; members added later are named on (`m{N}`, ...). Dropping the cluster kills every
/// process (each [`Server`] kills its own).
pub struct Cluster {
    members: Vec<Member>,
    /// Parent of every member's data directory.
    dir: PathBuf,
    /// `--initial-cluster-token` of every member.
    token: String,
    /// Flags every member gets after the harness's own (see [`Cluster::start_with`]).
    extra_args: Vec<String>,
    /// Flags every etcdctl call gets (e.g. `--user=root:pw` once auth is on).
    ctl_args: Vec<String>,
    /// Environment variables every member gets (see [`Cluster::start_with_env`]).
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Bootstraps an `n`-member cluster with data directories `dir/m0..`. Every port is chosen
    /// before any member starts, since `--initial-cluster` names every peer URL. All members
    /// are spawned at once (none can elect a leader alone); this returns when each listens
    /// for clients, not when a leader is elected: see [`Cluster::wait_for_leader`].
    pub fn start(dir: &Path, n: usize) -> Cluster {
        Cluster::start_with(dir, n, &[])
    }

    /// [`Cluster::start`], with `extra_args` (e.g. `["--snapshot-count", "500"]`) appended to
    /// every member's flags, members added later included.
    pub fn start_with(dir: &Path, n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_prepared(dir, n, extra_args, |_| {})
    }

    /// [`Cluster::start_with`], with environment variables `env` (a test-only fault file, say)
    /// for every member, restarts included; `{name}` in a value stands for the member's name.
    pub fn start_with_env(dir: &Path, n: usize, extra_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster::start_prepared(dir, n, extra_args, |cluster| {
            cluster.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        })
    }

    /// [`Cluster::start`] of members whose data directories are first made by
    /// `concord snapshot restore FILE` (etcdutl's workflow: one restore per member, each with
    /// its own name and peer URL and the same `--initial-cluster` and token).
    pub fn start_restored(dir: &Path, n: usize, backup: &Path) -> Cluster {
        Cluster::start_prepared(dir, n, &[], |cluster| {
            let initial_cluster = cluster.initial_cluster();
            for member in &cluster.members {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
                    .arg("snapshot")
                    .arg("restore")
                    .arg(backup)
                    .args([
                        "--data-dir",
                        &cluster.dir.join(&member.name).display().to_string(),
                    ])
                    .args(["--name", &member.name])
                    .args(["--initial-cluster", &initial_cluster])
                    .args(["--initial-cluster-token", &cluster.token])
                    .args(["--initial-advertise-peer-urls", &member.peer_url])
                    .output()
                    .expect("run concord snapshot restore");
                assert!(
                    out.status.success(),
                    "restore for {}: {}",
                    member.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// [`Cluster::start_with`], running `prepare` once ports and names are chosen, before any
    /// member starts.
    fn start_prepared(
        dir: &Path,
        n: usize,
        extra_args: &[&str],
        prepare: impl FnOnce(&mut Cluster),
    ) -> Cluster {
        assert!(n > 0, "a cluster needs a member");
        let ports = free_ports(2 * n);
        let token = format!(
            "concord-e2e-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = Cluster {
            members: (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                    peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                    server: None,
                    up: false,
                    removed: false,
                })
                .collect(),
            dir: dir.to_path_buf(),
            token,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            ctl_args: Vec::new(),
            env: Vec::new(),
        };
        prepare(&mut cluster);
        let initial_cluster = cluster.initial_cluster();
        let spawned: Vec<_> = (0..n)
            .map(|i| cluster.spawn(i, &initial_cluster, "new"))
            .collect();
        // If one member fails to come up, the panic drops the rest, which kills them.
        for (i, spawned) in spawned.into_iter().enumerate() {
            cluster.listening(i, spawned);
        }
        cluster
    }

    /// Spawns member `i`'s process (first start) with the harness's flags.
    fn spawn(&self, i: usize, initial_cluster: &str, state: &str) -> Spawned {
        let member = &self.members[i];
        let mut args: Vec<String> = [
            "--name",
            &member.name,
            "--listen-client-urls",
            &member.client_url,
            "--advertise-client-urls",
            &member.client_url,
            "--listen-peer-urls",
            &member.peer_url,
            "--initial-advertise-peer-urls",
            &member.peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            &self.token,
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
        args.extend(self.extra_args.iter().cloned());
        let env = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{name}", &member.name)))
            .collect();
        Server::spawn_with_env(self.dir.join(&member.name), args, env, false)
    }

    /// Waits for member `i`'s freshly spawned process to listen and records it as up.
    fn listening(&mut self, i: usize, spawned: Spawned) {
        let server = spawned.listening();
        let member = &mut self.members[i];
        let expected = member.client_url.trim_start_matches("http://");
        assert_eq!(
            server.endpoint, expected,
            "{} listens for clients elsewhere than --listen-client-urls",
            member.name
        );
        member.server = Some(server);
        member.up = true;
    }

    /// Number of members, live or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Indexes of the members currently running and not removed from the cluster.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.members[i].up && !self.members[i].removed)
            .collect()
    }

    /// Member `i`'s process. Panics if it was killed and not restarted, or never started.
    pub fn member(&self, i: usize) -> &Server {
        let member = &self.members[i];
        assert!(member.up, "{} is down", member.name);
        member.server.as_ref().expect("a member that is up has a process")
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

    /// The last lines every member logged, for failure messages, each member's tail preceded by
    /// where it panicked, if it did (with `RUST_BACKTRACE` set the tail may be all backtrace).
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let state = match (&m.server, m.up, m.removed) {
                    (None, _, _) => "not started",
                    (Some(_), true, false) => "up",
                    (Some(_), false, false) => "down",
                    (Some(_), true, true) => "removed, running",
                    (Some(_), false, true) => "removed, down",
                };
                let tail = m.server.as_ref().map(Server::log_tail).unwrap_or_default();
                let panics: String = m
                    .server
                    .as_ref()
                    .map(|s| s.log_lines_containing("panicked at"))
                    .unwrap_or_default()
                    .iter()
                    .map(|line| format!("{line}\n"))
                    .collect();
                format!("--- {} ({state}) ---\n{panics}{tail}", m.name)
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
        let mut args = args.to_vec();
        args.extend(self.ctl_args.iter().map(String::as_str));
        self.member(i).ctl(&args)
    }

    /// Adds `args` to every later etcdctl call of the harness (e.g. `--user=root:pw`).
    pub fn set_ctl_args(&mut self, args: &[&str]) {
        self.ctl_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// What member `i` reports through `etcdctl endpoint status -w json`, or `None` if it did
    /// not answer within a second.
    pub fn status(&self, i: usize) -> Option<MemberStatus> {
        let mut args = vec!["--command-timeout=1s", "endpoint", "status", "-w", "json"];
        args.extend(self.ctl_args.iter().map(String::as_str));
        let out = self.member(i).etcdctl(&args);
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
            raft_index: number(&status["raftIndex"]),
            raft_applied_index: number(&status["raftAppliedIndex"]),
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

    /// Sends member `i` `kill -SIGNAL` (`STOP` pauses it as a long GC pause or a frozen VM
    /// would, `CONT` resumes it).
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.member(i).pid().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILLs member `i`.
    pub fn kill9(&mut self, i: usize) {
        let member = &mut self.members[i];
        member.server.as_mut().expect("member was started").kill9();
        member.up = false;
    }

    /// SIGTERMs member `i` and waits for it to exit.
    #[allow(
        dead_code,
        reason = "harness API; no cluster test stops a member gracefully yet"
    )]
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        let member = &mut self.members[i];
        let status = member.server.as_mut().expect("member was started").terminate();
        member.up = false;
        status
    }

    /// Starts member `i` again with the same data directory, ports and flags (killing it first
    /// if it still runs); returns once it listens for clients.
    pub fn restart(&mut self, i: usize) {
        let member = &mut self.members[i];
        member.server.as_mut().expect("member was started").restart();
        member.up = true;
    }

    /// [`Cluster::restart`] of a member that may crash before it listens (armed to crash at a
    /// point it reaches while starting): `Err` says how it ended, and it counts as up but not
    /// running until restarted again.
    pub fn try_restart(&mut self, i: usize) -> Result<(), String> {
        let member = &mut self.members[i];
        member.up = true;
        member.server.as_mut().expect("member was started").try_restart()
    }

    /// Whether member `i`'s process is still running (false after a crash, too).
    pub fn is_running(&mut self, i: usize) -> bool {
        let member = &mut self.members[i];
        member.up && member.server.as_mut().is_some_and(Server::is_running)
    }

    /// The lines member `i` logged since it was last (re)started that contain `needle`.
    pub fn log_lines_containing(&self, i: usize, needle: &str) -> Vec<String> {
        self.members[i]
            .server
            .as_ref()
            .map(|server| server.log_lines_containing(needle))
            .unwrap_or_default()
    }

    /// A live member other than those in `except`, to send cluster-wide requests through.
    pub fn via(&self, except: &[usize]) -> usize {
        *self
            .live()
            .iter()
            .find(|i| !except.contains(i))
            .unwrap_or_else(|| panic!("no live member besides {except:?}\n{}", self.logs()))
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
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A tiny xorshift generator, for the tests' random choices without a `rand` dependency.
pub struct XorShift(pub u64);

impl XorShift {
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

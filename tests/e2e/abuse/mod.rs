//! Hardening (issue 11): no request, peer message or connection may brick, wedge or exhaust a
//! member. Each test sends the real binary one of the inputs that once did, checks the answer
//! etcd gives (or that memory stays bounded), and then checks that the member still serves
//! and restarts cleanly with its data intact.
//!
//! - [`nested_txn`]: txns nested past 32 levels, and etcd's op budget across levels.
//! - [`flood`]: HTTP/2 CONTINUATION floods and huge frames on the client and peer ports.
//! - [`lease_ttl`]: extreme lease TTLs.
//! - [`panic_exit`]: a panic in apply ends the process, and a restart applies the entry.
//! - [`election`]: Campaign without a lease.
//! - [`shutdown`]: SIGTERM with a watch stream open.
//! - [`peer`]: strangers, malformed snapshots and cut-off transfers on the peer port.
//! - [`backlog`]: connection storms on the client port.
//! - [`errors`]: oversized and gzip requests, negative watch revisions, member add without
//!   quorum, a taken listen address.

mod backlog;
mod election;
mod errors;
mod flood;
mod lease_ttl;
mod nested_txn;
mod panic_exit;
mod peer;
mod shutdown;

use std::time::Duration;

use concord_proto::raftpb::raft_peer_client::RaftPeerClient;
use concord_proto::raftpb::{Command, command, forward_response};
use etcd_client::{Client, GetOptions};

use crate::client_kv::connect;
use crate::harness::Server;

/// How long a bounded wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// The gRPC status inside a client error (any other error fails the test).
pub fn status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// The store's current revision.
pub async fn revision(c: &mut Client) -> i64 {
    c.get("any", None).await.unwrap().header().unwrap().revision()
}

/// Every `(key, value)` under `prefix`, in key order.
pub async fn pairs_under(c: &mut Client, prefix: &str) -> Vec<(String, String)> {
    c.get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Stops `server` cleanly (SIGTERM, exit status 0) and starts it again, then kills it with
/// SIGKILL and starts it again; after each start, the keys under `prefix` must be exactly
/// `expected` and a new write must be accepted and read back.
pub async fn assert_restarts_intact(server: &mut Server, prefix: &str, expected: &[(String, String)]) {
    let stopped = server.terminate();
    assert!(stopped.success(), "SIGTERM ended the member with {stopped}");
    server.restart();
    assert_intact(server, prefix, expected, "a clean stop").await;
    server.kill9();
    server.restart();
    assert_intact(server, prefix, expected, "kill -9").await;
}

/// The keys under `prefix` are exactly `expected`, and a new write is accepted and read back.
async fn assert_intact(server: &Server, prefix: &str, expected: &[(String, String)], after: &str) {
    let mut c = connect(server).await;
    assert_eq!(
        pairs_under(&mut c, prefix).await,
        expected,
        "keys under {prefix:?} after {after} and a restart\n{}",
        server.log_tail()
    );
    let key = format!("after-restart/{}", after.replace(' ', "-"));
    c.put(key.as_str(), "written", None)
        .await
        .unwrap_or_else(|e| panic!("put after {after} and a restart: {e}"));
    let got = c.get(key.as_str(), None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"written");
}

/// The peer listener's `127.0.0.1:PORT`, as the member logged it.
pub fn peer_addr(server: &Server) -> String {
    let lines = server.log_lines_containing("serving peer requests");
    let line = lines.first().expect("the member logs its peer address");
    let addr = line.split("addr=").nth(1).expect("the line names addr=");
    addr.split_whitespace().next().unwrap().to_string()
}

/// What a follower would send a lone member on its peer port. The calls claim the ID of a
/// learner announced with `etcdctl member add --learner` and never started, as a real
/// follower's calls carry its own ID and the cluster's (a member refuses peer calls from
/// strangers, but anyone who reaches the port can claim a member's ID).
pub struct StandIn {
    peer: RaftPeerClient<tonic::transport::Channel>,
    member: String,
    cluster: String,
}

impl StandIn {
    /// Announces the learner through `server` and connects to its peer port.
    pub async fn join(server: &Server) -> StandIn {
        let added = server.ctl(&[
            "member",
            "add",
            "stand-in",
            "--peer-urls=http://127.0.0.1:1",
            "--learner",
            "-w",
            "json",
        ]);
        let added: serde_json::Value = serde_json::from_str(added.trim()).unwrap();
        let member = added["member"]["ID"].as_u64().expect("the learner's ID");
        let cluster = added["header"]["cluster_id"].as_u64().expect("the cluster ID");
        let url = format!("http://{}", peer_addr(server));
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to the peer port: {e}"));
        StandIn {
            peer: RaftPeerClient::new(channel),
            member: format!("{member:x}"),
            cluster: format!("{cluster:x}"),
        }
    }

    /// Sends `request` to the member's `Forward` RPC, as a follower forwards its client's
    /// write to the leader: the error the member answered with (empty if it applied the
    /// command), or the status of a call that failed as a whole.
    pub async fn forward(&mut self, request: command::Request) -> Result<String, tonic::Status> {
        let mut call = tonic::Request::new(Command {
            request: Some(request),
            auth_revision: 0,
        });
        let metadata = call.metadata_mut();
        metadata.insert("concord-member-id", self.member.parse().unwrap());
        metadata.insert("concord-cluster-id", self.cluster.parse().unwrap());
        // A refusal's message is etcd's text; anything applied (or rejected by the store when
        // applied) answers "".
        self.peer
            .forward(call)
            .await
            .map(|r| match r.into_inner().outcome {
                Some(forward_response::Outcome::Failed(failed)) => failed.message,
                _ => String::new(),
            })
    }
}

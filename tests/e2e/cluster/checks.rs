//! What the cluster tests read and wait for across members: a member's keys under a prefix,
//! its member list, and every member listing exactly the expected voters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use serde_json::Value;

use super::harness::Cluster;

/// `(value, mod_revision)` of every key under `prefix`, read from one member.
pub async fn read_prefix(
    client: &mut Client,
    prefix: &str,
    options: GetOptions,
) -> BTreeMap<String, (String, i64)> {
    let resp = client
        .get(prefix, Some(options.with_prefix()))
        .await
        .unwrap_or_else(|e| panic!("get prefix {prefix:?}: {e}"));
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect()
}

/// `etcdctl member list -w json` on member `i`, parsed.
pub fn member_list(cluster: &Cluster, i: usize) -> Value {
    let listed = cluster.ctl_on(i, &["member", "list", "-w", "json"]);
    serde_json::from_str(listed.trim())
        .unwrap_or_else(|e| panic!("member list on {} is not JSON ({e}): {listed}", cluster.name(i)))
}

/// What is wrong with member `asked`'s member list, if anything, when it should list exactly
/// the members `expected` (indexes), each a started voter with its name, peer and client URLs.
fn voters_problem(cluster: &Cluster, asked: usize, expected: &[usize]) -> Option<String> {
    let json = member_list(cluster, asked);
    let Some(members) = json["members"].as_array() else {
        return Some(format!("no members array: {json}"));
    };
    if members.len() != expected.len() {
        return Some(format!(
            "{} members listed, not {}: {json}",
            members.len(),
            expected.len()
        ));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    for &i in expected {
        let name = cluster.name(i);
        let Some(member) = members
            .iter()
            .find(|m| strings(&m["peerURLs"]) == [cluster.peer_url(i)])
        else {
            return Some(format!("{name} ({}) is not listed: {json}", cluster.peer_url(i)));
        };
        if member["name"] != name {
            return Some(format!("{name} is listed with name {}: {json}", member["name"]));
        }
        if strings(&member["clientURLs"]) != [cluster.client_url(i)] {
            return Some(format!(
                "{name} is listed with client URLs {}: {json}",
                member["clientURLs"]
            ));
        }
        // Go leaves `isLearner: false` out.
        if member["isLearner"].as_bool().unwrap_or(false) {
            return Some(format!("{name} is still a learner: {json}"));
        }
    }
    None
}

/// Polls every member in `expected` until each one's member list is exactly `expected`, all
/// started voters (see [`voters_problem`]); panics after `timeout`.
pub async fn await_voters(cluster: &Cluster, expected: &[usize], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for &asked in expected {
        while let Some(problem) = voters_problem(cluster, asked, expected) {
            assert!(
                Instant::now() < deadline,
                "member list on {} after {timeout:?}: {problem}\n{}",
                cluster.name(asked),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

//! Membership changes on a running cluster, driven through `etcdctl member ...`: a learner that
//! joins, catches up and is promoted; removals; etcd's errors for bad changes; a member that
//! fell so far behind that it catches up through a snapshot; and etcdctl's tables.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use super::checks::{await_voters, member_list};
use super::harness::Cluster;

/// How long a fresh cluster may take to agree on a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(10);

/// `key -> value` of every key under `prefix` on one member, read serializably (from the
/// member's own state), or the error.
async fn serializable_prefix(
    client: &mut Client,
    prefix: &str,
) -> Result<BTreeMap<String, String>, etcd_client::Error> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix().with_serializable()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect())
}

/// Polls a serializable get of `key` on member `i` until it returns `value`; panics with what
/// it last saw (and the logs) after `timeout`.
async fn await_value(cluster: &Cluster, i: usize, key: &str, value: &str, timeout: Duration) {
    let mut client = cluster.client(i).await;
    let deadline = Instant::now() + timeout;
    loop {
        let seen = client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await
            .map(|resp| resp.kvs().first().map(|kv| kv.value_str().unwrap().to_string()));
        if matches!(&seen, Ok(Some(v)) if v == value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "serializable get {key} on {} still says {seen:?} after {timeout:?}, not {value:?}\n{}",
            cluster.name(i),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cells of one `etcdctl ... -w table` row (`| a | b |`), trimmed.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim();
    let inner = row
        .strip_prefix('|')
        .and_then(|r| r.strip_suffix('|'))
        .unwrap_or(row);
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// The header and rows of an `etcdctl -w table` output (border lines dropped).
fn table(output: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = output.lines().filter(|l| l.trim_start().starts_with('|'));
    let header = lines
        .next()
        .map(cells)
        .unwrap_or_else(|| panic!("no table in {output:?}"));
    (header, lines.map(cells).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_catches_up_and_is_promoted() {
    const KEYS: usize = 100;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    let mut client = cluster.client(leader).await;
    for k in 0..KEYS {
        client
            .put(format!("learner/{k:03}"), format!("v{k}"), None)
            .await
            .unwrap_or_else(|e| panic!("put learner/{k:03}: {e}\n{}", cluster.logs()));
    }

    // Announced but not started: listed without a name (etcdctl's "unstarted"), as a learner.
    let (new, added) = cluster.announce_member(true);
    let json = member_list(&cluster, leader);
    let listed = json["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["ID"].as_u64() == Some(added.id)))
        .unwrap_or_else(|| panic!("added member {:x} is not listed: {json}", added.id))
        .clone();
    assert_eq!(listed["name"].as_str().unwrap_or(""), "", "{listed}");
    assert_eq!(listed["isLearner"], true, "{listed}");
    assert!(
        added
            .initial_cluster
            .contains(&format!("m{new}={}", cluster.peer_url(new))),
        "initial cluster {:?} lacks the new member",
        added.initial_cluster
    );

    cluster.start_member(new, &added.initial_cluster);
    // The learner receives the log: all keys show up in its own state.
    let mut learner = cluster.client(new).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = serializable_prefix(&mut learner, "learner/").await;
        if let Ok(kvs) = &seen
            && kvs.len() == KEYS
        {
            for k in 0..KEYS {
                assert_eq!(kvs[&format!("learner/{k:03}")], format!("v{k}"));
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner sees {:?} keys after 15s\n{}",
            seen.map(|kvs| kvs.len()),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("learner caught up {:?} into the test", started.elapsed());

    // Promote it; the leader may not count it in sync at once.
    let id = format!("{:x}", added.id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let via = cluster.wait_for_leader(ELECTION_WAIT);
        let out = cluster.member(via).etcdctl(&["member", "promote", &id]);
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            stderr.contains("etcdserver: can only promote a learner member which is in sync with leader"),
            "member promote {id} failed: {stderr}\n{}",
            cluster.logs()
        );
        assert!(
            Instant::now() < deadline,
            "learner {id} still not in sync after 10s: {stderr}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    await_voters(&cluster, &[0, 1, 2, new], Duration::from_secs(10)).await;

    // The joined member belongs to the same cluster (members added later do not change the
    // cluster's ID, as with etcd).
    let cluster_ids: Vec<u64> = [0, 1, 2, new]
        .iter()
        .map(|&i| cluster.status(i).expect("status").cluster_id)
        .collect();
    assert!(
        cluster_ids.iter().all(|&c| c == cluster_ids[0]),
        "cluster IDs {cluster_ids:x?}"
    );

    // A voter cannot be promoted again.
    let stderr = cluster.member(new).ctl_err(&["member", "promote", &id]);
    assert!(
        stderr.contains("etcdserver: can only promote a learner member") && !stderr.contains("in sync"),
        "promoting a voter: {stderr}"
    );

    // Remove one of the original followers; the other three carry on.
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    let removed = (0..3).find(|&i| i != leader).unwrap();
    cluster.remove_member(removed);
    let remaining: Vec<usize> = (0..3).filter(|&i| i != removed).chain([new]).collect();
    await_voters(&cluster, &remaining, Duration::from_secs(10)).await;
    for &i in &remaining {
        let mut client = cluster.client(i).await;
        let key = format!("after-remove/via-{}", cluster.name(i));
        client.put(key.as_str(), "ok", None).await.unwrap_or_else(|e| {
            panic!(
                "put through {} after removing {}: {e}\n{}",
                cluster.name(i),
                cluster.name(removed),
                cluster.logs()
            )
        });
        await_value(&cluster, new, &key, "ok", Duration::from_secs(5)).await;
    }
    // A linearizable read on the promoted member sees them all too.
    let resp = learner
        .get("after-remove/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap_or_else(|e| panic!("linearizable get on {}: {e}", cluster.name(new)));
    assert_eq!(resp.kvs().len(), remaining.len());
    // Not asserted: etcd's removed member shuts itself down; either is fine here.
    let running = cluster.is_running(removed);
    println!(
        "{} still running after its removal: {running}",
        cluster.name(removed)
    );
    println!("done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_unknown_member_fails_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    let follower = (leader + 1) % 3;
    for i in [leader, follower] {
        let stderr = cluster.member(i).ctl_err(&["member", "remove", "1234"]);
        assert!(
            stderr.contains("etcdserver: member not found"),
            "member remove 1234 through {}: {stderr}",
            cluster.name(i)
        );
        let peer = format!("--peer-urls={}", cluster.peer_url((i + 2) % 3));
        let stderr = cluster.member(i).ctl_err(&["member", "add", "dup", &peer]);
        assert!(
            stderr.contains("etcdserver: Peer URLs already exists"),
            "member add with {}'s peer URL through {}: {stderr}",
            cluster.name((i + 2) % 3),
            cluster.name(i)
        );
    }
    // Neither changed anything.
    let json = member_list(&cluster, leader);
    assert_eq!(json["members"].as_array().map(Vec::len), Some(3), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_through_a_snapshot() {
    const KEYS: usize = 3000;
    /// Each put waits ~20 ms for its commit in a debug build; with 32 in flight the commits
    /// batch up and the cluster nears its throughput (~300 puts/s on 2 idle cores).
    const WRITERS: usize = 32;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(dir.path(), 3, &["--snapshot-count", "500"]);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    let lagging = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.kill9(lagging);

    // All keys but the last, by a few concurrent writers through both live members.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = cluster.client(if w % 2 == 0 { leader } else { other }).await;
        writers.push(tokio::spawn(async move {
            for k in (w..KEYS - 1).step_by(WRITERS) {
                client
                    .put(format!("lag/{k:05}"), format!("v{k}"), None)
                    .await
                    .map_err(|e| format!("put lag/{k:05}: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for writer in writers {
        if let Err(e) = writer.await.unwrap() {
            panic!("{e}\n{}", cluster.logs());
        }
    }
    let last_key = format!("lag/{:05}", KEYS - 1);
    let last_value = format!("v{}", KEYS - 1);
    cluster
        .client(leader)
        .await
        .put(last_key.as_str(), last_value.as_str(), None)
        .await
        .unwrap_or_else(|e| panic!("put {last_key}: {e}\n{}", cluster.logs()));
    println!("{KEYS} keys written in {:?}", started.elapsed());

    cluster.restart(lagging);
    let restarted = Instant::now();
    await_value(&cluster, lagging, &last_key, &last_value, Duration::from_secs(15)).await;
    println!("restarted member caught up in {:?}", restarted.elapsed());
    let mut client = cluster.client(lagging).await;
    let kvs = serializable_prefix(&mut client, "lag/")
        .await
        .unwrap_or_else(|e| panic!("serializable get on {}: {e}", cluster.name(lagging)));
    assert_eq!(kvs.len(), KEYS, "keys on the restarted member");
    assert!(
        (0..KEYS).all(|k| kvs[&format!("lag/{k:05}")] == format!("v{k}")),
        "a key on the restarted member has the wrong value"
    );

    // Its applied index comes within a few entries of the leader's (a member publishing its
    // URLs may add an entry in between).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (lead, lag) = (cluster.status(leader), cluster.status(lagging));
        if let (Some(lead), Some(lag)) = (lead, lag)
            && lag.raft_applied_index + 5 >= lead.raft_applied_index
            && lead.raft_applied_index as usize >= KEYS
        {
            println!(
                "applied index: leader {}, restarted member {}",
                lead.raft_applied_index, lag.raft_applied_index
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied indexes after 10s: leader {lead:?}, restarted member {lag:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let installed = cluster.log_lines_containing(lagging, "installed snapshot");
    assert!(
        !installed.is_empty(),
        "{} caught up without logging \"installed snapshot\"\n{}",
        cluster.name(lagging),
        cluster.logs()
    );
    println!("{}: {}", cluster.name(lagging), installed.join("\n"));
    println!("done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_and_endpoint_status_tables() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    let asked = (leader + 1) % 3;

    let expected_rows: Vec<Vec<String>> = (0..3)
        .map(|i| {
            vec![
                format!("{:x}", cluster.member_id(i)),
                "started".to_string(),
                cluster.name(i).to_string(),
                cluster.peer_url(i).to_string(),
                cluster.client_url(i).to_string(),
                "false".to_string(),
            ]
        })
        .collect();
    // Client URLs are published shortly after the start: poll until every row is complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = cluster.ctl_on(asked, &["member", "list", "-w", "table"]);
        let (_, rows) = table(&out);
        if rows.len() == 3 && expected_rows.iter().all(|want| rows.contains(want)) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "member list -w table on {} after 10s, expected rows {expected_rows:?}:\n{out}",
            cluster.name(asked)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{out}");
    let header_line = out.lines().find(|l| l.trim_start().starts_with('|')).unwrap();
    let (header, _) = table(&out);
    assert_eq!(
        header,
        ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"],
        "header row {header_line:?}"
    );
    // etcdctl pads every cell of a column to the same width.
    let widths: Vec<usize> = header_line.trim().split('|').map(str::len).collect();
    for line in out.lines().filter(|l| l.trim_start().starts_with('|')) {
        let row_widths: Vec<usize> = line.trim().split('|').map(str::len).collect();
        assert_eq!(
            row_widths, widths,
            "misaligned row {line:?} under {header_line:?}"
        );
    }

    // Every member by its bare address, as the harness passes endpoints.
    let bare: Vec<String> = (0..3)
        .map(|i| cluster.client_url(i).trim_start_matches("http://").to_string())
        .collect();
    let out = etcdctl(&[
        &format!("--endpoints={}", bare.join(",")),
        "endpoint",
        "status",
        "-w",
        "table",
    ]);
    assert!(out.status.success(), "endpoint status on {bare:?}: {out:?}");
    let out = String::from_utf8(out.stdout).unwrap();
    println!("{out}");
    check_status_table(&out, &bare, &bare[leader]);
}

/// Runs `etcdctl` with exactly `args` (no endpoint added).
fn etcdctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl runs")
}

/// Checks an `etcdctl endpoint status -w table`: one row per endpoint in `endpoints`, and
/// `leader`'s row alone says `true` under IS LEADER.
fn check_status_table(out: &str, endpoints: &[String], leader: &str) {
    let (header, rows) = table(out);
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
    };
    let (endpoint, is_leader) = (column("ENDPOINT"), column("IS LEADER"));
    assert_eq!(rows.len(), endpoints.len(), "{out}");
    for url in endpoints {
        assert!(
            rows.iter().any(|r| &r[endpoint] == url),
            "{url} is missing:\n{out}"
        );
    }
    assert!(
        rows.iter()
            .all(|r| ["true", "false"].contains(&r[is_leader].as_str())),
        "{out}"
    );
    let leaders: Vec<&Vec<String>> = rows.iter().filter(|r| r[is_leader] == "true").collect();
    assert_eq!(leaders.len(), 1, "IS LEADER column:\n{out}");
    assert_eq!(leaders[0][endpoint], leader, "{out}");
}

/// `endpoint status --cluster` finds every member through member list's client URLs and dials
/// each as `http://127.0.0.1:PORT`: etcdctl 3.4 then sends that as the HTTP/2 `:authority`,
/// which the `h2` crate refuses unless `crate::net`'s authority filter repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_cluster_dials_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(ELECTION_WAIT);
    let asked = (leader + 1) % 3;
    // `--cluster` finds every member through member list's client URLs, and dials each as
    // `http://127.0.0.1:PORT`.
    let out = cluster
        .member(asked)
        .etcdctl(&["endpoint", "status", "--cluster", "-w", "table"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("PROTOCOL_ERROR"),
        "endpoint status --cluster: the server reset etcdctl's Maintenance.Status stream \
         (etcdctl 3.4 dials `passthrough:///http://HOST:PORT`, so gRPC's :authority is \
         `http://HOST:PORT`, which the server's HTTP/2 layer rejects as malformed):\n{stderr}"
    );
    assert!(out.status.success(), "endpoint status --cluster: {out:?}");
    let out = String::from_utf8(out.stdout).unwrap();
    println!("{out}");
    let urls: Vec<String> = (0..3).map(|i| cluster.client_url(i).to_string()).collect();
    check_status_table(&out, &urls, &urls[leader]);
}

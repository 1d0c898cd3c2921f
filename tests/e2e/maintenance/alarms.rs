//! Quota and alarms end to end: a cluster filled past `--quota-backend-bytes` raises NOSPACE on
//! every member and refuses writes with etcd's error, serves reads and deletes, and after
//! compact + defrag + disarm takes writes again with nothing lost. Alarms raised and cleared
//! by a client, as etcd's are.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

use crate::cluster::harness::Cluster;
use crate::harness::{Server, wait_until};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// How long the members have to agree on an alarm.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_past_its_quota_refuses_writes_until_room_is_made_and_the_alarm_disarmed() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 8 * 1024 * 1024;
    let cluster = Cluster::start_with(dir.path(), 3, &["--quota-backend-bytes", &quota.to_string()]);
    cluster.wait_for_leader(Duration::from_secs(10));
    let mut client = cluster.client(1).await;

    // Overwrite a few keys with 64 KiB values until the quota refuses one.
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let mut refused = None;
    for i in 0..2_000 {
        let key = format!("fill/{}", i % 8);
        let value = format!("{i:06}").repeat(64 * 1024 / 6);
        match client.put(key.clone(), value.clone(), None).await {
            Ok(_) => {
                acknowledged.insert(key, value);
            }
            Err(err) => {
                refused = Some(err.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("the quota never refused a write");
    assert!(refused.contains(NO_SPACE), "{refused}");

    // Every member lists the alarm and refuses writes; reads and deletes work.
    for i in 0..3 {
        wait_until(&format!("member {i} lists NOSPACE"), WAIT, || {
            cluster.ctl_on(i, &["alarm", "list"]).contains("alarm:NOSPACE")
        });
        let out = cluster.member(i).etcdctl(&["put", "k", "v"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(NO_SPACE));
        assert!(cluster.ctl_on(i, &["get", "fill/0", "--print-value-only"]).len() > 1000);
    }
    let out = cluster.member(0).etcdctl(&["lease", "grant", "10"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(NO_SPACE),
        "lease grants add data"
    );
    cluster.ctl_on(0, &["del", "fill/7"]);
    acknowledged.remove("fill/7");

    // Compact, defragment every member, disarm: writes work again.
    let revision = client
        .get("fill/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    cluster.ctl_on(0, &["compact", &revision.to_string(), "--physical"]);
    let before: Vec<u64> = (0..3).map(|i| cluster.member(i).db_size()).collect();
    let endpoints = cluster.endpoints().join(",");
    cluster.ctl_on(0, &["defrag", &format!("--endpoints={endpoints}")]);
    for (i, before) in before.iter().enumerate() {
        let after = cluster.member(i).db_size();
        assert!(after < before / 2, "member {i}: {before} -> {after} bytes");
    }
    cluster.ctl_on(0, &["alarm", "disarm"]);
    for i in 0..3 {
        wait_until(&format!("member {i} clears NOSPACE"), WAIT, || {
            cluster.ctl_on(i, &["alarm", "list"]).trim().is_empty()
        });
    }
    client.put("after", "room", None).await.unwrap();
    for (key, value) in &acknowledged {
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].value_str().unwrap(), value, "{key}");
    }
    assert!(client.get("fill/7", None).await.unwrap().kvs().is_empty());

    // The alarm survives a restart of a member until disarmed: raise one by hand.
    let mut options = AlarmOptions::new();
    options.with_member(cluster.member_id(2));
    let raised = client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options))
        .await
        .unwrap();
    assert_eq!(raised.alarms().len(), 1);
    assert_eq!(raised.alarms()[0].member_id(), cluster.member_id(2));
    let err = client.put("k", "v", None).await.unwrap_err();
    assert!(err.to_string().contains(NO_SPACE), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_raised_alarms_refuse_writes_and_clear_as_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut client = etcd_client::Client::connect([server.url()], None).await.unwrap();
    client.put("k", "v", None).await.unwrap();
    let member = client.status().await.unwrap().header().unwrap().member_id();

    // CORRUPT refuses every write, deletes included; reads go on.
    let mut options = AlarmOptions::new();
    options.with_member(member);
    let raised = client
        .alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(options))
        .await
        .unwrap();
    assert_eq!(raised.alarms().len(), 1);
    assert_eq!(raised.alarms()[0].alarm(), AlarmType::Corrupt);
    for err in [
        client.put("k", "w", None).await.unwrap_err(),
        client.delete("k", None).await.unwrap_err(),
    ] {
        assert!(err.to_string().contains("etcdserver: corrupt cluster"), "{err}");
    }
    assert_eq!(client.get("k", None).await.unwrap().kvs()[0].value(), b"v");
    assert!(server.ctl(&["alarm", "list"]).contains("alarm:CORRUPT"));

    // Alarms are kept across a restart.
    server.restart();
    let mut client = etcd_client::Client::connect([server.url()], None).await.unwrap();
    let listed = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(listed.alarms().len(), 1);

    // Clearing answers with the alarm cleared; clearing it again answers nothing.
    let mut options = AlarmOptions::new();
    options.with_member(member);
    let cleared = client
        .alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(options))
        .await
        .unwrap();
    assert_eq!(cleared.alarms().len(), 1);
    let mut options = AlarmOptions::new();
    options.with_member(member);
    let again = client
        .alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(options))
        .await
        .unwrap();
    assert!(again.alarms().is_empty());
    client.put("k", "w", None).await.unwrap();
    assert!(server.ctl(&["alarm", "list"]).trim().is_empty());
}

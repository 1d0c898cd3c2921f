//! The peer port checks who calls it (issue 11, defects 4 and 6): a caller from another
//! cluster or one that is not a member is refused and logged, a malformed snapshot is refused
//! without stopping Raft, and a snapshot transfer cut off midway leaves no file behind (nor
//! does one left by a crash survive a restart).

use std::path::Path;
use std::time::{Duration, Instant};

use concord::raft::codec::{encode_entry, log_id};
use concord::raft::{Command, Entry, SnapshotMeta, StoredMembership, Vote};
use concord_proto::etcdserverpb::PutRequest;
use concord_proto::raftpb::raft_peer_client::RaftPeerClient;
use concord_proto::raftpb::{AppendEntriesMessage, JsonMessage, SnapshotChunk, command};
use etcd_client::GetOptions;
use openraft::impls::EntryPayload;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::cluster::harness::Cluster;
use crate::harness::wait_until;

/// How long a condition is polled for.
const WAIT: Duration = Duration::from_secs(10);

async fn peer_client(url: &str) -> RaftPeerClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    RaftPeerClient::new(channel).max_decoding_message_size(64 << 20)
}

/// `message` signed as member `member` of cluster `cluster` (either may be left out).
fn signed<T>(message: T, member: Option<u64>, cluster: Option<u64>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(member) = member {
        request
            .metadata_mut()
            .insert("concord-member-id", format!("{member:x}").parse().unwrap());
    }
    if let Some(cluster) = cluster {
        request
            .metadata_mut()
            .insert("concord-cluster-id", format!("{cluster:x}").parse().unwrap());
    }
    request
}

/// An AppendEntries of leader `leader` in `term` carrying a put of `key`.
fn forged_append(term: u64, leader: u64, key: &str) -> AppendEntriesMessage {
    let put = Command::from(command::Request::Put(PutRequest {
        key: key.into(),
        value: b"forged".to_vec(),
        ..Default::default()
    }));
    let entry = Entry {
        log_id: log_id(term, leader, 1),
        payload: EntryPayload::Normal(put),
    };
    AppendEntriesMessage {
        vote_json: serde_json::to_vec(&Vote::new_committed(term, leader)).unwrap(),
        prev_log_id_json: b"null".to_vec(),
        leader_commit_json: b"null".to_vec(),
        entries: vec![encode_entry(&entry).unwrap()],
    }
}

fn incoming_files(data_dir: &Path) -> Vec<String> {
    let snap = data_dir.join("member").join("snap");
    std::fs::read_dir(&snap)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".incoming"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_peer_port_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(WAIT);
    let before = cluster.status(leader).unwrap();
    let mut peer = peer_client(cluster.peer_url(leader)).await;
    let term = before.raft_term + 100;
    let stranger = 0xdead_beef;

    let unsigned = peer
        .append_entries(signed(forged_append(term, stranger, "forged"), None, None))
        .await
        .unwrap_err();
    assert_eq!(unsigned.code(), Code::Unauthenticated, "{unsigned:?}");

    let other_cluster = peer
        .append_entries(signed(
            forged_append(term, stranger, "forged"),
            Some(stranger),
            Some(before.cluster_id ^ 1),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        other_cluster.code(),
        Code::FailedPrecondition,
        "{other_cluster:?}"
    );
    assert!(
        other_cluster.message().contains("cluster ID mismatch"),
        "{other_cluster:?}"
    );

    let non_member = peer
        .append_entries(signed(
            forged_append(term, stranger, "forged"),
            Some(stranger),
            Some(before.cluster_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(non_member.code(), Code::PermissionDenied, "{non_member:?}");
    let vote = peer
        .vote(signed(
            JsonMessage {
                json: br#"{"vote":{"leader_id":{"term":999,"node_id":3735928559},"committed":false},"last_log_id":null}"#.to_vec(),
            },
            Some(stranger),
            Some(before.cluster_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(vote.code(), Code::PermissionDenied, "{vote:?}");

    // A member's ID on a message of another leader is refused too.
    let follower_id = cluster.status(cluster.via(&[leader])).unwrap().member_id;
    let impostor = peer
        .append_entries(signed(
            forged_append(term, stranger, "forged"),
            Some(follower_id),
            Some(before.cluster_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(impostor.code(), Code::PermissionDenied, "{impostor:?}");

    // Nothing changed: the same leader in the same term, and no forged key.
    let after = cluster.status(leader).unwrap();
    assert_eq!((after.leader, after.raft_term), (before.leader, before.raft_term));
    let mut client = cluster.client(leader).await;
    client.put("after", "ok", None).await.unwrap();
    let forged = client.get("forged", None).await.unwrap();
    assert_eq!(forged.count(), 0, "a forged entry was applied");
    assert!(
        !cluster
            .log_lines_containing(leader, "refused a peer call")
            .is_empty(),
        "refusals are logged"
    );
}

/// The first answer on a `StreamAppend` call: the error that ended the stream, if it ended.
async fn stream_append_error(
    peer: &mut RaftPeerClient<Channel>,
    messages: Vec<AppendEntriesMessage>,
    member: Option<u64>,
    cluster: Option<u64>,
) -> tonic::Status {
    let call = peer
        .stream_append(signed(tokio_stream::iter(messages), member, cluster))
        .await;
    match call {
        Err(status) => status,
        Ok(answers) => match answers.into_inner().message().await {
            Err(status) => status,
            Ok(answer) => panic!("the stream answered {answer:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_stream_refuses_strangers_impostors_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(WAIT);
    let follower = cluster.via(&[leader]);
    let before = cluster.status(follower).unwrap();
    let mut peer = peer_client(cluster.peer_url(follower)).await;
    let term = before.raft_term + 100;
    let stranger = 0xdead_beef;
    let forged = || vec![forged_append(term, stranger, "forged")];

    let unsigned = stream_append_error(&mut peer, forged(), None, None).await;
    assert_eq!(unsigned.code(), Code::Unauthenticated, "{unsigned:?}");
    let non_member = stream_append_error(&mut peer, forged(), Some(stranger), Some(before.cluster_id)).await;
    assert_eq!(non_member.code(), Code::PermissionDenied, "{non_member:?}");
    // The leader's ID on a message of another leader.
    let impostor =
        stream_append_error(&mut peer, forged(), Some(before.leader), Some(before.cluster_id)).await;
    assert_eq!(impostor.code(), Code::PermissionDenied, "{impostor:?}");
    assert!(
        impostor.message().contains("sent a message of leader"),
        "{impostor:?}"
    );
    let mut garbage = forged_append(term, before.leader, "forged");
    garbage.vote_json = b"not json".to_vec();
    let garbage = stream_append_error(
        &mut peer,
        vec![garbage],
        Some(before.leader),
        Some(before.cluster_id),
    )
    .await;
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    assert!(garbage.message().contains("bad vote"), "{garbage:?}");

    // Nothing changed, and the real leader's stream still replicates to this follower.
    let after = cluster.status(follower).unwrap();
    assert_eq!((after.leader, after.raft_term), (before.leader, before.raft_term));
    let mut client = cluster.client(leader).await;
    client.put("after", "ok", None).await.unwrap();
    let mut reader = cluster.client(follower).await;
    let applied = cluster.status(leader).unwrap().raft_applied_index;
    wait_until(
        "the follower applies a write made after the refusals",
        WAIT,
        || {
            cluster
                .status(follower)
                .is_some_and(|s| s.raft_applied_index >= applied)
        },
    );
    let got = reader
        .get("after", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(
        got.kvs().first().map(|kv| kv.value().to_vec()),
        Some(b"ok".to_vec())
    );
    assert_eq!(
        reader.get("forged", None).await.unwrap().count(),
        0,
        "a forged entry was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_snapshot_is_refused_and_raft_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(WAIT);
    let follower = cluster.via(&[leader]);
    let status = cluster.status(follower).unwrap();
    let mut peer = peer_client(cluster.peer_url(follower)).await;
    let leader_id = status.leader;

    // From the leader's ID, in the current term, ahead of everything: openraft would install it.
    let vote = Vote::new_committed(status.raft_term, leader_id);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(status.raft_term, leader_id, status.raft_index + 1000)),
        last_membership: StoredMembership::default(),
    };
    let chunks = vec![
        SnapshotChunk {
            vote_json: serde_json::to_vec(&vote).unwrap(),
            meta_json: serde_json::to_vec(&meta).unwrap(),
            data: b"this is not a redb file".repeat(1000),
        },
        SnapshotChunk {
            data: vec![0xff; 64 * 1024],
            ..Default::default()
        },
    ];
    let answer = peer
        .install_snapshot(signed(
            tokio_stream::iter(chunks),
            Some(leader_id),
            Some(status.cluster_id),
        ))
        .await
        .unwrap()
        .into_inner();
    let answer: Result<serde_json::Value, String> = serde_json::from_slice(&answer.json).unwrap();
    let refusal = answer.unwrap_err();
    assert!(refusal.contains("malformed snapshot"), "{refusal}");
    assert!(incoming_files(cluster.member(follower).data_dir()).is_empty());

    // Raft goes on: a write through the leader reaches the follower.
    let mut client = cluster.client(leader).await;
    client.put("after-snapshot", "applied", None).await.unwrap();
    let mut local = cluster.client(follower).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let got = local
            .get("after-snapshot", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        if got.count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the follower stopped applying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.is_running(follower));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_snapshot_transfer_leaves_no_file_and_leftovers_go_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_for_leader(WAIT);
    let follower = cluster.via(&[leader]);
    let status = cluster.status(follower).unwrap();
    let data_dir = cluster.member(follower).data_dir().to_path_buf();

    // A transfer that sends 4 MiB and then stops: the call is dropped mid-stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
    let vote = Vote::new_committed(status.raft_term, status.leader);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(status.raft_term, status.leader, status.raft_index + 1000)),
        last_membership: StoredMembership::default(),
    };
    tx.send(SnapshotChunk {
        vote_json: serde_json::to_vec(&vote).unwrap(),
        meta_json: serde_json::to_vec(&meta).unwrap(),
        data: Vec::new(),
    })
    .await
    .unwrap();
    let mut peer = peer_client(cluster.peer_url(follower)).await;
    let call = tokio::spawn(async move {
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        peer.install_snapshot(signed(stream, Some(status.leader), Some(status.cluster_id)))
            .await
    });
    for _ in 0..4 {
        tx.send(SnapshotChunk {
            data: vec![7; 1 << 20],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let data = data_dir.clone();
    wait_until("the transfer is being written", WAIT, || {
        !incoming_files(&data).is_empty()
    });
    call.abort();
    drop(tx);
    let data = data_dir.clone();
    wait_until("the cut-off transfer's file is removed", WAIT, || {
        incoming_files(&data).is_empty()
    });

    // A crash mid-transfer leaves a file behind: the next start removes it.
    cluster.kill9(follower);
    let leftover = data_dir.join("member").join("snap").join("1-2-3.incoming");
    std::fs::write(&leftover, vec![0u8; 1 << 20]).unwrap();
    cluster.restart(follower);
    assert!(
        !leftover.exists(),
        "a leftover incoming snapshot survived a restart"
    );
    let mut client = cluster.client(follower).await;
    client.put("after-restart", "ok", None).await.unwrap();
}

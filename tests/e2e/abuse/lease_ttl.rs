//! Extreme lease TTLs. A lease's expiry is its grant time plus its TTL; before TTLs were
//! clamped, `LeaseGrant` with a TTL of `i64::MAX` overflowed that sum inside apply: the panic
//! left a zombie member that answered nothing, and every restart replayed the entry and
//! panicked again. Now a TTL above etcd's maximum (9,000,000,000 s) is refused with etcd's
//! error before it is proposed, the maximum itself is granted, and a TTL below the minimum
//! (negative included) is raised to the minimum, as etcd does.
//!
//! The client edge already refused a TTL of `i64::MAX`; the way in was the peer port: a
//! follower's `Forward` went to Raft without any check, so anyone who could reach that port
//! could brick the member, or expire any lease. The leader now checks a forwarded command as
//! it checks a client's.

use concord_proto::etcdserverpb::LeaseGrantRequest;
use concord_proto::raftpb::command::Request;
use concord_proto::raftpb::{LeaseCheckpoint, LeaseCheckpoints, LeaseExpiry};
use etcd_client::{LeaseTimeToLiveOptions, PutOptions};

use super::{StandIn, assert_restarts_intact, status};
use crate::client_kv::connect;
use crate::harness::Server;

/// etcd's largest lease TTL, in seconds.
const MAX_TTL: i64 = 9_000_000_000;
/// etcd's smallest lease TTL with the default flags (heartbeat 100 ms, election 1000 ms):
/// 1.5 election timeouts, rounded up to whole seconds.
const MIN_TTL: i64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_lease_ttls_are_refused_or_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;

    for ttl in [i64::MAX, MAX_TTL + 1] {
        let err = status(c.lease_grant(ttl, None).await.unwrap_err());
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::OutOfRange, "etcdserver: too large lease TTL"),
            "TTL {ttl}"
        );
    }
    assert!(
        c.leases().await.unwrap().leases().is_empty(),
        "a refused grant left a lease"
    );

    let longest = c.lease_grant(MAX_TTL, None).await.unwrap();
    assert_eq!(longest.ttl(), MAX_TTL);
    let negative = c.lease_grant(-5, None).await.unwrap();
    for (id, granted) in [(longest.id(), MAX_TTL), (negative.id(), MIN_TTL)] {
        let ttl = c.lease_time_to_live(id, None).await.unwrap();
        assert_eq!(ttl.granted_ttl(), granted, "lease {id:x}");
        assert!((0..=granted).contains(&ttl.ttl()), "lease {id:x}: {ttl:?}");
    }

    // The member still serves, keys can live on the longest lease, and everything survives
    // restarts (each replays the grants from the log or the store).
    c.put(
        "ttl/long",
        "lived",
        Some(PutOptions::new().with_lease(longest.id())),
    )
    .await
    .unwrap();
    let expected = vec![("ttl/long".to_string(), "lived".to_string())];
    assert_restarts_intact(&mut server, "ttl/", &expected).await;
    let mut c = connect(&server).await;
    let ttl = c
        .lease_time_to_live(longest.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), MAX_TTL);
    assert_eq!(ttl.keys(), [b"ttl/long".to_vec()]);
}

/// Lease commands a follower could forward but the client edge would never let through are
/// refused by the member they reach: a grant past the maximum TTL, a checkpoint claiming more
/// than that, an expiry (only the leader's own clock expires leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_lease_commands_past_the_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("ttl/kept", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut peer = StandIn::join(&server).await;

    for ttl in [i64::MAX, MAX_TTL + 1] {
        let grant = Request::LeaseGrant(LeaseGrantRequest { ttl, id: 0x7777 });
        let answer = peer.forward(grant).await.expect("the Forward call");
        assert_eq!(answer, "etcdserver: too large lease TTL", "TTL {ttl}");
    }
    let checkpoint = Request::LeaseCheckpoints(LeaseCheckpoints {
        checkpoints: vec![LeaseCheckpoint {
            id: lease,
            remaining_ms: i64::MAX,
            generation: 1,
        }],
    });
    let expiry = Request::LeaseExpiry(LeaseExpiry { ids: vec![lease] });
    for (what, request) in [("checkpoint", checkpoint), ("expiry", expiry)] {
        let answer = peer.forward(request).await.expect("the Forward call");
        assert!(!answer.is_empty(), "a forwarded lease {what} was applied");
    }

    assert!(server.is_running(), "{}", server.log_tail());
    let leases: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(leases, [lease]);
    let expected = vec![("ttl/kept".to_string(), "v".to_string())];
    assert_restarts_intact(&mut server, "ttl/", &expected).await;
    let mut c = connect(&server).await;
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!((1..=60).contains(&ttl.ttl()), "{ttl:?}");
}

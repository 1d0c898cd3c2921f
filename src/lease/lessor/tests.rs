//! Unit tests of the lessor: apply, key tracking, the leader's clock and checkpoints.
use std::sync::Arc;

use concord_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
use redb::{Database, Durability};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    store: MvccStore,
    lessor: Lessor,
}

fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::create(dir.path().join("db.redb")).unwrap());
    let store = MvccStore::open(db).unwrap();
    let lessor = Lessor::open(&store).unwrap();
    Fixture {
        _dir: dir,
        store,
        lessor,
    }
}

fn put(key: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    }
}

impl Fixture {
    /// Runs `f` on a batch with the lease table, tracking the batch's events, and commits.
    fn apply<T>(&self, f: impl FnOnce(&mut LeaseState, &mut WriteBatch<'_>) -> T) -> (T, Vec<Event>) {
        let mut leases = self.lessor.lock();
        let mut batch = self.store.begin_write().unwrap();
        let from = batch.event_count();
        let out = f(&mut leases, &mut batch);
        let events: Vec<Event> = batch.events_since(from).cloned().collect();
        leases.track(&events);
        let committed = batch.commit(Durability::None).unwrap();
        (out, committed.events)
    }

    fn grant(&self, id: i64, ttl: i64) -> Result<(), MvccError> {
        self.apply(|l, b| l.grant(b.transaction(), id, ttl)).0
    }

    fn put(&self, key: &str, lease: i64) -> Result<(), MvccError> {
        self.apply(|l, b| b.put(&put(key, lease), &*l).map(|_| ())).0
    }

    fn keys(&self, id: i64) -> Vec<String> {
        self.lessor
            .time_to_live(id, true)
            .unwrap()
            .keys
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    }
}

#[test]
fn grant_rejects_taken_ids() {
    let f = open();
    f.grant(5, 10).unwrap();
    assert_eq!(f.grant(5, 20), Err(MvccError::LeaseExists));
    assert_eq!(f.lessor.time_to_live(5, false).unwrap().granted, 10);
    assert_eq!(f.lessor.ids(), [5]);
}

#[test]
fn puts_attach_move_and_detach_keys() {
    let f = open();
    f.grant(1, 10).unwrap();
    f.grant(2, 10).unwrap();
    assert_eq!(f.put("a", 9), Err(MvccError::LeaseNotFound));
    f.put("a", 1).unwrap();
    f.put("b", 1).unwrap();
    assert_eq!(f.keys(1), ["a", "b"]);
    f.put("a", 2).unwrap();
    assert_eq!(
        (f.keys(1), f.keys(2)),
        (vec!["b".to_string()], vec!["a".to_string()])
    );
    let keep = PutRequest {
        ignore_lease: true,
        ..put("a", 0)
    };
    f.apply(|l, b| b.put(&keep, &*l).unwrap());
    assert_eq!(f.keys(2), ["a"], "ignore_lease keeps the lease");
    f.put("a", 0).unwrap();
    assert!(f.keys(2).is_empty(), "a put without a lease detaches");
    f.apply(|_, b| {
        b.delete_range(&DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        })
        .unwrap()
    });
    assert!(f.keys(1).is_empty(), "a delete detaches");
}

#[test]
fn revoke_deletes_every_key_in_one_revision() {
    let f = open();
    f.grant(1, 10).unwrap();
    for key in ["x", "a", "m"] {
        f.put(key, 1).unwrap();
    }
    f.put("other", 0).unwrap();
    let before = f.store.current_revision();
    let (result, events) = f.apply(|l, b| l.revoke(b, 1));
    result.unwrap();
    let deleted: Vec<(String, i64)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (String::from_utf8(kv.key.to_vec()).unwrap(), kv.mod_revision)
        })
        .collect();
    let rev = before + 1;
    assert_eq!(deleted, [("a".into(), rev), ("m".into(), rev), ("x".into(), rev)]);
    assert!(events.iter().all(|e| e.r#type == EventType::Delete as i32));
    assert_eq!(f.store.current_revision(), rev);
    assert!(f.lessor.time_to_live(1, false).is_none());
    assert_eq!(f.apply(|l, b| l.revoke(b, 1)).0, Err(MvccError::LeaseNotFound));
}

#[test]
fn revoking_a_lease_without_keys_keeps_the_revision() {
    let f = open();
    f.grant(1, 10).unwrap();
    let before = f.store.current_revision();
    f.apply(|l, b| l.revoke(b, 1)).0.unwrap();
    assert_eq!(f.store.current_revision(), before);
}

#[test]
fn leases_and_keys_survive_reopening() {
    let f = open();
    f.grant(1, 30).unwrap();
    f.grant(2, 60).unwrap();
    f.put("k1", 1).unwrap();
    f.put("k2", 2).unwrap();
    f.apply(|l, b| {
        l.checkpoint(
            b.transaction(),
            &[LeaseCheckpoint {
                id: 2,
                remaining_ms: 12_500,
                generation: 0,
            }],
        )
        .unwrap()
    });
    let reopened = Lessor::open(&f.store).unwrap();
    assert_eq!(reopened.ids(), [1, 2]);
    let ttl = reopened.time_to_live(2, true).unwrap();
    assert_eq!((ttl.remaining, ttl.granted), (12, 60), "the checkpoint is kept");
    assert_eq!(ttl.keys, [b"k2".to_vec()]);
    assert_eq!(reopened.time_to_live(1, true).unwrap().keys, [b"k1".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn the_clock_runs_only_when_promoted() {
    let f = open();
    f.grant(1, 1).unwrap();
    assert!(f.lessor.take_expired(10).is_empty());
    f.lessor.promote(3);
    assert!(
        f.lessor.take_expired(10).is_empty(),
        "not before its second is up"
    );
    tokio::time::advance(Duration::from_millis(1_001)).await;
    assert_eq!(f.lessor.promoted_term(), Some(3));
    assert_eq!(
        f.lessor.renew(1),
        Renewal::NotFound,
        "an expired lease is not renewed"
    );
    assert_eq!(f.lessor.take_expired(10), [1]);
    assert!(
        f.lessor.take_expired(10).is_empty(),
        "a revocation under way is not proposed again"
    );
    f.lessor.demote();
    assert!(f.lessor.take_expired(10).is_empty());
}

fn checkpoint(f: &Fixture, cp: LeaseCheckpoint) {
    f.apply(|l, b| l.checkpoint(b.transaction(), &[cp]).unwrap());
}

#[test]
fn keepalive_asks_to_record_the_full_ttl_after_a_checkpoint() {
    let f = open();
    f.grant(1, 10).unwrap();
    f.lessor.promote(1);
    assert_eq!(
        f.lessor.renew(1),
        Renewal::Renewed {
            ttl: 10,
            record: None
        }
    );
    let four_seconds = LeaseCheckpoint {
        id: 1,
        remaining_ms: 4_000,
        generation: 1,
    };
    checkpoint(&f, four_seconds);
    let Renewal::Renewed {
        ttl: 10,
        record: Some(full),
    } = f.lessor.renew(1)
    else {
        panic!("the full TTL must be recorded");
    };
    assert_eq!((full.remaining_ms, full.generation), (10_000, 2));
    assert_eq!(f.lessor.renew(99), Renewal::NotFound);
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_from_before_a_keepalive_cannot_shorten_the_record() {
    let f = open();
    f.grant(1, 10).unwrap(); // slack 5 s
    f.lessor.promote(1);
    // 7 s in, the clock checkpoints the 3 s left (generation 0); before that is applied, a
    // keepalive records the full TTL (generation 1), and its record is applied first.
    tokio::time::advance(Duration::from_secs(7)).await;
    let early = f.lessor.take_due_checkpoints(10);
    assert_eq!(early.len(), 1);
    assert_eq!((early[0].remaining_ms, early[0].generation), (3_000, 0));
    let Renewal::Renewed {
        record: Some(full), ..
    } = f.lessor.renew(1)
    else {
        panic!("the full TTL must be recorded");
    };
    checkpoint(&f, full);
    checkpoint(&f, early[0]);
    let reopened = Lessor::open(&f.store).unwrap();
    reopened.promote(2);
    let ttl = reopened.time_to_live(1, false).unwrap();
    assert!(ttl.remaining >= 9, "the stale checkpoint was ignored: {ttl:?}");
}

#[tokio::test(start_paused = true)]
async fn checkpoints_come_once_the_record_drifts_by_the_slack() {
    let f = open();
    f.grant(1, 4).unwrap(); // slack 2 s
    f.lessor.promote(1);
    assert!(f.lessor.take_due_checkpoints(10).is_empty());
    tokio::time::advance(Duration::from_millis(1_900)).await;
    assert!(f.lessor.take_due_checkpoints(10).is_empty(), "within the slack");
    tokio::time::advance(Duration::from_millis(600)).await;
    let due = f.lessor.take_due_checkpoints(10);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].remaining_ms, 1_500, "{due:?}");
    assert!(f.lessor.take_due_checkpoints(10).is_empty(), "not twice");
}

#[test]
fn promotion_continues_from_the_recorded_time() {
    let f = open();
    f.grant(1, 100).unwrap();
    f.apply(|l, b| {
        l.checkpoint(
            b.transaction(),
            &[LeaseCheckpoint {
                id: 1,
                remaining_ms: 30_000,
                generation: 0,
            }],
        )
        .unwrap()
    });
    f.lessor.promote(2);
    let ttl = f.lessor.time_to_live(1, false).unwrap();
    assert!((29..=30).contains(&ttl.remaining), "{ttl:?}");
    assert_eq!(ttl.granted, 100);
}

#[test]
fn slack_is_half_the_ttl_within_bounds() {
    assert_eq!(slack(Duration::from_secs(1)), MIN_SLACK);
    assert_eq!(slack(Duration::from_secs(10)), Duration::from_secs(5));
    assert_eq!(slack(Duration::from_secs(3600)), MAX_SLACK);
}

#[test]
fn extreme_stored_values_never_panic() {
    let f = open();
    f.lessor.promote(1);
    for (id, ttl) in [
        (1, i64::MAX),
        (2, i64::MIN),
        (3, -5),
        (4, 0),
        (5, crate::lease::MAX_TTL_SECS),
    ] {
        f.grant(id, ttl).unwrap();
    }
    let extreme = [i64::MAX, i64::MIN, 0, -1];
    let checkpoints: Vec<LeaseCheckpoint> = (1..=5)
        .flat_map(|id| {
            extreme.iter().map(move |&v| LeaseCheckpoint {
                id,
                remaining_ms: v,
                generation: v,
            })
        })
        .collect();
    f.apply(|l, b| l.checkpoint(b.transaction(), &checkpoints))
        .0
        .unwrap();
    for id in 1..=5 {
        let _ = f.lessor.renew(id);
        let _ = f.lessor.time_to_live(id, true);
    }
    let _ = f.lessor.take_expired(100);
    let _ = f.lessor.take_due_checkpoints(100);
    let _ = f.lessor.all_remaining();
    // A restart loads them from the table.
    f.lessor.reload(&f.store).unwrap();
    f.lessor.promote(2);
    let ttl = f.lessor.time_to_live(1, false).unwrap();
    assert_eq!(ttl.granted, i64::MAX, "the stored TTL is reported as stored");
    assert!(ttl.remaining > 0, "a huge TTL does not expire at once");
}

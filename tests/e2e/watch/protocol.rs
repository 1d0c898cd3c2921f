//! The Watch protocol response by response, through our own proto client so nothing is hidden:
//! several watches on one stream, ids, cancel, progress, compaction, history replay, filters,
//! prev_kv, fragments and periodic progress notifications. The expected responses were checked
//! against etcd 3.4.23 with the same requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::WatchCreateRequest;
use concord_proto::etcdserverpb::WatchResponse;
use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::mvccpb::{Event, KeyValue, event::EventType};
use etcd_client::{DeleteOptions, EventType as ClientEventType, Txn, TxnOp, WatchOptions, WatchStream};
use prost::Message;

use super::support::{RawWatch, WAIT, connection, create, is_progress, prefix_end, revision};
use crate::client_kv::connect;
use crate::harness::Server;

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

fn put(kv: KeyValue, prev: Option<KeyValue>) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(kv),
        prev_kv: prev,
    }
}

/// A delete event: etcd's tombstone carries only the key and the deleting revision.
fn delete(key: &str, revision: i64, prev: KeyValue) -> Event {
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: key.as_bytes().to_vec().into(),
            mod_revision: revision,
            ..Default::default()
        }),
        prev_kv: Some(prev),
    }
}

fn without_prev(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| Event {
            prev_kv: None,
            ..e.clone()
        })
        .collect()
}

/// Groups event responses by watch id, checking each is a plain event response.
fn events_by_id(responses: &[WatchResponse]) -> BTreeMap<i64, Vec<Event>> {
    let mut by_id: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for r in responses {
        assert!(
            !r.created && !r.canceled && !r.fragment && r.compact_revision == 0 && !r.events.is_empty(),
            "expected an event response, got {r:?}"
        );
        let newest = r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).max();
        assert!(revision(r) >= newest.unwrap(), "header behind its events: {r:?}");
        by_id
            .entry(r.watch_id)
            .or_default()
            .extend(r.events.iter().cloned());
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_on_one_stream_ids_cancel_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    c.put("k", "v0", None).await.unwrap(); // 2
    let mut w = RawWatch::open(&connection(&server).await).await;

    // A client-chosen id, then the same id again: refused with etcd's created+canceled
    // response, watch_id -1 and its reason.
    let chosen = w
        .created(WatchCreateRequest {
            watch_id: 7,
            ..create(b"k", b"")
        })
        .await;
    assert_eq!((chosen.watch_id, revision(&chosen)), (7, 2));
    w.requests
        .create(WatchCreateRequest {
            watch_id: 7,
            ..create(b"k", b"")
        })
        .await;
    let duplicate = w.next().await;
    assert_eq!(
        (
            duplicate.watch_id,
            duplicate.created,
            duplicate.canceled,
            duplicate.cancel_reason.as_str()
        ),
        (
            -1,
            true,
            true,
            "mvcc: duplicate watch ID provided on the WatchStream"
        )
    );
    // Automatic ids count from 0 and skip ids the client took (etcd: 0, 1, then 3 after 2).
    assert_eq!(w.created(create(b"k", b"")).await.watch_id, 0);
    let prefix = WatchCreateRequest {
        watch_id: 2,
        ..create(b"k", &prefix_end(b"k"))
    };
    assert_eq!(w.created(prefix).await.watch_id, 2);
    assert_eq!(w.created(create(b"k", b"")).await.watch_id, 1);
    assert_eq!(w.created(create(b"k", b"")).await.watch_id, 3);
    // From revision 1: the put at 2 is replayed.
    let history = WatchCreateRequest {
        start_revision: 1,
        ..create(b"k", b"")
    };
    assert_eq!(w.created(history).await.watch_id, 4);

    let v1 = c.put("k", "v1", None).await.unwrap().header().unwrap().revision(); // 3
    let (responses, progress) = w.until_progress().await;
    // A progress response belongs to no watch (-1) and carries the current revision.
    assert_eq!(progress.watch_id, -1);
    assert_eq!(revision(&progress), v1);
    let put_v0 = put(kv("k", "v0", 2, 2, 1), None);
    let put_v1 = put(kv("k", "v1", 2, 3, 2), None);
    let expected: BTreeMap<i64, Vec<Event>> = [
        (0, vec![put_v1.clone()]),
        (1, vec![put_v1.clone()]),
        (2, vec![put_v1.clone()]),
        (3, vec![put_v1.clone()]),
        (4, vec![put_v0.clone(), put_v1.clone()]),
        (7, vec![put_v1.clone()]),
    ]
    .into();
    assert_eq!(events_by_id(&responses), expected);

    // Cancel answers `canceled` for that id; an unknown id gets no answer at all (etcd);
    // nor does cancelling the same id twice.
    w.requests.cancel(7).await;
    let canceled = w.next().await;
    assert_eq!(
        (
            canceled.watch_id,
            canceled.canceled,
            canceled.created,
            revision(&canceled)
        ),
        (7, true, false, v1)
    );
    assert!(canceled.events.is_empty() && canceled.cancel_reason.is_empty());
    w.requests.cancel(99).await;
    w.requests.cancel(7).await;
    let v2 = c.put("k", "v2", None).await.unwrap().header().unwrap().revision(); // 4
    let (responses, progress) = w.until_progress().await;
    assert_eq!(revision(&progress), v2);
    let put_v2 = put(kv("k", "v2", 2, 4, 3), None);
    let expected: BTreeMap<i64, Vec<Event>> = (0..=4).map(|id| (id, vec![put_v2.clone()])).collect();
    assert_eq!(
        events_by_id(&responses),
        expected,
        "nothing for the canceled watch"
    );

    // A progress request while a watch of the stream still replays history waits for it (as
    // etcd does since etcd-io/etcd#15237): it comes after the replayed events, at the current
    // revision, never below what the stream already delivered to its other watches.
    let replay = WatchCreateRequest {
        start_revision: 1,
        ..create(b"k", b"")
    };
    w.requests.create(replay).await;
    let (mut responses, progress) = w.until_progress().await;
    assert_eq!(revision(&progress), v2);
    let created: Vec<i64> = responses
        .iter()
        .filter(|r| r.created)
        .map(|r| r.watch_id)
        .collect();
    assert_eq!(created, [5]);
    responses.retain(|r| !r.created);
    let expected: BTreeMap<i64, Vec<Event>> = [(5, vec![put_v0, put_v1, put_v2])].into();
    assert_eq!(events_by_id(&responses), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revision_below_compaction_is_canceled_with_compact_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    for i in 0..5 {
        c.put("c", format!("{i}"), None).await.unwrap(); // 2..=6
    }
    c.compact(4, None).await.unwrap();
    let mut w = RawWatch::open(&connection(&server).await).await;

    let from_2 = WatchCreateRequest {
        start_revision: 2,
        ..create(b"c", b"")
    };
    let created = w.created(from_2).await;
    assert_eq!((created.watch_id, revision(&created)), (0, 6));
    let lost = w.next().await;
    assert_eq!(
        (lost.watch_id, lost.canceled, lost.created, lost.compact_revision),
        (0, true, false, 4),
        "{lost:?}"
    );
    assert!(lost.events.is_empty());

    // The compacted revision itself is still there to watch from.
    let from_4 = WatchCreateRequest {
        start_revision: 4,
        ..create(b"c", b"")
    };
    assert_eq!(w.created(from_4).await.watch_id, 1);
    c.put("c", "5", None).await.unwrap(); // 7
    let (responses, _) = w.until_progress().await;
    let expected: BTreeMap<i64, Vec<Event>> = [(
        1,
        vec![
            put(kv("c", "2", 2, 4, 3), None),
            put(kv("c", "3", 2, 5, 4), None),
            put(kv("c", "4", 2, 6, 5), None),
            put(kv("c", "5", 2, 7, 6), None),
        ],
    )]
    .into();
    assert_eq!(
        events_by_id(&responses),
        expected,
        "nothing more for the canceled watch"
    );
}

/// The same history seen live and replayed, through each filter, with and without prev_kv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replay_and_live_events_filters_and_prev_kv() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let channel = connection(&server).await;
    let variants: [(&str, Vec<FilterType>, bool); 5] = [
        ("plain", vec![], false),
        ("noput", vec![FilterType::Noput], false),
        ("nodelete", vec![FilterType::Nodelete], false),
        ("prev_kv", vec![], true),
        ("neither", vec![FilterType::Noput, FilterType::Nodelete], true),
    ];
    let request = |filters: &[FilterType], prev_kv: bool, start_revision: i64| WatchCreateRequest {
        filters: filters.iter().map(|f| *f as i32).collect(),
        prev_kv,
        start_revision,
        ..create(b"h/", &prefix_end(b"h/"))
    };
    let mut live = RawWatch::open(&channel).await;
    for (_, filters, prev_kv) in &variants {
        live.created(request(filters, *prev_kv, 0)).await;
    }

    c.put("h/a", "1", None).await.unwrap(); // 2
    c.put("h/b", "1", None).await.unwrap(); // 3
    c.put("h/a", "2", None).await.unwrap(); // 4
    c.put("x/outside", "1", None).await.unwrap(); // 5
    c.delete("h/a", None).await.unwrap(); // 6
    let txn = Txn::new().and_then([
        TxnOp::put("h/c", "1", None),
        TxnOp::delete("h/b", None),
        TxnOp::put("h/a", "3", None),
    ]);
    c.txn(txn).await.unwrap(); // 7: events in the order of the operations
    let all = DeleteOptions::new().with_prefix();
    c.delete("h/", Some(all)).await.unwrap(); // 8: h/a and h/c, in key order
    c.put("h/b", "2", None).await.unwrap(); // 9

    let history = vec![
        put(kv("h/a", "1", 2, 2, 1), None),
        put(kv("h/b", "1", 3, 3, 1), None),
        put(kv("h/a", "2", 2, 4, 2), Some(kv("h/a", "1", 2, 2, 1))),
        delete("h/a", 6, kv("h/a", "2", 2, 4, 2)),
        put(kv("h/c", "1", 7, 7, 1), None),
        delete("h/b", 7, kv("h/b", "1", 3, 3, 1)),
        put(kv("h/a", "3", 7, 7, 1), None),
        delete("h/a", 8, kv("h/a", "3", 7, 7, 1)),
        delete("h/c", 8, kv("h/c", "1", 7, 7, 1)),
        put(kv("h/b", "2", 9, 9, 1), None),
    ];
    let expected = |filters: &[FilterType], prev_kv: bool, from: i64| -> Vec<Event> {
        let kept: Vec<Event> = history
            .iter()
            .filter(|e| e.kv.as_ref().unwrap().mod_revision >= from)
            .filter(|e| {
                let filter = if e.r#type == EventType::Put as i32 {
                    FilterType::Noput
                } else {
                    FilterType::Nodelete
                };
                !filters.contains(&filter)
            })
            .cloned()
            .collect();
        if prev_kv { kept } else { without_prev(&kept) }
    };

    let (responses, _) = live.until_progress().await;
    let got = events_by_id(&responses);
    for (id, (name, filters, prev_kv)) in variants.iter().enumerate() {
        let want = expected(filters, *prev_kv, 0);
        let got = got.get(&(id as i64)).cloned().unwrap_or_default();
        assert_eq!(got, want, "live watch {name}");
    }

    // Replayed from history, from the start and from the middle of a generation.
    for from in [1, 4, 7] {
        let mut replay = RawWatch::open(&channel).await;
        for (_, filters, prev_kv) in &variants {
            replay.requests.create(request(filters, *prev_kv, from)).await;
        }
        // History may start arriving before the later watches are created.
        let (mut responses, progress) = replay.until_progress().await;
        assert_eq!(revision(&progress), 9);
        let created: Vec<i64> = responses
            .iter()
            .filter(|r| r.created)
            .map(|r| r.watch_id)
            .collect();
        assert_eq!(created, [0, 1, 2, 3, 4]);
        responses.retain(|r| !r.created);
        let got = events_by_id(&responses);
        for (id, (name, filters, prev_kv)) in variants.iter().enumerate() {
            let want = expected(filters, *prev_kv, from);
            let got = got.get(&(id as i64)).cloned().unwrap_or_default();
            assert_eq!(got, want, "watch {name} from revision {from}");
        }
    }
}

/// A revision too large for one message reaches a watcher that asked for fragments in parts:
/// every part but the last has `fragment` set and the parts concatenated are the revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_are_fragmented_for_watchers_that_ask() {
    let dir = tempfile::tempdir().unwrap();
    // A request may carry at most 64 KiB, so a txn can put three 20 KB values. etcd splits
    // only responses above --max-request-bytes + 512 KiB (576 KiB here): a revision gets that
    // big by deleting a range of large values and asking for their previous values.
    let server = Server::start(dir.path(), &["--max-request-bytes", "65536"]);
    let mut c = connect(&server).await;
    for i in 0..10 {
        c.put(format!("big/d{i}"), vec![b'd'; 60_000], None)
            .await
            .unwrap();
    }
    let too_large = c.put("big/x", vec![b'x'; 70_000], None).await.unwrap_err();
    assert!(
        too_large.to_string().contains("request is too large"),
        "{too_large}"
    );

    let mut w = RawWatch::open(&connection(&server).await).await;
    let range = || create(b"big/", &prefix_end(b"big/"));
    let fragmented = WatchCreateRequest {
        fragment: true,
        prev_kv: true,
        ..range()
    };
    let whole = WatchCreateRequest {
        prev_kv: true,
        ..range()
    };
    let small = WatchCreateRequest {
        fragment: true,
        ..range()
    };
    for request in [fragmented, whole, small] {
        w.created(request).await;
    }
    // One txn: ten deletes (600 KB of previous values) and three 20 KB puts.
    let mut ops = vec![TxnOp::delete("big/d", Some(DeleteOptions::new().with_prefix()))];
    ops.extend((0..3).map(|i| TxnOp::put(format!("big/p{i}"), vec![b'p'; 20_000], None)));
    let rev = c
        .txn(Txn::new().and_then(ops))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let (responses, _) = w.until_progress().await;
    let of = |id: i64| -> Vec<&WatchResponse> { responses.iter().filter(|r| r.watch_id == id).collect() };
    let (parts, whole, small) = (of(0), of(1), of(2));
    assert_eq!(responses.len(), parts.len() + whole.len() + small.len());

    // Without `fragment`, the whole revision comes in one 660 KB response.
    assert_eq!(whole.len(), 1);
    let all_events = &whole[0].events;
    assert_eq!(all_events.len(), 13);
    assert!(!whole[0].fragment);
    assert!(whole[0].encoded_len() > 65_536 + 512 * 1024);
    let keys: Vec<String> = all_events
        .iter()
        .map(|e| String::from_utf8(e.kv.as_ref().unwrap().key.to_vec()).unwrap())
        .collect();
    let mut want: Vec<String> = (0..10).map(|i| format!("big/d{i}")).collect();
    want.extend((0..3).map(|i| format!("big/p{i}")));
    assert_eq!(keys, want, "deletes in key order, then the puts");
    assert!(
        all_events[..10]
            .iter()
            .all(|e| e.prev_kv.as_ref().unwrap().value.len() == 60_000)
    );

    // With it: etcd 3.4 sends nine deletes (540 KB) and then the rest, the same header and
    // id on each part.
    let sizes: Vec<(usize, bool)> = parts.iter().map(|p| (p.events.len(), p.fragment)).collect();
    assert_eq!(sizes, [(9, true), (4, false)]);
    for part in &parts {
        assert_eq!(revision(part), rev);
        assert!(part.encoded_len() < 65_536 + 512 * 1024, "{}", part.encoded_len());
    }
    let joined: Vec<Event> = parts.iter().flat_map(|p| p.events.clone()).collect();
    assert_eq!(&joined, all_events);

    // Small enough without previous values: one response, not a fragment.
    assert_eq!(small.len(), 1);
    assert!(!small[0].fragment);
    assert_eq!(small[0].events, without_prev(all_events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications_for_quiet_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--experimental-watch-progress-notify-interval", "500ms"],
    );
    let mut c = connect(&server).await;
    // Written first, so every notification, even one ticking right away, reports it.
    let rev = c
        .put("elsewhere", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut w = RawWatch::open(&connection(&server).await).await;
    let notified = WatchCreateRequest {
        progress_notify: true,
        ..create(b"quiet", b"")
    };
    assert_eq!(w.created(notified).await.watch_id, 0);
    assert_eq!(w.created(create(b"quiet", b"")).await.watch_id, 1);

    // Only the watcher that asked is told, with no events and the current revision, about
    // every 500 ms.
    let first = w.next().await;
    let at = Instant::now();
    let second = w.next().await;
    let gap = at.elapsed();
    for notification in [&first, &second] {
        assert!(is_progress(notification), "{notification:?}");
        assert_eq!((notification.watch_id, revision(notification)), (0, rev));
    }
    assert!(
        gap >= Duration::from_millis(400) && gap <= Duration::from_millis(1500),
        "{gap:?} between notifications"
    );

    // An event is news: it is delivered, and the following notification reports its revision.
    let rev = c
        .put("quiet", "y", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut events_for = Vec::new();
    loop {
        let r = w.next().await;
        if !r.events.is_empty() {
            assert_eq!(r.events.len(), 1);
            events_for.push(r.watch_id);
            continue;
        }
        assert_eq!(
            r.watch_id, 0,
            "no notifications for a watch that did not ask: {r:?}"
        );
        assert!(is_progress(&r), "{r:?}");
        if revision(&r) == rev {
            events_for.sort_unstable();
            assert_eq!(events_for, [0, 1], "progress at {rev} after the event");
            break;
        }
    }
}

/// The next response on an `etcd-client` stream, failing the test after [`WAIT`].
async fn next(stream: &mut WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .unwrap()
        .expect("stream open")
}

/// The same stream features as a Rust user of `etcd-client` sees them: one `WatchStream`
/// carrying several watches, cancel and progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_watch_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = connect(&server).await;
    let mut stream = c
        .watch("a", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let first = next(&mut stream).await;
    assert!(first.created());
    stream
        .watch("b", Some(WatchOptions::new().with_prev_key().with_watch_id(5)))
        .await
        .unwrap();
    let second = next(&mut stream).await;
    assert!(second.created());
    assert_eq!((first.watch_id(), second.watch_id()), (0, 5));

    c.put("a1", "x", None).await.unwrap();
    c.put("b", "1", None).await.unwrap();
    c.put("b", "2", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next(&mut stream).await;
        for e in r.events() {
            let kv = e.kv().unwrap();
            let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
            assert_eq!(e.event_type(), ClientEventType::Put);
            seen.push((r.watch_id(), kv.key_str().unwrap().to_string(), prev));
        }
    }
    assert_eq!(
        seen,
        [
            (0, "a1".to_string(), None),
            (5, "b".to_string(), None),
            (5, "b".to_string(), Some("1".to_string()))
        ]
    );

    stream.request_progress().await.unwrap();
    let progress = next(&mut stream).await;
    assert_eq!(
        (progress.watch_id(), progress.header().unwrap().revision()),
        (-1, 4)
    );
    stream.cancel(5).await.unwrap();
    let canceled = next(&mut stream).await;
    assert!(canceled.canceled() && canceled.watch_id() == 5);
    c.put("b", "3", None).await.unwrap();
    c.put("a2", "y", None).await.unwrap();
    let after = next(&mut stream).await;
    assert_eq!(after.watch_id(), 0, "the canceled watch gets no more events");
    assert_eq!(after.events()[0].kv().unwrap().key(), b"a2");

    // A start revision below the compacted one: created, then canceled with compact_revision.
    c.compact(5, None).await.unwrap();
    stream
        .watch(
            "a",
            Some(WatchOptions::new().with_prefix().with_start_revision(2)),
        )
        .await
        .unwrap();
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled());
    let lost = next(&mut stream).await;
    assert!(lost.canceled(), "{lost:?}");
    assert_eq!(
        (lost.watch_id(), lost.compact_revision()),
        (created.watch_id(), 5)
    );
    assert!(lost.events().is_empty());
}

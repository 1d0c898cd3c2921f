//! Splitting a large watch response into fragments (etcd's `sendFragments`).

use concord_proto::etcdserverpb::WatchResponse;
use concord_proto::mvccpb::Event;
use prost::Message;

/// Splits `response` into responses of at most `limit` encoded bytes each (a single event
/// larger than `limit` still travels alone). Every part but the last has `fragment` set.
/// A response within the limit, or without events, is returned as it is.
pub fn split(mut response: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if response.encoded_len() <= limit || response.events.len() < 2 {
        return vec![response];
    }
    let events = std::mem::take(&mut response.events);
    let empty = response.encoded_len();
    let mut parts = Vec::new();
    let mut current = WatchResponse {
        events: Vec::new(),
        ..response.clone()
    };
    let mut size = empty;
    for event in events {
        // Each event costs its bytes plus a tag and a length prefix.
        let cost = event.encoded_len() + 1 + prost::length_delimiter_len(event.encoded_len());
        if !current.events.is_empty() && size + cost > limit {
            current.fragment = true;
            parts.push(std::mem::replace(
                &mut current,
                WatchResponse {
                    events: Vec::new(),
                    ..response.clone()
                },
            ));
            size = empty;
        }
        size += cost;
        current.events.push(event);
    }
    current.fragment = false;
    parts.push(current);
    parts
}

/// Cuts `events` (in revision order) into runs of whole revisions, starting a new run once the
/// current one holds more than `limit` encoded bytes; a single revision larger than `limit`
/// stays whole in its own run (etcd's atomicity: one revision is never split across responses,
/// except into fragments a client asked for).
pub fn split_at_revisions(events: Vec<Event>, limit: usize) -> Vec<Vec<Event>> {
    let revision = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut runs = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    let mut size = 0;
    for event in events {
        let starts_revision = current
            .last()
            .is_none_or(|last| revision(last) != revision(&event));
        if starts_revision && size > limit {
            runs.push(std::mem::take(&mut current));
            size = 0;
        }
        size += event.encoded_len() + 1 + prost::length_delimiter_len(event.encoded_len());
        current.push(event);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

#[cfg(test)]
mod tests {
    use concord_proto::mvccpb::KeyValue;

    use super::*;

    fn response(events: usize, value_len: usize) -> WatchResponse {
        WatchResponse {
            watch_id: 7,
            events: (0..events)
                .map(|i| Event {
                    kv: Some(KeyValue {
                        key: format!("k{i}").into_bytes().into(),
                        value: vec![b'v'; value_len].into(),
                        mod_revision: 9,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn windows_are_cut_only_between_revisions() {
        // Revisions 1..=6, two events each, 1000-byte values.
        let events: Vec<Event> = (0..12)
            .map(|i| Event {
                kv: Some(KeyValue {
                    key: format!("k{i}").into_bytes().into(),
                    value: vec![b'v'; 1000].into(),
                    mod_revision: 1 + i / 2,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let runs = split_at_revisions(events.clone(), 2500);
        assert!(runs.len() >= 3, "{} runs", runs.len());
        for run in &runs {
            let first = run[0].kv.as_ref().unwrap().mod_revision;
            let last = run.last().unwrap().kv.as_ref().unwrap().mod_revision;
            assert!(run.len() % 2 == 0, "revision {first}..{last} was split");
        }
        assert_eq!(runs.concat(), events);
        assert_eq!(split_at_revisions(events.clone(), usize::MAX), vec![events]);
        assert!(split_at_revisions(Vec::new(), 10).is_empty());
    }

    #[test]
    fn small_responses_stay_whole() {
        let parts = split(response(3, 10), 1 << 20);
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].fragment);
    }

    #[test]
    fn large_responses_split_in_order_with_fragment_flags() {
        let parts = split(response(10, 1000), 2500);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        let keys: Vec<_> = parts
            .iter()
            .flat_map(|p| &p.events)
            .map(|e| e.kv.clone().unwrap().key)
            .collect();
        assert_eq!(keys.len(), 10);
        assert_eq!(keys[0], &b"k0"[..]);
        assert_eq!(keys[9], &b"k9"[..]);
        for part in &parts[..parts.len() - 1] {
            assert!(part.fragment);
            assert!(part.encoded_len() <= 2500);
            assert_eq!(part.watch_id, 7);
        }
        assert!(!parts.last().unwrap().fragment);
    }
}

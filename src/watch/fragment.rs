//! Splitting a large watch response into fragments (etcd's `sendFragments`).

use concord_proto::etcdserverpb::WatchResponse;
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

#[cfg(test)]
mod tests {
    use concord_proto::mvccpb::{Event, KeyValue};

    use super::*;

    fn response(events: usize, value_len: usize) -> WatchResponse {
        WatchResponse {
            watch_id: 7,
            events: (0..events)
                .map(|i| Event {
                    kv: Some(KeyValue {
                        key: format!("k{i}").into_bytes(),
                        value: vec![b'v'; value_len],
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
        assert_eq!(keys[0], b"k0");
        assert_eq!(keys[9], b"k9");
        for part in &parts[..parts.len() - 1] {
            assert!(part.fragment);
            assert!(part.encoded_len() <= 2500);
            assert_eq!(part.watch_id, 7);
        }
        assert!(!parts.last().unwrap().fragment);
    }
}

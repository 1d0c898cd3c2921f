//! One watch on one stream.

use super::outgoing::Sink;
use concord_proto::mvccpb::{Event, event::EventType};

use crate::auth::Caller;
use crate::mvcc::KeySpan;

/// What a client asked to watch (a validated `WatchCreateRequest`).
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// First key (never empty: an empty key means `"\0"`, the smallest key).
    pub key: Vec<u8>,
    /// etcd's range end: empty = the single key, `"\0"` = every key from `key` on.
    pub range_end: Vec<u8>,
    /// Leave out PUT events.
    pub no_put: bool,
    /// Leave out DELETE events.
    pub no_delete: bool,
    /// Include each event's previous key-value.
    pub prev_kv: bool,
    /// Send periodic progress notifications.
    pub progress_notify: bool,
    /// Split responses larger than the request limit into fragments.
    pub fragment: bool,
    /// Who created the watch: while auth is on, it must keep read permission on the range
    /// (see [`WatchHub::cancel_where`](super::WatchHub::cancel_where)).
    pub owner: Caller,
}

/// A registered watcher: its options, its stream, and the revision its next event has.
#[derive(Debug)]
pub struct Watcher {
    /// The client-visible watch id (unique within its stream).
    pub id: i64,
    /// What it watches.
    pub options: WatchOptions,
    /// The lowest revision not yet delivered.
    pub next_rev: i64,
    /// Where its responses go: the stream's bounded channel.
    pub sink: Sink,
    /// Whether an event was sent since the last periodic progress notification.
    pub sent_since_progress: bool,
}

impl Watcher {
    /// True when `event` is in the watched range and not filtered out.
    pub fn wants(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else { return false };
        let filtered = if event.r#type == EventType::Delete as i32 {
            self.options.no_delete
        } else {
            self.options.no_put
        };
        !filtered && KeySpan::new(&self.options.key, &self.options.range_end).contains(&kv.key)
    }

    /// The events of `events` this watcher wants, from revision `next_rev` on, shaped for it
    /// (previous key-values dropped unless asked for).
    pub fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= self.next_rev) && self.wants(e))
            .map(|e| Event {
                r#type: e.r#type,
                kv: e.kv.clone(),
                prev_kv: if self.options.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use concord_proto::mvccpb::KeyValue;
    use tokio::sync::mpsc;

    use super::*;

    fn event(kind: EventType, key: &str, rev: i64) -> Event {
        Event {
            r#type: kind as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec().into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    fn watcher(options: WatchOptions) -> Watcher {
        let (sink, _) = mpsc::channel(1);
        Watcher {
            id: 0,
            options,
            next_rev: 3,
            sink,
            sent_since_progress: false,
        }
    }

    #[test]
    fn selects_by_range_filter_and_revision() {
        let events = [
            event(EventType::Put, "a", 2),
            event(EventType::Put, "a", 3),
            event(EventType::Delete, "ab", 4),
            event(EventType::Put, "b", 5),
        ];
        let prefix = watcher(WatchOptions {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        });
        let got = prefix.select(&events);
        assert_eq!(got.len(), 2, "revision 2 is before next_rev, b is outside");
        assert!(got.iter().all(|e| e.prev_kv.is_none()));

        let no_delete = watcher(WatchOptions {
            key: b"a".to_vec(),
            range_end: vec![0],
            no_delete: true,
            prev_kv: true,
            ..Default::default()
        });
        let got = no_delete.select(&events);
        assert_eq!(got.len(), 2);
        assert!(
            got.iter()
                .all(|e| e.r#type == EventType::Put as i32 && e.prev_kv.is_some())
        );

        let single = watcher(WatchOptions {
            key: b"ab".to_vec(),
            no_put: true,
            ..Default::default()
        });
        assert_eq!(single.select(&events).len(), 1);
    }
}

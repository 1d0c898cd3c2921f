//! etcd's watch guarantees, checked against the reference history of the watched keys (every
//! event from the first revision on, read after the run from a healthy member):
//!
//! - ordered and unique: a watcher's events come in revision order, none twice;
//! - reliable: no event between two it received is missing, nor any before the newest one or
//!   the newest progress notification (bookmark) it received;
//! - atomic: the events of one revision come in one response;
//! - resumable: a watcher that lost its stream and watched again from the revision after the
//!   last one it had (possibly on another member) sees the same history as one that never broke;
//! - bookmarkable: a progress notification at revision R comes after every event up to R.

/// One event, as the checks compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its revision (the key's mod revision).
    pub revision: i64,
    pub key: String,
    /// The value written; empty for a delete.
    pub value: String,
    pub delete: bool,
}

/// What one watch response brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Events (one response).
    Events(Vec<Event>),
    /// A progress notification at this revision.
    Progress(i64),
    /// The stream broke; the watcher watched again from `from` on member `member`.
    Resumed { from: i64, member: usize },
}

/// Checks one watcher's responses, from its first watch at `start` on, against `reference`
/// (every event of the watched keys from revision 1 on, in order). `Err` says what broke first.
pub fn check(start: i64, received: &[Received], reference: &[Event]) -> Result<(), String> {
    let expected: Vec<&Event> = reference.iter().filter(|e| e.revision >= start).collect();
    // How far the watcher got: the next expected event, and the newest revision it was told
    // of (by an event or a bookmark).
    let mut next = 0;
    let mut newest = start - 1;
    for (i, response) in received.iter().enumerate() {
        match response {
            Received::Events(events) => {
                if events.is_empty() {
                    return Err(format!("response {i}: an event response without events"));
                }
                // Each event must be the history's next one: that catches events out of order,
                // twice, changed, or after a gap.
                for event in events {
                    match expected.get(next) {
                        Some(&want) if want == event => next += 1,
                        Some(&want) => {
                            return Err(format!(
                                "response {i}: got {event:?} where the history has {want:?} next"
                            ));
                        }
                        None => return Err(format!("response {i}: {event:?} is not in the history")),
                    }
                    newest = event.revision;
                }
                // Atomic: the last revision of the response is complete in it.
                if expected.get(next).is_some_and(|e| e.revision == newest) {
                    return Err(format!(
                        "response {i}: revision {newest} split over responses ({:?} left out)",
                        expected[next]
                    ));
                }
            }
            Received::Progress(revision) => {
                if let Some(&missing) = expected.get(next).filter(|e| e.revision <= *revision) {
                    return Err(format!(
                        "response {i}: progress at revision {revision} before {missing:?} was sent"
                    ));
                }
                newest = newest.max(*revision);
            }
            Received::Resumed { from, member } => {
                // Resuming past an event not yet received skips it; before one received repeats.
                if *from > newest + 1 {
                    return Err(format!(
                        "response {i}: resumed on m{member} from {from}, past revision {newest}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The reference history's own shape: revisions that only grow, each revision from `first` to
/// `last` present (every write of the run was to the watched keys), and no event twice.
pub fn check_reference(reference: &[Event], first: i64, last: i64) -> Result<(), String> {
    let mut expect = first;
    for pair in reference.windows(2) {
        if pair[1].revision < pair[0].revision {
            return Err(format!("{:?} after {:?}", pair[1], pair[0]));
        }
        if pair[1].revision == pair[0].revision && pair[1].key == pair[0].key {
            return Err(format!("{:?} twice in one revision", pair[1]));
        }
    }
    for event in reference {
        if event.revision == expect {
            expect += 1;
        } else if event.revision != expect - 1 {
            return Err(format!("revision {expect} is missing (next: {event:?})"));
        }
    }
    if expect != last + 1 {
        return Err(format!("the history ends at revision {}, not {last}", expect - 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, value: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            value: value.into(),
            delete: false,
        }
    }

    /// Revisions 2..=5; revision 4 writes two keys (a txn).
    fn reference() -> Vec<Event> {
        vec![
            put(2, "a", "1"),
            put(3, "b", "2"),
            put(4, "a", "3"),
            put(4, "b", "3"),
            put(5, "a", "4"),
        ]
    }

    #[test]
    fn a_complete_watch_with_a_resume_and_bookmarks_passes() {
        let r = reference();
        let received = [
            Received::Events(vec![r[0].clone()]),
            Received::Progress(2),
            Received::Resumed { from: 3, member: 1 },
            Received::Events(vec![r[1].clone(), r[2].clone(), r[3].clone()]),
            Received::Progress(4),
            Received::Resumed { from: 5, member: 0 },
            Received::Events(vec![r[4].clone()]),
            Received::Progress(5),
        ];
        assert_eq!(check(1, &received, &r), Ok(()));
        assert_eq!(check(4, &[Received::Events(r[2..].to_vec())], &r), Ok(()));
        assert_eq!(check_reference(&r, 2, 5), Ok(()));
    }

    #[test]
    fn each_broken_guarantee_is_caught() {
        let r = reference();
        let events = |range: std::ops::Range<usize>| Received::Events(r[range].to_vec());
        let cases: Vec<(&str, Vec<Received>)> = vec![
            ("a gap", vec![events(0..1), events(2..4)]),
            ("twice", vec![events(0..2), events(1..2)]),
            (
                "out of order",
                vec![Received::Events(vec![r[1].clone(), r[0].clone()])],
            ),
            ("a split revision", vec![events(0..3), events(3..5)]),
            ("an early bookmark", vec![events(0..1), Received::Progress(3)]),
            (
                "a resume past a missed event",
                vec![
                    events(0..1),
                    Received::Resumed { from: 4, member: 2 },
                    events(2..4),
                ],
            ),
            (
                "a changed value",
                vec![Received::Events(vec![put(2, "a", "other")])],
            ),
            ("an empty response", vec![Received::Events(vec![])]),
        ];
        for (what, received) in cases {
            assert!(check(1, &received, &r).is_err(), "{what} passed");
        }
        let mut missing = r.clone();
        missing.remove(1);
        assert!(check_reference(&missing, 2, 5).is_err());
        assert!(check_reference(&r, 2, 6).is_err());
        let mut doubled = r.clone();
        doubled.insert(1, r[0].clone());
        assert!(check_reference(&doubled, 2, 5).is_err());
    }
}

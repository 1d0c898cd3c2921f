//! Lock and election safety, judged against the history. etcd's lock and election recipes
//! both make the key with the lowest create revision under a prefix the owner (the lock
//! holder, the leader); a client's claim that a key owned the prefix at a revision is checked
//! by replaying the history up to that revision:
//!
//! - a lock granted, or a campaign won, at revision R: the key is the owner at R (no two
//!   holders at once, no two leaders);
//! - a fenced write (a txn guarded by the holder's key) or a proclaim that succeeded at
//!   revision R: the key was the owner at R, with the create revision the holder was given (no
//!   write with a stale fencing token accepted).

use std::collections::{BTreeMap, HashMap};

use super::watch::Event;

/// A client's claim that `key` owned its prefix at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The prefix the owner is the lowest key of (`name/` for etcd's recipes).
    pub prefix: String,
    pub key: String,
    /// The key's create revision, when the client knows it (a campaign's leader key has it).
    pub create_revision: Option<i64>,
    pub revision: i64,
    /// What made the claim, for the report ("c3 locked", "c4 fenced write").
    pub what: String,
}

/// Checks every claim against `history` (every event from revision 1 on, in revision order).
/// `Err` lists the claims that do not hold.
pub fn check(claims: &[Claim], history: &[Event]) -> Result<(), String> {
    let mut sorted: Vec<&Claim> = claims.iter().collect();
    sorted.sort_by_key(|c| c.revision);
    let prefixes: Vec<&str> = {
        let mut p: Vec<&str> = claims.iter().map(|c| c.prefix.as_str()).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    // Per prefix, its live keys by create revision; and each live key's create revision.
    let mut by_create: HashMap<&str, BTreeMap<i64, String>> = HashMap::new();
    let mut created: HashMap<String, i64> = HashMap::new();
    let mut events = history.iter().peekable();
    let mut broken = Vec::new();
    for claim in sorted {
        while let Some(event) = events.next_if(|e| e.revision <= claim.revision) {
            let Some(&prefix) = prefixes.iter().find(|p| event.key.starts_with(**p)) else {
                continue;
            };
            let keys = by_create.entry(prefix).or_default();
            if event.delete {
                if let Some(rev) = created.remove(&event.key) {
                    keys.remove(&rev);
                }
            } else if !created.contains_key(&event.key) {
                created.insert(event.key.clone(), event.revision);
                keys.insert(event.revision, event.key.clone());
            }
        }
        let owner = by_create
            .get(claim.prefix.as_str())
            .and_then(|keys| keys.first_key_value());
        let holds = match (owner, created.get(&claim.key)) {
            (Some((_, owner)), Some(&rev)) => {
                owner == &claim.key && claim.create_revision.is_none_or(|want| want == rev)
            }
            _ => false,
        };
        if !holds {
            broken.push(format!(
                "{} claims {} (created at {:?}) owned {} at revision {}, but there {}",
                claim.what,
                claim.key,
                claim.create_revision,
                claim.prefix,
                claim.revision,
                match (owner, created.get(&claim.key)) {
                    (_, None) => "the key does not exist".to_string(),
                    (Some((rev, owner)), Some(&mine)) if owner != &claim.key => {
                        format!("{owner} (created at {rev}) owns it; the key was created at {mine}")
                    }
                    (_, Some(&mine)) => format!("the key was created at {mine}"),
                }
            ));
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(broken.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            value: "v".into(),
            delete: false,
        }
    }

    fn delete(revision: i64, key: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            value: String::new(),
            delete: true,
        }
    }

    fn claim(key: &str, revision: i64, create_revision: Option<i64>) -> Claim {
        Claim {
            prefix: "l/".into(),
            key: key.into(),
            create_revision,
            revision,
            what: "test".into(),
        }
    }

    fn history() -> Vec<Event> {
        vec![
            put(1, "l/a"),
            put(2, "l/b"),
            put(3, "other"),
            delete(4, "l/a"),
            put(5, "l/b"),
            put(6, "l/a"),
        ]
    }

    #[test]
    fn the_lowest_create_revision_owns_the_prefix() {
        let claims = [
            claim("l/a", 1, Some(1)),
            claim("l/a", 3, None),
            claim("l/b", 4, None),
            claim("l/b", 6, Some(2)),
        ];
        assert_eq!(check(&claims, &history()), Ok(()));
    }

    #[test]
    fn a_second_holder_while_the_first_holds_is_caught() {
        let err = check(&[claim("l/b", 3, None)], &history()).unwrap_err();
        assert!(err.contains("l/a (created at 1) owns it"), "{err}");
    }

    #[test]
    fn a_stale_token_is_caught_even_when_the_key_exists_again() {
        // l/a was deleted at 4 and made again at 6: a write fenced with its first create
        // revision must not succeed at 6.
        assert!(check(&[claim("l/a", 4, None)], &history()).is_err());
        let err = check(&[claim("l/a", 6, Some(1))], &history()).unwrap_err();
        assert!(err.contains("created at 6"), "{err}");
    }
}

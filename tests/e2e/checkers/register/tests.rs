//! The checker on hand-written histories (and one generated linearizable history).
use super::Op::{Cas, Delete, Get, Put};
use super::Outcome::Unknown;
use super::*;
use crate::cluster::harness::XorShift;

/// A history from `(op, outcome, call ms, return ms)`, all by client 0 through member 0.
fn history(ops: &[(Op, Outcome, u64, u64)]) -> Vec<Entry> {
    let base = Instant::now();
    let at = |ms| base + Duration::from_millis(ms);
    ops.iter()
        .map(|&(op, outcome, call, ret)| Entry {
            op,
            outcome,
            call: at(call),
            ret: at(ret),
            client: 0,
            member: 0,
        })
        .collect()
}

const PUT: Outcome = Outcome::Ok(Ret::Put);

const fn got(v: Option<Value>) -> Outcome {
    Outcome::Ok(Ret::Get(v))
}

const fn swapped(s: bool) -> Outcome {
    Outcome::Ok(Ret::Cas(s))
}

const fn cas(expected: Option<Value>, new: Value) -> Op {
    Cas { expected, new }
}

#[test]
fn accepts_a_linearizable_history() {
    let h = history(&[
        (Put(1), PUT, 0, 10),
        (Get, got(None), 5, 15), // concurrent with the put: may precede it
        (cas(Some(1), 2), swapped(true), 12, 20),
        (Get, got(Some(1)), 14, 30), // concurrent with the CAS: before it
        (Get, got(Some(2)), 25, 35),
        (Put(3), Unknown, 40, 41),
        (Get, got(Some(3)), 60, 70), // the unknown put took effect
        (Put(4), Unknown, 80, 81),   // this one never did (or not yet)
        (Get, got(Some(3)), 100, 110),
        (cas(None, 5), swapped(false), 120, 130),
    ]);
    check(&h).unwrap();
}

#[test]
fn deletes_empty_the_register_and_an_unknown_one_may_explain_a_missing_key() {
    let h = history(&[
        (Put(1), PUT, 0, 10),
        (Delete, Outcome::Ok(Ret::Delete), 20, 30),
        (Get, got(None), 40, 50),
        (cas(None, 2), swapped(true), 60, 70),
        (Delete, Unknown, 80, 81),
        (Get, got(Some(2)), 90, 100), // the unknown delete not yet
        (Get, got(None), 110, 120),   // now it took effect
        (cas(Some(2), 3), swapped(false), 130, 140),
    ]);
    check(&h).unwrap();
    let h = history(&[
        (Put(1), PUT, 0, 10),
        (Delete, Outcome::Ok(Ret::Delete), 20, 30),
        (Get, got(Some(1)), 40, 50), // the delete was acknowledged before this read
    ]);
    assert!(check(&h).is_err());
}

#[test]
fn rejects_a_stale_read() {
    let h = history(&[
        (Put(1), PUT, 0, 10),
        (Put(2), PUT, 20, 30),
        (Get, got(Some(1)), 40, 50),
    ]);
    let violation = check(&h).unwrap_err();
    assert_eq!(violation.prefix, [0, 1]);
    assert_eq!(violation.stuck, [2]);
}

#[test]
fn rejects_a_lost_cas() {
    // A CAS acknowledged, then not seen.
    let h = history(&[
        (Put(1), PUT, 0, 10),
        (cas(Some(1), 2), swapped(true), 20, 30),
        (Get, got(Some(1)), 40, 50),
    ]);
    assert!(check(&h).is_err());
    // Two concurrent CASes from the same value both swapped.
    let h = history(&[
        (Put(1), PUT, 0, 10),
        (cas(Some(1), 2), swapped(true), 20, 30),
        (cas(Some(1), 3), swapped(true), 20, 30),
    ]);
    assert!(check(&h).is_err());
}

#[test]
fn unknown_ops_take_effect_after_their_call_or_never() {
    let h = history(&[(Get, got(Some(7)), 0, 10), (Put(7), Unknown, 20, 21)]);
    assert!(check(&h).is_err());
    let h = history(&[(Put(7), Unknown, 0, 1), (Get, got(None), 20, 30)]);
    check(&h).unwrap();
}

/// Six clients, 360 operations with random overlaps, some unknown: a linearizable history
/// by construction (each op takes effect at a random instant within its interval), which
/// the search must accept quickly, and reject quickly once one read in it is corrupted.
#[test]
fn decides_hundreds_of_concurrent_ops_quickly() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    // (client, call, effect, ret, op, unknown), call < effect < ret in µs.
    let mut ops = Vec::new();
    for client in 0..6 {
        let mut t = rng.below(100) as u64;
        for _ in 0..60 {
            let (call, effect) = (t, t + 1 + rng.below(3000) as u64);
            let ret = effect + 1 + rng.below(3000) as u64;
            let value = ops.len() as Value + 1;
            let op = match rng.below(10) {
                0..4 => Get,
                4..7 => Put(value),
                7 => Delete,
                // Expecting nothing for now: see below.
                _ => cas(None, value),
            };
            ops.push((client, call, effect, ret, op, rng.below(20) == 0));
            t = ret + rng.below(500) as u64;
        }
    }
    ops.sort_by_key(|o| o.2);
    let base = Instant::now();
    let at = |us| base + Duration::from_micros(us);
    let mut state = None;
    let mut h = Vec::new();
    for (client, call, _, ret, mut op, unknown) in ops {
        if let Cas { expected, .. } = &mut op {
            // Half the CASes expect what the register holds when they take effect.
            *expected = if rng.below(2) == 0 {
                state
            } else {
                Some(rng.below(360) as Value)
            };
        }
        let (next, answer) = match op {
            Put(v) => (Some(v), Ret::Put),
            Delete => (None, Ret::Delete),
            Get => (state, Ret::Get(state)),
            Cas { expected, new } if expected == state => (Some(new), Ret::Cas(true)),
            Cas { .. } => (state, Ret::Cas(false)),
        };
        // An unknown write applies or not; an unknown get is dropped, as the e2e test does.
        if unknown && op == Get {
            continue;
        }
        if !unknown || rng.below(2) == 0 {
            state = next;
        }
        let outcome = if unknown { Unknown } else { Outcome::Ok(answer) };
        let (call, ret) = (at(call), at(ret));
        h.push(Entry {
            op,
            outcome,
            call,
            ret,
            client,
            member: 0,
        });
    }
    let started = Instant::now();
    if let Err(v) = check(&h) {
        panic!("{}", v.report(&h, base));
    }
    let accepted = started.elapsed();
    // A read of a value never written half-way through: the search must exhaust every
    // configuration before it, which is the expensive case.
    let middle = (h.len() / 2..).find(|&i| h[i].op == Get).unwrap();
    h[middle].outcome = got(Some(1_000_000));
    let started = Instant::now();
    let violation = check(&h).unwrap_err();
    let rejected = started.elapsed();
    println!(
        "{} ops: accepted in {accepted:?}, rejected in {rejected:?}",
        h.len()
    );
    assert!(violation.stuck.contains(&middle), "{violation:?}");
    assert!(accepted + rejected < Duration::from_secs(10), "too slow");
}

/// Many unknown puts that nobody saw, in a long history: each could be placed anywhere
/// after its call, which once made the configurations grow with every one of them.
#[test]
fn unknown_puts_nobody_saw_do_not_blow_the_search_up() {
    let base = Instant::now();
    let at = |t: u64| base + Duration::from_micros(t);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut state = None;
    let mut known_puts = Vec::new();
    let mut h = Vec::new();
    // Each operation takes effect 5 µs after its call and answers 12 µs after it, so
    // neighbours overlap; one in ten is a put without an answer, applied or not.
    for n in 0..6000u64 {
        let value = n + 1;
        let (op, outcome) = match rng.below(10) {
            0..4 => (Get, got(state)),
            4..7 => {
                state = Some(value);
                known_puts.push(value);
                (Put(value), PUT)
            }
            7 => {
                if rng.below(2) == 0 {
                    state = Some(value);
                }
                (Put(value), Unknown)
            }
            _ => {
                let expected = if rng.below(2) == 0 { state } else { Some(0) };
                let swaps = expected == state;
                if swaps {
                    state = Some(value);
                }
                (cas(expected, value), swapped(swaps))
            }
        };
        h.push(Entry {
            op,
            outcome,
            call: at(n * 10),
            ret: at(n * 10 + 12),
            client: (n % 7) as usize,
            member: 0,
        });
    }
    let unknown = h.iter().filter(|e| e.outcome == Unknown).count();
    assert!(unknown > 500, "{unknown} unknown puts");
    let started = Instant::now();
    if let Err(v) = check(&h) {
        panic!("{}", v.report(&h, base));
    }
    let accepted = started.elapsed();
    // A read, after everything, of a value overwritten long before: never linearizable.
    let stale = known_puts[known_puts.len() / 2];
    h.push(Entry {
        op: Get,
        outcome: got(Some(stale)),
        call: at(70_000),
        ret: at(70_010),
        client: 0,
        member: 0,
    });
    let started = Instant::now();
    assert!(check(&h).is_err());
    println!(
        "{} ops, {unknown} unknown: accepted in {accepted:?}, rejected in {:?}",
        h.len(),
        started.elapsed()
    );
}

//! A register's linearizability: whether one key's recorded history of gets, puts and
//! compare-and-swaps can be explained by a single register whose operations take effect one at
//! a time, each at some instant between its call and its response. The search is Wing & Gong's
//! with Lowe's memoization. An operation without an answer (a timeout, an error that does not
//! say whether it was applied) may take effect at any instant after its call, or never.

use std::collections::HashSet;
use std::time::Instant;

/// A register value. Every put and CAS of a history writes a value no other operation writes.
pub(crate) type Value = u64;

/// An operation on the register, as invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Sets the register.
    Put(Value),
    /// Reads it.
    Get,
    /// Sets it to `new` if it holds `expected` (`None`: the key does not exist).
    Cas { expected: Option<Value>, new: Value },
}

/// What an operation answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ret {
    Put,
    Get(Option<Value>),
    /// Whether the CAS swapped.
    Cas(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok(Ret),
    /// No usable answer (timeout, or an error that does not say whether it was applied): the
    /// operation may take effect at any instant after its call, or never. The search treats
    /// its response time as infinite and may leave it out.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) op: Op,
    pub(crate) outcome: Outcome,
    /// When it was sent.
    pub(crate) call: Instant,
    /// When its answer arrived (or it was given up on: ignored when [`Outcome::Unknown`]).
    pub(crate) ret: Instant,
    /// The client task and the member it went through, for failure reports.
    pub(crate) client: usize,
    pub(crate) member: usize,
}

impl Entry {
    /// Its response time, `None` (never) when the outcome is unknown.
    pub(crate) fn returned(&self) -> Option<Instant> {
        matches!(self.outcome, Outcome::Ok(_)).then_some(self.ret)
    }

    /// One line: who, when (in ms since `base`), what and what it answered.
    pub(crate) fn describe(&self, base: Instant) -> String {
        let ms = |t: Instant| t.saturating_duration_since(base).as_millis();
        let outcome = match self.outcome {
            Outcome::Ok(ret) => format!("{ret:?}"),
            Outcome::Unknown => "Unknown".into(),
        };
        format!(
            "c{} via m{} [{:>5} .. {:>5} ms] {:?} -> {outcome}",
            self.client,
            self.member,
            ms(self.call),
            ms(self.ret),
            self.op
        )
    }
}

/// The register's state after `op` ended with `outcome` in `state`; `None` if that cannot
/// happen. An unknown CAS that did not swap had no effect: leaving it out covers that case.
pub(crate) fn apply(state: Option<Value>, op: Op, outcome: Outcome) -> Option<Option<Value>> {
    match (op, outcome) {
        (Op::Put(v), Outcome::Ok(Ret::Put) | Outcome::Unknown) => Some(Some(v)),
        (Op::Get, Outcome::Ok(Ret::Get(seen))) => (seen == state).then_some(state),
        (Op::Cas { expected, .. }, Outcome::Ok(Ret::Cas(false))) => (state != expected).then_some(state),
        (Op::Cas { expected, new }, Outcome::Ok(Ret::Cas(true)) | Outcome::Unknown) => {
            (state == expected).then_some(Some(new))
        }
        // An unknown get has no effect (left out), and an answer of the wrong kind never fits.
        _ => None,
    }
}

/// Why a history is not linearizable, as far as the search got: the longest prefix (counted in
/// known operations) it could linearize, the register after it, and the operations that were
/// allowed to come next, none of which led anywhere.
#[derive(Debug)]
pub(crate) struct Violation {
    pub(crate) prefix: Vec<usize>,
    pub(crate) state: Option<Value>,
    pub(crate) stuck: Vec<usize>,
}

impl Violation {
    /// The end of the longest linearized prefix and the operations that could not follow it.
    pub(crate) fn report(&self, history: &[Entry], base: Instant) -> String {
        let tail = &self.prefix[self.prefix.len().saturating_sub(6)..];
        let mut out = format!(
            "longest linearizable prefix: {} of {} ops, ending with\n",
            self.prefix.len(),
            history.len()
        );
        for &i in tail {
            out += &format!("    {}\n", history[i].describe(base));
        }
        out += &format!(
            "  register then holds {:?}; none of these can come next:\n",
            self.state
        );
        for &i in &self.stuck {
            out += &format!("    {}\n", history[i].describe(base));
        }
        out
    }
}

/// Depth-first search over linearizations, memoizing (linearized set, register) configurations
/// already explored: each is explored once, so the cost is bounded by their number.
struct Search<'a> {
    history: &'a [Entry],
    /// Indices into `history` by call time.
    by_call: Vec<usize>,
    /// The operations linearized so far, as a bitset, and in their order.
    linearized: Vec<u64>,
    path: Vec<usize>,
    /// Configurations visited (all failed, or the search would have stopped).
    seen: HashSet<(Vec<u64>, Option<Value>)>,
    /// The deepest configuration visited, by known operations linearized.
    deepest: (usize, Vec<usize>, Option<Value>),
}

impl Search<'_> {
    fn flip(&mut self, i: usize) {
        self.linearized[i / 64] ^= 1 << (i % 64);
    }

    fn is_linearized(&self, i: usize) -> bool {
        self.linearized[i / 64] & (1 << (i % 64)) != 0
    }

    /// The operations that may come next: not linearized yet and called no later than the first
    /// response among the remaining ones. Known outcomes first: unknown operations are only
    /// needed to explain what known ones saw.
    fn candidates(&self) -> Vec<usize> {
        let pending = self.by_call.iter().copied().filter(|&i| !self.is_linearized(i));
        let horizon = pending.clone().filter_map(|i| self.history[i].returned()).min();
        let mut next: Vec<usize> = pending
            .take_while(|&i| horizon.is_none_or(|h| self.history[i].call <= h))
            .collect();
        next.sort_by_key(|&i| self.history[i].outcome == Outcome::Unknown);
        next
    }

    /// Whether the remaining `known_left` known operations can all be linearized from `state`.
    fn run(&mut self, state: Option<Value>, known_left: usize, known_done: usize) -> bool {
        if known_left == 0 {
            return true;
        }
        if !self.seen.insert((self.linearized.clone(), state)) {
            return false;
        }
        if known_done > self.deepest.0 {
            self.deepest = (known_done, self.path.clone(), state);
        }
        for i in self.candidates() {
            let entry = &self.history[i];
            let Some(next) = apply(state, entry.op, entry.outcome) else {
                continue;
            };
            let known = usize::from(entry.returned().is_some());
            self.flip(i);
            self.path.push(i);
            if self.run(next, known_left - known, known_done + known) {
                return true;
            }
            self.path.pop();
            self.flip(i);
        }
        false
    }
}

/// Whether `history` (one key's operations, from an empty key) is linearizable for a register.
pub(crate) fn check(history: &[Entry]) -> Result<(), Violation> {
    let mut by_call: Vec<usize> = (0..history.len()).collect();
    by_call.sort_by_key(|&i| history[i].call);
    let mut search = Search {
        history,
        by_call,
        linearized: vec![0; history.len().div_ceil(64)],
        path: Vec::new(),
        seen: HashSet::new(),
        deepest: (0, Vec::new(), None),
    };
    let known = history.iter().filter(|e| e.returned().is_some()).count();
    if search.run(None, known, 0) {
        return Ok(());
    }
    let (_, prefix, state) = std::mem::take(&mut search.deepest);
    search.linearized.fill(0);
    for &i in &prefix {
        search.flip(i);
    }
    let stuck = search.candidates();
    Err(Violation { prefix, state, stuck })
}

/// The checker on hand-written histories (and one generated linearizable history).
mod tests {
    use std::time::Duration;

    use super::Op::{Cas, Get, Put};
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
}

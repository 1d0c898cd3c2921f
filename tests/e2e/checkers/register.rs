//! A register's linearizability: whether one key's recorded history of gets, puts and
//! compare-and-swaps can be explained by a single register whose operations take effect one at
//! a time, each at some instant between its call and its response. The search is Wing & Gong's
//! with Lowe's memoization. An operation without an answer (a timeout, an error that does not
//! say whether it was applied) may take effect at any instant after its call, or never.

use std::collections::HashSet;
use std::time::{Duration, Instant};

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
    /// Deletes the key: the register holds nothing.
    Delete,
}

/// What an operation answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ret {
    Put,
    Get(Option<Value>),
    /// Whether the CAS swapped.
    Cas(bool),
    Delete,
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
        (Op::Delete, Outcome::Ok(Ret::Delete) | Outcome::Unknown) => Some(None),
        (Op::Get, Outcome::Ok(Ret::Get(seen))) => (seen == state).then_some(state),
        (Op::Cas { expected, .. }, Outcome::Ok(Ret::Cas(false))) => (state != expected).then_some(state),
        (Op::Cas { expected, new }, Outcome::Ok(Ret::Cas(true)) | Outcome::Unknown) => {
            (state == expected).then_some(Some(new))
        }
        // An unknown get has no effect (left out), and an answer of the wrong kind never fits.
        _ => None,
    }
}

/// What a client learns of the register from `op` ending with `outcome`: the value it held
/// when the answer was made (`Some(None)`: no key), or `None` if the answer tells nothing.
pub(crate) fn learned(op: Op, outcome: Outcome) -> Option<Option<Value>> {
    match (op, outcome) {
        (Op::Put(v), Outcome::Ok(_)) | (Op::Cas { new: v, .. }, Outcome::Ok(Ret::Cas(true))) => Some(Some(v)),
        (_, Outcome::Ok(Ret::Get(seen))) => Some(seen),
        (_, Outcome::Ok(Ret::Delete)) => Some(None),
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

/// Runs one register operation on `key` through `client`: a get, a put, or a compare-and-swap
/// txn (`expected: None` compares the key's version with 0). An error, or no answer within
/// `within`, is [`Outcome::Unknown`].
pub(crate) async fn perform(
    client: &mut etcd_client::Client,
    key: &str,
    op: Op,
    within: Duration,
) -> Outcome {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let answer = async {
        Ok::<_, etcd_client::Error>(match op {
            Op::Put(v) => {
                client.put(key, v.to_string(), None).await?;
                Ret::Put
            }
            Op::Delete => {
                client.delete(key, None).await?;
                Ret::Delete
            }
            Op::Get => {
                let resp = client.get(key, None).await?;
                Ret::Get(
                    resp.kvs()
                        .first()
                        .map(|kv| kv.value_str().unwrap().parse().unwrap()),
                )
            }
            Op::Cas { expected, new } => {
                let compare = match expected {
                    Some(v) => Compare::value(key, CompareOp::Equal, v.to_string()),
                    None => Compare::version(key, CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key, new.to_string(), None)]);
                Ret::Cas(client.txn(txn).await?.succeeded())
            }
        })
    };
    match tokio::time::timeout(within, answer).await {
        Ok(Ok(ret)) => Outcome::Ok(ret),
        _ => Outcome::Unknown,
    }
}

/// Depth-first search over linearizations, memoizing (linearized set, register) configurations
/// already explored: each is explored once, so the cost is bounded by their number.
///
/// Two things keep long histories (tens of thousands of operations, dozens unknown) tractable:
/// - the known operations are scanned from a cursor past the prefix already linearized, and
///   only as far as the window of operations that may come next, instead of from the start;
/// - an unknown put is tried only where it can explain something: a pending operation that saw
///   or expects its value, or a swap that failed although the register holds what it expected.
///   Placing it later is never worse otherwise (nothing in between tells the difference), and
///   it stays pending until the end, so it is tried when it is needed. Trying it everywhere
///   made the number of configurations grow with every unknown put that nobody saw. An unknown
///   delete is treated the same way, its "value" being the missing key.
struct Search<'a> {
    history: &'a [Entry],
    /// Indices into `history` of the known operations by call time, and where each is in it.
    known: Vec<usize>,
    position: Vec<usize>,
    /// Every known operation before this position in `known` is linearized.
    cursor: usize,
    /// Indices into `history` of the unknown operations by call time.
    unknown: Vec<usize>,
    /// Every value some operation saw or expected: an unknown put of any other value can only
    /// ever explain a failed swap.
    observed: HashSet<Value>,
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

    /// The operations that may come next from `state`: not linearized yet and called no later
    /// than the first response among the remaining ones. Known outcomes first: unknown
    /// operations are only needed to explain what known ones saw.
    fn candidates(&mut self, state: Option<Value>) -> Vec<usize> {
        while self.cursor < self.known.len() && self.is_linearized(self.known[self.cursor]) {
            self.cursor += 1;
        }
        let mut next = Vec::new();
        // The first response among the pending known operations: one called after the
        // smallest response so far cannot respond earlier than it.
        let mut horizon: Option<Instant> = None;
        for &i in &self.known[self.cursor..] {
            let entry = &self.history[i];
            if horizon.is_some_and(|h| entry.call > h) {
                break;
            }
            if self.is_linearized(i) {
                continue;
            }
            next.push(i);
            horizon = Some(horizon.map_or(entry.ret, |h| h.min(entry.ret)));
        }
        let window = next.clone();
        // Whether a pending operation saw or expects `v` (`None`: no key), which an unknown
        // write of it could explain.
        let needs = |v: Option<Value>| {
            v.is_none_or(|v| self.observed.contains(&v))
                && window.iter().chain(&self.unknown).any(|&j| {
                    let entry = &self.history[j];
                    match (entry.op, entry.outcome) {
                        (Op::Get, Outcome::Ok(Ret::Get(seen))) => seen == v,
                        (Op::Cas { expected, .. }, _) => expected == v,
                        _ => false,
                    }
                })
        };
        let failed_swap_stuck = window.iter().any(|&j| {
            let entry = &self.history[j];
            matches!(
                (entry.op, entry.outcome),
                (Op::Cas { expected, .. }, Outcome::Ok(Ret::Cas(false))) if expected == state
            )
        });
        for &i in &self.unknown {
            let entry = &self.history[i];
            if self.is_linearized(i) || horizon.is_some_and(|h| entry.call > h) {
                continue;
            }
            let useful = match entry.op {
                Op::Put(v) => failed_swap_stuck || needs(Some(v)),
                Op::Delete => failed_swap_stuck || needs(None),
                _ => true,
            };
            if useful {
                next.push(i);
            }
        }
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
        for i in self.candidates(state) {
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
            if known == 1 {
                self.cursor = self.cursor.min(self.position[i]);
            }
        }
        false
    }
}

/// Checks `history`, the operations on the register `name`, and prints one line about it: its
/// size, its verdict, how long the check took. `Err` is the report of a violation, with times
/// in ms since `base`.
pub(crate) fn check_and_print(name: &str, history: &[Entry], base: Instant) -> Result<(), String> {
    let unknown = history.iter().filter(|e| e.outcome == Outcome::Unknown).count();
    let started = Instant::now();
    let result = check(history);
    println!(
        "  {name}: {} ops ({unknown} unknown): {} in {:?}",
        history.len(),
        if result.is_ok() {
            "linearizable"
        } else {
            "NOT linearizable"
        },
        started.elapsed()
    );
    result.map_err(|violation| format!("{name} is not linearizable: {}", violation.report(history, base)))
}

/// Whether `history` (one key's operations, from an empty key) is linearizable for a register.
/// The search recurses once per operation, so it runs on a thread with a deep stack.
pub(crate) fn check(history: &[Entry]) -> Result<(), Violation> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn_scoped(scope, || search(history))
            .expect("start the checker's thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn search(history: &[Entry]) -> Result<(), Violation> {
    let mut by_call: Vec<usize> = (0..history.len()).collect();
    by_call.sort_by_key(|&i| history[i].call);
    let (known, unknown): (Vec<usize>, Vec<usize>) = by_call
        .into_iter()
        .partition(|&i| history[i].returned().is_some());
    let mut position = vec![0; history.len()];
    for (p, &i) in known.iter().enumerate() {
        position[i] = p;
    }
    let observed = history
        .iter()
        .filter_map(|e| match (e.op, e.outcome) {
            (Op::Get, Outcome::Ok(Ret::Get(seen))) => seen,
            (Op::Cas { expected, .. }, _) => expected,
            _ => None,
        })
        .collect();
    let mut search = Search {
        history,
        known,
        position,
        cursor: 0,
        unknown,
        observed,
        linearized: vec![0; history.len().div_ceil(64)],
        path: Vec::new(),
        seen: HashSet::new(),
        deepest: (0, Vec::new(), None),
    };
    let known = search.known.len();
    if search.run(None, known, 0) {
        return Ok(());
    }
    let (_, prefix, state) = std::mem::take(&mut search.deepest);
    search.linearized.fill(0);
    search.cursor = 0;
    for &i in &prefix {
        search.flip(i);
    }
    let stuck = search.candidates(state);
    Err(Violation { prefix, state, stuck })
}

#[cfg(test)]
mod tests;

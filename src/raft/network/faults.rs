//! Test-only faults in the peer transport, for the robustness tests: links cut between members,
//! messages lost at random, and delays. Like [`crate::failpoint`], only debug builds read them;
//! in release builds every message is delivered at once and nothing here is compiled in.
//!
//! The environment variable `CONCORD_PEER_FAULTS` names a file that every member of a test
//! cluster reads (a `crate::failpoint::control_file`, at most every 20 ms), so a test changes
//! the faults of a running cluster by rewriting one file. A missing or empty file means no
//! faults. One directive a line:
//!
//! - `cut FROM TO`: every message from the member with peer URL `FROM` to `TO` is lost (a
//!   partition is one `cut` each way between each pair of members it separates);
//! - `loss PERCENT`: any message between members is lost with that chance;
//! - `delay MIN_MS MAX_MS`: every message waits a random time in that range before it goes.
//!
//! The sender decides every fate, its requests' ([`outbound`]) and their answers' ([`inbound`]),
//! since the file says what happens in both directions. A lost request was never sent, so the
//! caller reports the peer unreachable; a lost answer leaves the caller not knowing whether the
//! request took effect, exactly as a connection that breaks after sending would.

/// What becomes of one message between two members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It arrives.
    Delivered,
    /// It is lost.
    Lost,
}

/// Records this member's own peer URL, the `FROM` of its requests and the `TO` of its answers.
#[cfg(debug_assertions)]
pub fn init(own_peer_url: &str) {
    armed::init(own_peer_url);
}

/// Records nothing: faults are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn init(_own_peer_url: &str) {}

/// Waits out the delay of a request from this member to the member at `to`, then says whether
/// it is lost.
#[cfg(debug_assertions)]
pub async fn outbound(to: &str) -> Fate {
    let (fate, delay) = armed::decide(None, Some(to));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    fate
}

/// Delivers every request at once: faults are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn outbound(_to: &str) -> Fate {
    Fate::Delivered
}

/// Whether an answer that came from the member at `from` is lost on its way to this member.
#[cfg(debug_assertions)]
pub fn inbound(from: &str) -> Fate {
    armed::decide(Some(from), None).0
}

/// Delivers every answer: faults are compiled out of release builds.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn inbound(_from: &str) -> Fate {
    Fate::Delivered
}

#[cfg(debug_assertions)]
mod armed {
    use std::time::Duration;

    use super::Fate;
    use crate::failpoint::control_file::ControlFile;

    /// The faults the file names.
    #[derive(Debug, Default, Clone, PartialEq)]
    pub struct Table {
        /// Links cut, as (from, to) peer URLs.
        pub cut: Vec<(String, String)>,
        /// Chance of losing any message, in per cent.
        pub loss_percent: u32,
        /// Delay range of every message.
        pub delay: (Duration, Duration),
    }

    /// Parses the fault file; a malformed line panics (only tests write it).
    pub fn parse(text: &str) -> Table {
        let mut table = Table::default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let number = |word: &str| -> u64 {
                word.parse()
                    .unwrap_or_else(|_| panic!("bad number in peer fault line {line:?}"))
            };
            match words.as_slice() {
                ["cut", from, to] => table.cut.push((from.to_string(), to.to_string())),
                ["loss", percent] => table.loss_percent = number(percent).min(100) as u32,
                ["delay", min, max] => {
                    let (min, max) = (number(min), number(max));
                    assert!(min <= max, "delay range upside down in {line:?}");
                    table.delay = (Duration::from_millis(min), Duration::from_millis(max));
                }
                _ => panic!("unknown peer fault line {line:?}"),
            }
        }
        table
    }

    /// The file's faults, and the xorshift64 state that draws losses and delays.
    #[derive(Default)]
    struct Faults {
        table: Table,
        rng: u64,
    }

    static FILE: ControlFile<Faults> = ControlFile::new("CONCORD_PEER_FAULTS", |text, _own| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let seed = std::process::id() as u64 ^ now.map_or(0, |d| d.as_nanos() as u64);
        Faults {
            table: parse(text),
            rng: seed | 1,
        }
    });

    pub fn init(own_peer_url: &str) {
        FILE.init(own_peer_url);
    }

    /// The fate and delay of a message from `from` to `to`, `None` standing for this member.
    pub fn decide(from: Option<&str>, to: Option<&str>) -> (Fate, Duration) {
        let Some(mut current) = FILE.current() else {
            return (Fate::Delivered, Duration::ZERO);
        };
        let Some(own) = current.own().map(str::to_string) else {
            return (Fate::Delivered, Duration::ZERO);
        };
        let (from, to) = (from.unwrap_or(&own), to.unwrap_or(&own));
        let faults = current.parsed();
        let table = &faults.table;
        let cut = table.cut.iter().any(|(f, t)| f == from && t == to);
        let (loss, (min, max)) = (table.loss_percent, table.delay);
        let mut next = || {
            faults.rng ^= faults.rng << 13;
            faults.rng ^= faults.rng >> 7;
            faults.rng ^= faults.rng << 17;
            faults.rng
        };
        let lost = cut || (loss > 0 && next() % 100 < u64::from(loss));
        let spread = (max - min).as_micros() as u64;
        let delay = min + Duration::from_micros(if spread == 0 { 0 } else { next() % (spread + 1) });
        (if lost { Fate::Lost } else { Fate::Delivered }, delay)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_file_names_cuts_loss_and_delay() {
            let table = parse(
                "# a partition\ncut http://a:1 http://b:2\n\n  cut http://b:2 http://a:1\nloss 7\ndelay 1 20\n",
            );
            assert_eq!(
                table,
                Table {
                    cut: vec![
                        ("http://a:1".into(), "http://b:2".into()),
                        ("http://b:2".into(), "http://a:1".into())
                    ],
                    loss_percent: 7,
                    delay: (Duration::from_millis(1), Duration::from_millis(20)),
                }
            );
            assert_eq!(parse(""), Table::default());
        }

        #[test]
        fn malformed_lines_are_refused() {
            for bad in ["cut http://a:1", "loss many", "delay 5 1", "drop everything"] {
                assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "{bad}");
            }
        }
    }
}

//! The nemesis: one fault at a time on a running cluster, then its healing. Processes are
//! killed (`kill -9`, then restarted on their data) or paused (SIGSTOP, then SIGCONT); the
//! network between members is cut, made lossy or slow through the server's test-only peer
//! fault file (`CONCORD_PEER_FAULTS`, see `src/raft/network/faults.rs`); and members crash at
//! chosen points inside the server, armed through its failpoint file
//! (`CONCORD_FAILPOINT_FILE`, see `src/failpoint.rs`). Every member of the cluster reads both
//! files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::clock::Clocks;
use crate::cluster::harness::{Cluster, XorShift};

/// The kinds of fault, each aimed at a random member or at the leader of the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `kill -9` of a member that is not the leader, restarted at the healing.
    Kill,
    /// `kill -9` of the leader.
    KillLeader,
    /// SIGSTOP of a member that is not the leader (a long GC pause, a frozen VM).
    Pause,
    /// SIGSTOP of the leader.
    PauseLeader,
    /// The leader cut off from every other member.
    IsolateLeader,
    /// A random minority cut off from the majority.
    Minority,
    /// Two halves that only one member (the bridge) reaches both of (five members or more).
    Bridge,
    /// A share of every message between members lost.
    Loss,
    /// Every message between members delayed by a few to tens of milliseconds.
    Delay,
    /// A member crashing at a point inside the server ([`CRASH_POINTS`]), with what makes it
    /// get there: a compaction, a defragmentation, a follower that needs a snapshot.
    Crash,
    /// Leadership handed to a follower (`etcdctl move-leader`).
    MoveLeader,
    /// A follower removed from the cluster (`etcdctl member remove`), its machine replaced: it
    /// comes back half-way as a new member with the same name and URLs and no data.
    Rejoin,
    /// The wall clock of one member, or of all, stepped minutes to a day forward or back (and
    /// back again at the healing); monotonic clocks go on. Needs libfaketime ([`super::clock`]).
    ClockJump,
}

/// The server's crash points the nemesis arms (see `src/failpoint.rs`).
pub const CRASH_POINTS: [&str; 10] = [
    "wal-before-write",
    "wal-before-sync",
    "wal-after-sync",
    "apply",
    "apply-after",
    "snapshot-build",
    "snapshot-send",
    "snapshot-install",
    "compaction",
    "defrag",
];

impl Kind {
    /// Every kind a cluster of `members` can be given.
    pub fn all(members: usize) -> Vec<Kind> {
        let mut kinds = vec![
            Kind::Kill,
            Kind::KillLeader,
            Kind::Pause,
            Kind::PauseLeader,
            Kind::IsolateLeader,
            Kind::Minority,
            Kind::Loss,
            Kind::Delay,
            Kind::Crash,
            Kind::MoveLeader,
            Kind::Rejoin,
        ];
        if members >= 5 {
            kinds.push(Kind::Bridge);
        }
        if super::clock::library().is_some() {
            kinds.push(Kind::ClockJump);
        } else {
            println!("libfaketime is not installed (apt-get install libfaketime): no clock jumps");
        }
        kinds
    }
}

/// A fault in force, or healed.
#[derive(Debug, Clone)]
pub struct Injected {
    pub kind: Kind,
    /// The members it was aimed at (the cut-off side of a partition).
    pub targets: Vec<usize>,
    /// More about it: a crash's point and whether it fired, say.
    pub detail: String,
    /// How long it must be held at least (a follower killed to need a snapshot must miss one
    /// being built and the log purged past it).
    pub hold_at_least: Duration,
    pub started: Instant,
}

/// A crash armed and waiting to fire.
struct Armed {
    target: usize,
    /// A member killed so that it lags, restarted half-way so that it needs a snapshot.
    lagging: Option<usize>,
}

/// Injects and heals faults on one cluster.
pub struct Nemesis {
    /// The peer fault file every member reads.
    file: PathBuf,
    /// The failpoint file every member reads.
    failpoints: PathBuf,
    /// The crash in force.
    armed: Option<Armed>,
    pub rng: XorShift,
    /// Members stopped with SIGSTOP, to resume at the healing.
    paused: Vec<usize>,
    /// Members killed, to restart at the healing.
    killed: Vec<usize>,
    /// A member removed, to bring back as a new member half-way.
    removed: Option<usize>,
    /// The members' wall clocks, when libfaketime is there.
    clocks: Option<Clocks>,
}

impl Nemesis {
    /// A nemesis writing the peer fault `file` and the `failpoints` file (both created empty
    /// here), choosing with `seed`.
    pub fn new(file: &Path, failpoints: &Path, clocks: Option<Clocks>, seed: u64) -> Nemesis {
        std::fs::write(file, "").expect("write the peer fault file");
        std::fs::write(failpoints, "").expect("write the failpoint file");
        Nemesis {
            file: file.to_path_buf(),
            failpoints: failpoints.to_path_buf(),
            armed: None,
            rng: XorShift(seed | 1),
            paused: Vec::new(),
            killed: Vec::new(),
            removed: None,
            clocks,
        }
    }

    /// Injects a fault of `kind`. A fault aimed at the leader goes to a random member when no
    /// leader is agreed on at the moment. `compactable` is a revision every watcher has passed,
    /// which a compaction may remove the history below.
    pub fn inject(&mut self, cluster: &mut Cluster, kind: Kind, compactable: i64) -> Injected {
        let n = cluster.len();
        let leader = current_leader(cluster).unwrap_or_else(|| self.rng.below(n));
        let other = {
            let offset = 1 + self.rng.below(n - 1);
            (leader + offset) % n
        };
        let started = Instant::now();
        let mut detail = String::new();
        let mut hold_at_least = Duration::ZERO;
        let targets = match kind {
            Kind::Kill | Kind::KillLeader => {
                let target = if kind == Kind::Kill { other } else { leader };
                cluster.kill9(target);
                self.killed.push(target);
                vec![target]
            }
            Kind::Pause | Kind::PauseLeader => {
                let target = if kind == Kind::Pause { other } else { leader };
                cluster.signal(target, "STOP");
                self.paused.push(target);
                vec![target]
            }
            Kind::IsolateLeader => {
                let rest: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
                self.write(&cuts(cluster, &[vec![leader], rest]));
                vec![leader]
            }
            Kind::Minority => {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, self.rng.below(i + 1));
                }
                let (minority, majority) = order.split_at((n - 1) / 2);
                self.write(&cuts(cluster, &[minority.to_vec(), majority.to_vec()]));
                minority.to_vec()
            }
            Kind::Bridge => {
                // Members other than the bridge, in two halves that cannot reach each other.
                let bridge = self.rng.below(n);
                let rest: Vec<usize> = (0..n).filter(|&i| i != bridge).collect();
                let (left, right) = rest.split_at(rest.len() / 2);
                let mut text = String::new();
                for &a in left {
                    for &b in right {
                        text += &cut_line(cluster, a, b);
                        text += &cut_line(cluster, b, a);
                    }
                }
                self.write(&text);
                vec![bridge]
            }
            Kind::Loss => {
                let percent = 5 + self.rng.below(16);
                self.write(&format!("loss {percent}\n"));
                Vec::new()
            }
            Kind::Delay => {
                let max = 10 + self.rng.below(31);
                self.write(&format!("delay 1 {max}\n"));
                Vec::new()
            }
            Kind::Crash => {
                let point = CRASH_POINTS[self.rng.below(CRASH_POINTS.len())];
                let (target, lagging) = match point {
                    // The leader sends the snapshot; a follower killed now will need one.
                    "snapshot-send" => (leader, Some(other)),
                    // The follower killed now will need a snapshot and install it.
                    "snapshot-install" => (other, Some(other)),
                    _ if self.rng.below(2) == 0 => (leader, None),
                    _ => (other, None),
                };
                // Frequent points fire after a few hits; the others at their first.
                let hit = match point {
                    "wal-before-write" | "wal-before-sync" | "wal-after-sync" | "apply" | "apply-after" => {
                        1 + self.rng.below(40)
                    }
                    _ => 1,
                };
                let line = format!("{} {point}=abort@{hit}\n", cluster.peer_url(target));
                write_atomically(&self.failpoints, &line);
                if let Some(lagging) = lagging {
                    cluster.kill9(lagging);
                    self.killed.push(lagging);
                    // Down for over a second (restarted half-way): a few hundred writes,
                    // several snapshots of 100 and the log purged past it.
                    hold_at_least = Duration::from_millis(2500);
                }
                match point {
                    "compaction" => {
                        let via = if target == leader { other } else { leader };
                        let rev = compactable.max(1).to_string();
                        let _ = cluster
                            .member(via)
                            .etcdctl(&["--command-timeout=5s", "compact", &rev]);
                    }
                    "defrag" => {
                        let _ = cluster
                            .member(target)
                            .etcdctl(&["--command-timeout=10s", "defrag"]);
                    }
                    _ => {}
                }
                detail = format!("{point}@{hit}");
                self.armed = Some(Armed { target, lagging });
                vec![target]
            }
            Kind::MoveLeader => {
                let id = format!("{:x}", cluster.member_id(other));
                let out = cluster
                    .member(leader)
                    .etcdctl(&["--command-timeout=5s", "move-leader", &id]);
                if !out.status.success() {
                    detail = format!("refused: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
                vec![other]
            }
            Kind::ClockJump => {
                let clocks = self.clocks.as_ref().expect("clock jumps need libfaketime");
                const OFFSETS: [i64; 6] = [-86_400, -3_600, -300, 300, 3_600, 86_400];
                let offset = OFFSETS[self.rng.below(OFFSETS.len())];
                let targets: Vec<usize> = match self.rng.below(3) {
                    0 => (0..n).collect(),
                    1 => vec![leader],
                    _ => vec![other],
                };
                for &t in &targets {
                    clocks.set(cluster.name(t), offset);
                }
                detail = format!("{offset:+}s");
                // The members read their offset at most once a second.
                hold_at_least = Duration::from_millis(2500);
                targets
            }
            Kind::Rejoin => {
                cluster.remove_member(other);
                cluster.kill9(other);
                self.removed = Some(other);
                vec![other]
            }
        };
        Injected {
            kind,
            targets,
            detail,
            hold_at_least,
            started,
        }
    }

    /// Half-way through a fault: a member killed to lag behind comes back, armed, and needs a
    /// snapshot; a member removed comes back as a new one.
    pub fn midway(&mut self, cluster: &mut Cluster) {
        if let Some(removed) = self.removed.take() {
            cluster.rejoin(removed);
        }
        if let Some(lagging) = self.armed.as_ref().and_then(|a| a.lagging) {
            self.killed.retain(|&k| k != lagging);
            // Armed to crash installing a snapshot, it may do so before it listens.
            let _ = cluster.try_restart(lagging);
        }
    }

    /// Heals every fault in force: the network whole again, paused members resumed, killed
    /// ones restarted, crash points disarmed and crashed members restarted. Returns whether the
    /// armed crash fired (`None`: none was armed), and the members that exited without being
    /// meant to, which are restarted too.
    pub fn heal(&mut self, cluster: &mut Cluster) -> (Option<bool>, Vec<(usize, String)>) {
        self.write("");
        write_atomically(&self.failpoints, "");
        if let Some(clocks) = &self.clocks {
            for i in 0..cluster.len() {
                clocks.set(cluster.name(i), 0);
            }
        }
        for i in std::mem::take(&mut self.paused) {
            cluster.signal(i, "CONT");
        }
        let armed = self.armed.take();
        let fired = armed.as_ref().map(|a| !cluster.is_running(a.target));
        let mut unexpected = Vec::new();
        for i in 0..cluster.len() {
            if self.killed.contains(&i) || cluster.is_running(i) {
                continue;
            }
            if armed.as_ref().is_none_or(|a| a.target != i) {
                // Why it stopped, before a restart replaces its log.
                let mut why = cluster.log_lines_containing(i, "panicked at");
                why.extend(cluster.log_lines_containing(i, " ERROR "));
                unexpected.push((i, why.join("\n")));
            }
            if let Err(why) = cluster.try_restart(i) {
                let why = format!("and it could not start again: {why}{}", snapshots(cluster, i));
                unexpected.push((i, why));
            }
        }
        for i in std::mem::take(&mut self.killed) {
            if let Err(why) = cluster.try_restart(i) {
                let why = format!("it could not start again: {why}{}", snapshots(cluster, i));
                unexpected.push((i, why));
            }
        }
        (fired, unexpected)
    }

    /// Replaces the peer fault file's contents.
    fn write(&self, text: &str) {
        write_atomically(&self.file, text);
    }
}

/// What member `i` did with snapshots in its last run, and what its snapshot directory holds:
/// for a member that cannot start again.
fn snapshots(cluster: &Cluster, i: usize) -> String {
    let lines = cluster.log_lines_containing(i, "snapshot");
    let dir = cluster.member(i).data_dir().join("member").join("snap");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    format!(
        "\nits snapshot directory: {files:?}\nits last run's snapshot lines:\n{}",
        lines[lines.len().saturating_sub(12)..].join("\n")
    )
}

/// Replaces `file`'s contents at once (a rename, so no member reads half of it).
fn write_atomically(file: &Path, text: &str) {
    let next = file.with_extension("next");
    std::fs::write(&next, text).expect("write a fault file");
    std::fs::rename(&next, file).expect("replace a fault file");
}

/// `cut` lines both ways between every two members of different `groups`.
fn cuts(cluster: &Cluster, groups: &[Vec<usize>]) -> String {
    let mut text = String::new();
    for (g, group) in groups.iter().enumerate() {
        for other in &groups[g + 1..] {
            for &a in group {
                for &b in other {
                    text += &cut_line(cluster, a, b);
                    text += &cut_line(cluster, b, a);
                }
            }
        }
    }
    text
}

fn cut_line(cluster: &Cluster, from: usize, to: usize) -> String {
    format!("cut {} {}\n", cluster.peer_url(from), cluster.peer_url(to))
}

/// The member most running members name as leader, if any names one within a second.
pub fn current_leader(cluster: &Cluster) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut votes: Vec<(u64, usize)> = Vec::new();
        let mut ids = Vec::new();
        for i in cluster.live() {
            if let Some(status) = cluster.status(i) {
                ids.push((status.member_id, i));
                if status.leader != 0 {
                    match votes.iter_mut().find(|(id, _)| *id == status.leader) {
                        Some((_, count)) => *count += 1,
                        None => votes.push((status.leader, 1)),
                    }
                }
            }
        }
        let named = votes.iter().max_by_key(|(_, count)| *count).map(|(id, _)| *id);
        let leader = named.and_then(|id| ids.iter().find(|(m, _)| *m == id).map(|(_, i)| *i));
        if leader.is_some() || Instant::now() >= deadline {
            return leader;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

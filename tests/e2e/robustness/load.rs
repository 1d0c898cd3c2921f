//! A run's load as a whole: every task started at once, and stopped in the order that lets
//! the watchers hear of everything the others did.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use tokio::task::JoinHandle;

use super::workload::{self, PREFIX, Recorder, WatchEnd};
use super::{leases, ownership};
use crate::checkers::watch::{Event, Received};
use crate::cluster::harness::Cluster;

/// Register and pair clients per member.
const CLIENTS_PER_MEMBER: usize = 2;
/// Lock tasks, taking turns at one lock; and election tasks, campaigning in one election.
const LOCK_TASKS: usize = 2;
const ELECTION_TASKS: usize = 2;
/// How long the tasks may take to finish what they were doing once told to stop (a lease task
/// reads its key until its lease has run out).
const FINISH_WITHIN: Duration = Duration::from_secs(30);

/// The load in progress.
pub struct Load {
    /// When it started: reports give times in ms since then.
    pub started: Instant,
    recorder: Arc<Recorder>,
    tasks: Vec<JoinHandle<()>>,
    watchers: Vec<JoinHandle<Vec<Received>>>,
    watch_end: Arc<WatchEnd>,
}

/// What the load recorded, once over.
pub struct Recorded {
    /// When the load started.
    pub started: Instant,
    pub recorder: Recorder,
    /// Per watcher, what it received.
    pub watched: Vec<Vec<Received>>,
    /// The history the watchers saw together, or why they disagree.
    pub history: Result<Vec<Event>, String>,
    /// The run's last revision.
    pub last: i64,
}

impl Load {
    /// Starts every task on the members at `endpoints`: register and pair clients, one lease
    /// task and one watcher per member, the lock and election tasks.
    pub async fn start(endpoints: &[String], seed: u64) -> Load {
        let members = endpoints.len();
        let recorder = Arc::new(Recorder::new());
        let mut tasks = Vec::new();
        let mut id = 0;
        let mut next_id = |count: usize| {
            let first = id;
            id += count;
            first..id
        };
        for id in next_id(members * CLIENTS_PER_MEMBER) {
            let clients = clients(endpoints).await;
            tasks.push(tokio::spawn(workload::client_task(
                id,
                clients,
                id % members,
                seed,
                recorder.clone(),
            )));
        }
        for id in next_id(members) {
            let clients = clients(endpoints).await;
            tasks.push(tokio::spawn(leases::lease_task(
                id,
                clients,
                id % members,
                seed,
                recorder.clone(),
            )));
        }
        for id in next_id(LOCK_TASKS) {
            let clients = clients(endpoints).await;
            tasks.push(tokio::spawn(ownership::lock_task(
                id,
                clients,
                id % members,
                seed,
                recorder.clone(),
            )));
        }
        for id in next_id(ELECTION_TASKS) {
            let clients = clients(endpoints).await;
            let task = ownership::election_task(id, clients, id % members, seed, recorder.clone());
            tasks.push(tokio::spawn(task));
        }
        let watch_end = Arc::new(WatchEnd::new(members));
        let watchers = (0..members)
            .map(|m| {
                tokio::spawn(workload::watcher_task(
                    m,
                    endpoints.to_vec(),
                    m,
                    watch_end.clone(),
                ))
            })
            .collect();
        Load {
            started: Instant::now(),
            recorder,
            tasks,
            watchers,
            watch_end,
        }
    }

    /// A revision every watcher has passed, which a compaction may remove the history below.
    pub fn compactable(&self) -> i64 {
        self.watch_end.compactable()
    }

    /// Stops the tasks, reads the run's last revision through the leader, and waits for the
    /// watchers to hear of it.
    pub async fn finish(self, cluster: &Cluster, endpoints: &[String]) -> Recorded {
        self.recorder.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            tokio::time::timeout(FINISH_WITHIN, task)
                .await
                .expect("a load task did not stop")
                .unwrap();
        }
        let leader = tokio::task::block_in_place(|| cluster.wait_for_leader(Duration::from_secs(10)));
        let mut via_leader = workload::connect(&endpoints[leader]).await;
        let last = via_leader
            .get(PREFIX, Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .unwrap_or_else(|e| panic!("read the last revision: {e}\n{}", cluster.logs()))
            .header()
            .unwrap()
            .revision();
        self.watch_end.until.store(last, Ordering::Relaxed);
        self.watch_end.stop.store(true, Ordering::Relaxed);
        let mut watched = Vec::new();
        for (m, task) in self.watchers.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(received) => watched.push(received.unwrap()),
                Err(_) => panic!("the watcher that began on m{m} never heard of revision {last}"),
            }
        }
        let history = workload::merged_history(&watched);
        let recorder = Arc::into_inner(self.recorder).expect("every task has stopped");
        Recorded {
            started: self.started,
            recorder,
            watched,
            history,
            last,
        }
    }
}

/// A client of each member.
async fn clients(endpoints: &[String]) -> Vec<Client> {
    let mut clients = Vec::new();
    for endpoint in endpoints {
        clients.push(workload::connect(endpoint).await);
    }
    clients
}

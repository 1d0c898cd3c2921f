//! Prometheus metrics under etcd's names (so etcd's dashboards and alerts work), plus
//! Concord's own for its recipe services, kept in one process-wide [`Metrics`] and encoded by
//! `prometheus-client`.
//!
//! Code on the hot paths records into the handles here (fsync and commit timings, proposals,
//! peer round trips, gRPC calls by [`grpc::GrpcMetricsLayer`]); what is cheaper to read than to
//! track (sizes, indexes, counts) is read when scraped (`crate::api::metrics`); [`process`] reads
//! `/proc/self` for the `process_*` family.

pub mod grpc;
pub mod process;

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// etcd names the peer label `To`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)]
pub struct ToLabel {
    /// The peer's member ID, in hex.
    pub To: String,
}

/// Labels of a gRPC call as go-grpc-prometheus sets them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: String,
    /// The service, e.g. `etcdserverpb.KV`.
    pub grpc_service: String,
    /// The method, e.g. `Range`.
    pub grpc_method: String,
}

/// Labels of a finished gRPC call: [`GrpcLabels`] and the status code's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcHandledLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: String,
    /// The service.
    pub grpc_service: String,
    /// The method.
    pub grpc_method: String,
    /// The status code's name, as grpc-go prints it (`OK`, `NotFound`, ...).
    pub grpc_code: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric a member exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 when this member knows a leader.
    pub has_leader: Gauge,
    /// 1 when this member leads.
    pub is_leader: Gauge,
    /// 1 when this member is a learner.
    pub is_learner: Gauge,
    /// Leader changes this member has seen.
    pub leader_changes: Counter,
    /// Index of the last committed Raft entry.
    pub proposals_committed: Gauge,
    /// Index of the last applied Raft entry.
    pub proposals_applied: Gauge,
    /// Client proposals waiting for Raft.
    pub proposals_pending: Gauge,
    /// Client proposals that failed.
    pub proposals_failed: Counter,
    /// Size of the database file.
    pub db_total_size: Gauge,
    /// Bytes of the database file holding data.
    pub db_in_use: Gauge,
    /// Keys in the store (live ones).
    pub keys_total: Gauge,
    /// The store's current revision.
    pub current_revision: Gauge,
    /// The store's compacted revision.
    pub compact_revision: Gauge,
    /// Watch streams open.
    pub watch_streams: Gauge,
    /// Watchers open.
    pub watchers: Gauge,
    /// Watchers catching up from history.
    pub slow_watchers: Gauge,
    /// Time of each Raft log fdatasync.
    pub wal_fsync: Histogram,
    /// Time of each commit of applied entries to the database.
    pub backend_commit: Histogram,
    /// Time of each defragmentation.
    pub defrag_duration: Histogram,
    /// Round trips of Raft messages to each peer.
    pub peer_round_trip: Family<ToLabel, Histogram>,
    /// gRPC calls started.
    pub grpc_started: Family<GrpcLabels, Counter>,
    /// gRPC calls finished, by status code.
    pub grpc_handled: Family<GrpcHandledLabels, Counter>,
    /// Lock requests waiting for their lock (Lock service).
    pub lock_waiting: Gauge,
    /// Locks granted through the Lock service.
    pub locks_acquired: Counter,
    /// Locks granted through this member's Lock service whose key still exists.
    pub locks_held: Gauge,
    /// The keys of the locks this member's Lock service granted, until seen gone (an unlock,
    /// a lease expiry or a delete ends a lock; only the first passes through the service, so
    /// the others are found when scraped).
    pub held_lock_keys: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>>,
    /// Campaigns waiting to lead (Election service).
    pub campaigns_waiting: Gauge,
    /// Leaderships won through the Election service.
    pub leaderships_won: Counter,
    /// Service instances registered (keys under the registry's prefix).
    pub registry_instances: Gauge,
    /// Config watch streams open.
    pub config_watchers: Gauge,
    /// Total user and system CPU time, in seconds.
    pub process_cpu_seconds: FloatGauge,
    /// Resident memory, in bytes.
    pub process_resident_memory: Gauge,
    /// Virtual memory, in bytes.
    pub process_virtual_memory: Gauge,
    /// Open file descriptors.
    pub process_open_fds: Gauge,
    /// The file descriptor limit.
    pub process_max_fds: Gauge,
    /// Start time since the epoch, in seconds.
    pub process_start_time: FloatGauge,
}

fn histogram(start: f64, count: u16) -> Histogram {
    Histogram::new(exponential_buckets(start, 2.0, count))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        macro_rules! metric {
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        Metrics {
            has_leader: metric!(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
                Gauge::default()
            ),
            is_leader: metric!(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                Gauge::default()
            ),
            is_learner: metric!(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                Gauge::default()
            ),
            leader_changes: metric!(
                "etcd_server_leader_changes_seen",
                "The number of leader changes seen.",
                Counter::default()
            ),
            proposals_committed: metric!(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
                Gauge::default()
            ),
            proposals_applied: metric!(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
                Gauge::default()
            ),
            proposals_pending: metric!(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
                Gauge::default()
            ),
            proposals_failed: metric!(
                "etcd_server_proposals_failed",
                "The total number of failed proposals seen.",
                Counter::default()
            ),
            db_total_size: metric!(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                Gauge::default()
            ),
            db_in_use: metric!(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
                Gauge::default()
            ),
            keys_total: metric!(
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
                Gauge::default()
            ),
            current_revision: metric!(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
                Gauge::default()
            ),
            compact_revision: metric!(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
                Gauge::default()
            ),
            watch_streams: metric!(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
                Gauge::default()
            ),
            watchers: metric!(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
                Gauge::default()
            ),
            slow_watchers: metric!(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
                Gauge::default()
            ),
            wal_fsync: metric!(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                histogram(0.001, 14)
            ),
            backend_commit: metric!(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                histogram(0.001, 14)
            ),
            defrag_duration: metric!(
                "etcd_disk_backend_defrag_duration_seconds",
                "The latency distribution of backend defragmentation.",
                histogram(0.1, 13)
            ),
            peer_round_trip: metric!(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                Family::<ToLabel, Histogram>::new_with_constructor(|| histogram(0.0001, 16))
            ),
            grpc_started: metric!(
                "grpc_server_started",
                "Total number of RPCs started on the server.",
                Family::default()
            ),
            grpc_handled: metric!(
                "grpc_server_handled",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                Family::default()
            ),
            lock_waiting: metric!(
                "concord_lock_waiting",
                "Lock requests waiting for their lock.",
                Gauge::default()
            ),
            locks_acquired: metric!(
                "concord_lock_acquired",
                "Locks granted through the Lock service.",
                Counter::default()
            ),
            locks_held: metric!(
                "concord_locks_held",
                "Locks granted through this member's Lock service that are still held.",
                Gauge::default()
            ),
            held_lock_keys: std::sync::Mutex::default(),
            campaigns_waiting: metric!(
                "concord_election_campaigns_waiting",
                "Election campaigns waiting to lead.",
                Gauge::default()
            ),
            leaderships_won: metric!(
                "concord_election_leaderships_won",
                "Leaderships won through the Election service.",
                Counter::default()
            ),
            registry_instances: metric!(
                "concord_registry_instances",
                "Service instances registered under the registry's prefix.",
                Gauge::default()
            ),
            config_watchers: metric!(
                "concord_config_watchers",
                "Config watch streams open.",
                Gauge::default()
            ),
            process_cpu_seconds: metric!(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                FloatGauge::default()
            ),
            process_resident_memory: metric!(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Gauge::default()
            ),
            process_virtual_memory: metric!(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Gauge::default()
            ),
            process_open_fds: metric!(
                "process_open_fds",
                "Number of open file descriptors.",
                Gauge::default()
            ),
            process_max_fds: metric!(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Gauge::default()
            ),
            process_start_time: metric!(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                FloatGauge::default()
            ),
            registry,
        }
    }

    /// Every metric in the Prometheus text exposition format (OpenMetrics flavour).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %err, "cannot encode the metrics");
        }
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Records `took` in `histogram`, in seconds.
pub fn observe(histogram: &Histogram, took: Duration) {
    histogram.observe(took.as_secs_f64());
}

/// A gauge raised while this lives (a request waiting, a stream open).
#[derive(Debug)]
pub struct Raised(&'static Gauge);

impl Raised {
    /// Raises `gauge` until the result drops.
    pub fn new(gauge: &'static Gauge) -> Self {
        gauge.inc();
        Raised(gauge)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

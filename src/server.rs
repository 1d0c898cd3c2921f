//! Serving: binds the client listeners, runs the gRPC services, their HTTP/JSON gateway and
//! `/health`, and stops in order.

use std::future::Future;
use std::sync::Arc;

use concord_proto::concord::config::v1::config_server::ConfigServer;
use concord_proto::concord::pubsub::v1::pub_sub_server::PubSubServer;
use concord_proto::concord::registry::v1::registry_server::RegistryServer;
use concord_proto::etcdserverpb::auth_server::AuthServer;
use concord_proto::etcdserverpb::cluster_server::ClusterServer;
use concord_proto::etcdserverpb::kv_server::KvServer;
use concord_proto::etcdserverpb::lease_server::LeaseServer;
use concord_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use concord_proto::etcdserverpb::watch_server::WatchServer;
use concord_proto::raftpb::raft_peer_server::RaftPeerServer;
use concord_proto::v3electionpb::election_server::ElectionServer;
use concord_proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;

use crate::api::{
    Api, auth::AuthService, cluster, cluster::ClusterService, config_center::ConfigService,
    election::ElectionService, health, kv::KvService, lease::LeaseService, local_kv::LocalKv,
    lock::LockService, maintenance::MaintenanceService, metrics, pubsub::PubSubService,
    registry::RegistryService, transport_errors, watch::WatchService,
};
use crate::config::Config;
use crate::error::Error;
use crate::gateway;
use crate::lease::expiry;
use crate::member::Member;
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::net::tls::{self, TlsFiles};
use crate::net::{CoalescingStream, listen};
use crate::raft::identity::initial_members;
use crate::raft::network::PEER_MESSAGE_BYTES;
use crate::raft::peer_gate::PeerGate;
use crate::raft::peer_service::{LeaseClock, PeerService};
use crate::raft::watchdog;
use crate::{compactor, corruption};

/// Slack above `--max-request-bytes` for the gRPC decoder, so an oversized request reaches our
/// own check and gets etcd's message instead of a transport error (etcd adds the same 512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How long a starting member waits for its client URLs to be published before it serves
/// clients regardless.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds every `--listen-client-urls` address (with the system's accept backlog, as etcd).
pub async fn bind_client_listeners(config: &Config) -> Result<Vec<TcpListener>, Error> {
    let mut listeners = Vec::new();
    for addr in &config.client_addrs {
        listeners.push(listen::bind(*addr).map_err(Error::Listen)?);
    }
    Ok(listeners)
}

/// Runs a member: assembles it on the data directory ([`Member::start`]), serves peers and
/// clients until `shutdown` completes, then stops in order: serving, publishing, the lease
/// clock (after a final checkpoint), watch catch-up, and Raft.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let mut metrics_listeners = Vec::new();
    for addr in &config.metrics_addrs {
        metrics_listeners.push(listen::bind(*addr).map_err(Error::Listen)?);
    }
    let mut peer_listeners = Vec::new();
    for (addr, https) in config.peer_addrs.iter().zip(&config.peer_https) {
        peer_listeners.push((listen::bind(*addr).map_err(Error::Listen)?, *https));
    }
    let client_tls = config
        .client_tls
        .as_ref()
        .map(TlsFiles::server_config)
        .transpose()?;
    let peer_tls = config
        .peer_tls
        .as_ref()
        .map(TlsFiles::server_config)
        .transpose()?;
    let member = Member::start(&config).await?;
    tracing::info!(
        name = %member.identity.name,
        member = %format!("{:x}", member.identity.member_id),
        cluster = %format!("{:x}", member.identity.cluster_id),
        "raft started"
    );
    tokio::spawn(watchdog::run(member.raft.clone(), member.stopping.clone()));
    tokio::spawn(count_leader_changes(member.raft.clone()));
    let api = Api::new(member, &config);

    // The member's background work, each stopped in its own turn below.
    let catch_up = Stage::spawn(|stop| api.node().hub.clone().run_catch_up(stop));
    let (published_tx, mut published) = tokio::sync::watch::channel(false);
    let publisher = Stage::spawn(|stop| {
        let (api, config) = (api.clone(), config.clone());
        async move { cluster::publish(api, &config, published_tx, stop).await }
    });
    let lease_clock =
        Stage::spawn(|stop| expiry::run(api.node().lessor.clone(), api.node().raft.clone(), stop));
    let compactor = Stage::spawn(|stop| compactor::run(api.clone(), config.auto_compaction, stop));
    let corruption_check =
        Stage::spawn(|stop| corruption::run(api.clone(), config.corrupt_check_interval, stop));

    // The Lease service answers clients, and followers relaying theirs when this member leads.
    let lease_service = LeaseService::new(api.clone(), &config);
    let serving = CancellationToken::new();
    let mut servers = Vec::new();
    let peer_service = peer_service(&api, &config, Arc::new(lease_service.clone()));
    for (listener, https) in peer_listeners {
        tracing::info!(addr = %listener.local_addr()?, tls = https, "serving peer requests");
        let service = RaftPeerServer::new(peer_service.clone())
            .max_decoding_message_size(PEER_MESSAGE_BYTES)
            .max_encoding_message_size(PEER_MESSAGE_BYTES);
        let builder = tonic::transport::Server::builder().add_service(service);
        let stop = serving.clone().cancelled_owned();
        let server = match (https, &peer_tls) {
            (true, Some(tls)) => {
                tokio::spawn(builder.serve_with_incoming_shutdown(tls::incoming(listener, tls.clone()), stop))
            }
            _ => tokio::spawn(builder.serve_with_incoming_shutdown(incoming(listener), stop)),
        };
        servers.push(server);
    }
    // Like etcd, serve clients once this member's name and client URLs are in the membership,
    // so that MemberList, asked anywhere, shows them. Without quorum that may never happen: serve
    // anyway after a bound, and let requests fail with etcd's errors.
    tokio::pin!(shutdown);
    let publishing = tokio::time::timeout(PUBLISH_WAIT, published.wait_for(|done| *done));
    let stopping_early = tokio::select! {
        waited = publishing => {
            if waited.is_err() {
                tracing::warn!(
                    waited = ?PUBLISH_WAIT,
                    "client URLs not yet published (no quorum?); serving clients anyway"
                );
            }
            false
        }
        () = &mut shutdown => true,
    };
    // etcd's --experimental-initial-corrupt-check: a member whose data disagrees with its
    // peers' does not serve.
    if config.initial_corrupt_check
        && !stopping_early
        && let Err(err) = corruption::initial_check(&api).await
    {
        tracing::error!(error = %err, "refusing to serve");
        api.node().shutdown().await;
        return Err(err);
    }
    let routes = routes(&api, &config, lease_service);
    let listeners = listeners.into_iter().zip(config.client_https.iter().copied());
    for (listener, https) in listeners.filter(|_| !stopping_early) {
        tracing::info!(addr = %listener.local_addr()?, tls = https, "serving client requests");
        let builder = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(tower::util::MapResponseLayer::new(transport_errors::as_grpc_go))
            .layer(GrpcMetricsLayer)
            .add_routes(routes.clone());
        let stop = serving.clone().cancelled_owned();
        // Serving our own listener skips tonic's socket options; CoalescingStream turns
        // Nagle off and batches the connection's writes itself (see `crate::net`).
        let server = match (https, &client_tls) {
            (true, Some(tls)) => {
                tokio::spawn(builder.serve_with_incoming_shutdown(tls::incoming(listener, tls.clone()), stop))
            }
            _ => tokio::spawn(builder.serve_with_incoming_shutdown(incoming(listener), stop)),
        };
        servers.push(server);
    }

    // `--listen-metrics-urls`: `/metrics` and the health endpoints on their own port.
    for listener in metrics_listeners.into_iter().filter(|_| !stopping_early) {
        tracing::info!(addr = %listener.local_addr()?, "serving metrics");
        let routes = Routes::from(
            axum::Router::new()
                .merge(health::router(api.clone()))
                .merge(metrics::router(api.clone())),
        );
        let builder = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes);
        let stop = serving.clone().cancelled_owned();
        servers.push(tokio::spawn(
            builder.serve_with_incoming_shutdown(incoming(listener), stop),
        ));
    }

    if !stopping_early {
        shutdown.await;
    }
    tracing::info!("shutting down");
    serving.cancel();
    // Open streams (a watch) never end by themselves: like etcd, wait for requests in flight
    // up to the request timeout, then close what is left.
    let graceful_until = tokio::time::Instant::now() + api.request_timeout();
    for mut server in servers {
        match tokio::time::timeout_at(graceful_until, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "server stopped with an error"),
            Ok(Err(err)) => tracing::warn!(error = %err, "server task failed"),
            Err(_) => {
                tracing::info!("closing the connections still open");
                server.abort();
            }
        }
    }
    publisher.stop().await;
    compactor.stop().await;
    corruption_check.stop().await;
    expiry::final_checkpoint(&api.node().lessor, &api.node().raft, config.election_timeout).await;
    lease_clock.stop().await;
    catch_up.stop().await;
    api.node().shutdown().await;
    Ok(())
}

/// Counts the leader changes this member sees (`etcd_server_leader_changes_seen_total`), until
/// Raft stops. It watches the server metrics, which change with the vote, state, leader and
/// membership only: the full metrics change with every commit, and each change would wake it.
async fn count_leader_changes(raft: crate::raft::Raft) {
    use openraft::async_runtime::WatchReceiver;
    let mut watched = raft.server_metrics();
    let mut last = None;
    loop {
        let leader = watched.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            crate::metrics::get().leader_changes.inc();
        }
        last = leader;
        if watched.changed().await.is_err() {
            return;
        }
    }
}

/// A background task that runs until its turn in the ordered stop: told to stop, then
/// waited for.
struct Stage {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Stage {
    /// Spawns `run`, handing it the future that completes when the stage is told to stop.
    fn spawn<F>(run: impl FnOnce(WaitForCancellationFutureOwned) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone().cancelled_owned()));
        Stage { stop, task }
    }

    /// Tells the task to stop and waits until it has.
    async fn stop(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            tracing::warn!(error = %err, "a background task failed");
        }
    }
}

/// The peer service, admitting only members of this cluster; lease relays go to `clock`.
fn peer_service(api: &Arc<Api>, config: &Config, clock: Arc<dyn LeaseClock>) -> PeerService {
    let member = api.node();
    let gate = PeerGate::new(
        member.raft.clone(),
        member.peers.clone(),
        member.identity.member_id,
        member.identity.cluster_id,
        initial_members(config),
    );
    PeerService::new(
        member.raft.clone(),
        member.store.clone(),
        gate,
        clock,
        member.snapshot_dir.clone(),
        api.request_timeout(),
        api.admission(),
    )
}

/// Accepted connections, wrapped for write coalescing.
fn incoming(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<CoalescingStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| accepted.and_then(CoalescingStream::new))
}

/// Every client service, with etcd's limits. Like etcd (grpc-go), a server accepts
/// gzip-compressed requests and answers uncompressed.
fn routes(api: &Arc<Api>, config: &Config, lease_service: LeaseService) -> Routes {
    let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    // Every client service takes requests up to the limit, compressed with gzip or not, and
    // answers without a limit of its own (a range answer may be large).
    macro_rules! client_service {
        ($server:expr) => {
            $server
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX)
                .accept_compressed(CompressionEncoding::Gzip)
        };
    }
    let kv_service = KvService::new(api.clone());
    let recipes_kv = LocalKv::new(api, kv_service.clone(), lease_service.clone());
    let progress_interval = config.watch_progress_notify_interval;
    let mut routes = Routes::new(client_service!(KvServer::new(kv_service)))
        .add_service(client_service!(ClusterServer::new(ClusterService::new(
            api.clone(),
            config
        ))))
        .add_service(client_service!(MaintenanceServer::new(MaintenanceService::new(
            api.clone()
        ))))
        .add_service(client_service!(WatchServer::new(WatchService::new(
            api.clone(),
            progress_interval
        ))))
        .add_service(client_service!(LeaseServer::new(lease_service)))
        .add_service(client_service!(AuthServer::new(AuthService::new(api.clone()))))
        .add_service(client_service!(LockServer::new(LockService::new(
            recipes_kv.clone()
        ))))
        .add_service(client_service!(ElectionServer::new(ElectionService::new(
            recipes_kv.clone()
        ))))
        .add_service(client_service!(RegistryServer::new(RegistryService::new(
            api.clone(),
            recipes_kv.clone()
        ))))
        .add_service(client_service!(ConfigServer::new(ConfigService::new(
            api.clone(),
            recipes_kv.clone(),
            config.config_history_limit
        ))))
        .add_service(client_service!(PubSubServer::new(PubSubService::new(
            api.clone(),
            recipes_kv
        ))));
    // The HTTP/JSON gateway calls the gRPC services above; a JSON request may take twice the
    // gRPC limit (base64 makes bytes a third longer).
    let gateway = gateway::router(routes.clone(), 2 * max_message);
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router
        .merge(gateway)
        .merge(health::router(api.clone()))
        .merge(metrics::router(api.clone()));
    routes
}

//! Serving: binds the client listeners, runs the gRPC services and `/health`, and stops in order.

use std::future::Future;
use std::sync::Arc;

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
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;

use crate::api::{
    Api, cluster, cluster::ClusterService, election::ElectionService, health, kv::KvService,
    lease::LeaseService, local_kv::LocalKv, lock::LockService, maintenance::MaintenanceService, metrics,
    transport_errors, watch::WatchService,
};
use crate::config::Config;
use crate::error::Error;
use crate::lease::expiry;
use crate::net::{CoalescingStream, listen};
use crate::raft::network::PEER_MESSAGE_BYTES;
use crate::raft::node::initial_members;
use crate::raft::peer_gate::PeerGate;
use crate::raft::peer_service::PeerService;
use crate::raft::{RaftNode, watchdog};

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

/// Runs a member: starts Raft on the data directory, serves clients on `listeners` until
/// `shutdown` completes, then stops serving, shuts Raft down and closes the databases.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let mut peer_listeners = Vec::new();
    for addr in &config.peer_addrs {
        peer_listeners.push(listen::bind(*addr).map_err(Error::Listen)?);
    }
    let node = RaftNode::start(&config).await?;
    tracing::info!(
        name = %node.identity.name,
        member = %format!("{:x}", node.identity.member_id),
        cluster = %format!("{:x}", node.identity.cluster_id),
        "raft started"
    );
    tokio::spawn(watchdog::run(node.raft.clone(), node.stopping.clone()));
    let api = Api::new(node, &config);
    let routes = routes(&api, &config);
    let (stop_catch_up, catch_up_stopped) = tokio::sync::oneshot::channel::<()>();
    let catch_up = tokio::spawn(api.node().hub.clone().run_catch_up(async move {
        let _ = catch_up_stopped.await;
    }));
    let (stop_publish, publish_stopped) = tokio::sync::oneshot::channel::<()>();
    let (published_tx, mut published) = tokio::sync::watch::channel(false);
    let publisher = {
        let (api, config) = (api.clone(), config.clone());
        tokio::spawn(async move {
            cluster::publish(api, &config, published_tx, async move {
                let _ = publish_stopped.await;
            })
            .await;
        })
    };
    let (stop_leases, leases_stopped) = tokio::sync::oneshot::channel::<()>();
    let lease_clock = tokio::spawn(expiry::run(
        api.node().lessor.clone(),
        api.node().raft.clone(),
        async move {
            let _ = leases_stopped.await;
        },
    ));

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    let node = api.node();
    let gate = PeerGate::new(
        node.raft.clone(),
        node.peers.clone(),
        node.identity.member_id,
        node.identity.cluster_id,
        initial_members(&config),
    );
    let peer_service = PeerService::new(
        api.node().raft.clone(),
        gate,
        api.node().identity.cluster_id,
        api.node().snapshot_dir.clone(),
        api.request_timeout(),
        api.admission(),
    );
    for listener in peer_listeners {
        tracing::info!(addr = %listener.local_addr()?, "serving peer requests");
        let mut stop = stop_tx.subscribe();
        let service = RaftPeerServer::new(peer_service.clone())
            .max_decoding_message_size(PEER_MESSAGE_BYTES)
            .max_encoding_message_size(PEER_MESSAGE_BYTES);
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming(listener), async move {
                let _ = stop.recv().await;
            });
        servers.push(tokio::spawn(server));
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
    for listener in listeners.into_iter().filter(|_| !stopping_early) {
        tracing::info!(addr = %listener.local_addr()?, "serving client requests");
        let mut stop = stop_tx.subscribe();
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(tower::util::MapResponseLayer::new(transport_errors::as_grpc_go))
            .add_routes(routes.clone())
            // Serving our own listener skips tonic's socket options; CoalescingStream turns
            // Nagle off and batches the connection's writes itself (see `crate::net`).
            .serve_with_incoming_shutdown(incoming(listener), async move {
                let _ = stop.recv().await;
            });
        servers.push(tokio::spawn(server));
    }

    if !stopping_early {
        shutdown.await;
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
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
    let _ = stop_publish.send(());
    let _ = publisher.await;
    expiry::final_checkpoint(&api.node().lessor, &api.node().raft, config.election_timeout).await;
    let _ = stop_leases.send(());
    let _ = lease_clock.await;
    let _ = stop_catch_up.send(());
    let _ = catch_up.await;
    api.node().shutdown().await;
    Ok(())
}

/// Accepted connections, wrapped for write coalescing.
fn incoming(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<CoalescingStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| accepted.and_then(CoalescingStream::new))
}

/// Every client service, with etcd's limits. Like etcd (grpc-go), a server accepts
/// gzip-compressed requests and answers uncompressed.
fn routes(api: &Arc<Api>, config: &Config) -> Routes {
    let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let kv_service = KvService::new(api.clone());
    let lease_service = LeaseService::new(api.clone(), config);
    let recipes_kv = LocalKv::new(api, kv_service.clone(), lease_service.clone());
    let kv = KvServer::new(kv_service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    let maintenance = MaintenanceServer::new(MaintenanceService::new(api.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    let watch = WatchServer::new(WatchService::new(
        api.clone(),
        config.watch_progress_notify_interval,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(usize::MAX)
    .accept_compressed(CompressionEncoding::Gzip);
    let lease = LeaseServer::new(lease_service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    let cluster = ClusterServer::new(ClusterService::new(api.clone(), config))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    let lock = LockServer::new(LockService::new(recipes_kv.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    let election = ElectionServer::new(ElectionService::new(recipes_kv))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip);
    let mut routes = Routes::new(kv)
        .add_service(cluster)
        .add_service(maintenance)
        .add_service(watch)
        .add_service(lease)
        .add_service(lock)
        .add_service(election);
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router
        .merge(health::router(api.clone()))
        .merge(metrics::router(api.clone()));
    routes
}

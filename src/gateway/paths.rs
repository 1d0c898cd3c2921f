//! The gateway's paths and the gRPC methods they stand for: etcd's, as its `.proto` files
//! annotate them, and Concord's own under `/v1/<service>/<method in kebab case>`.

use axum::extract::Request;
use axum::response::Response;
use axum::routing::{MethodRouter, post};
use concord_proto::concord::{config::v1 as config, pubsub::v1 as pubsub, registry::v1 as registry};
use concord_proto::etcdserverpb as pb;
use concord_proto::rpctypes;
use concord_proto::{v3electionpb as election, v3lockpb as lock};

use super::json;
use super::loopback::{JsonAnswer, JsonMessage, Loopback};

/// etcd's paths (after the prefix) and the methods they stand for, as etcd's `.proto` files
/// annotate them.
pub fn etcd_methods(calls: &Loopback) -> Vec<(&'static str, MethodRouter)> {
    vec![
        (
            "/kv/range",
            unary::<pb::RangeRequest, pb::RangeResponse>(calls, "/etcdserverpb.KV/Range"),
        ),
        (
            "/kv/put",
            unary::<pb::PutRequest, pb::PutResponse>(calls, "/etcdserverpb.KV/Put"),
        ),
        (
            "/kv/deleterange",
            unary::<pb::DeleteRangeRequest, pb::DeleteRangeResponse>(calls, "/etcdserverpb.KV/DeleteRange"),
        ),
        (
            "/kv/txn",
            unary::<pb::TxnRequest, pb::TxnResponse>(calls, "/etcdserverpb.KV/Txn"),
        ),
        (
            "/kv/compaction",
            unary::<pb::CompactionRequest, pb::CompactionResponse>(calls, "/etcdserverpb.KV/Compact"),
        ),
        (
            "/watch",
            streaming::<pb::WatchRequest, pb::WatchResponse>(calls, "/etcdserverpb.Watch/Watch"),
        ),
        (
            "/lease/grant",
            unary::<pb::LeaseGrantRequest, pb::LeaseGrantResponse>(calls, "/etcdserverpb.Lease/LeaseGrant"),
        ),
        ("/lease/revoke", lease_revoke(calls)),
        ("/kv/lease/revoke", lease_revoke(calls)),
        (
            "/lease/keepalive",
            streaming::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>(
                calls,
                "/etcdserverpb.Lease/LeaseKeepAlive",
            ),
        ),
        ("/lease/timetolive", lease_time_to_live(calls)),
        ("/kv/lease/timetolive", lease_time_to_live(calls)),
        ("/lease/leases", lease_leases(calls)),
        ("/kv/lease/leases", lease_leases(calls)),
        (
            "/cluster/member/add",
            unary::<pb::MemberAddRequest, pb::MemberAddResponse>(calls, "/etcdserverpb.Cluster/MemberAdd"),
        ),
        (
            "/cluster/member/remove",
            unary::<pb::MemberRemoveRequest, pb::MemberRemoveResponse>(
                calls,
                "/etcdserverpb.Cluster/MemberRemove",
            ),
        ),
        (
            "/cluster/member/update",
            unary::<pb::MemberUpdateRequest, pb::MemberUpdateResponse>(
                calls,
                "/etcdserverpb.Cluster/MemberUpdate",
            ),
        ),
        (
            "/cluster/member/list",
            unary::<pb::MemberListRequest, pb::MemberListResponse>(calls, "/etcdserverpb.Cluster/MemberList"),
        ),
        (
            "/cluster/member/promote",
            unary::<pb::MemberPromoteRequest, pb::MemberPromoteResponse>(
                calls,
                "/etcdserverpb.Cluster/MemberPromote",
            ),
        ),
        (
            "/maintenance/alarm",
            unary::<pb::AlarmRequest, pb::AlarmResponse>(calls, "/etcdserverpb.Maintenance/Alarm"),
        ),
        (
            "/maintenance/status",
            unary::<pb::StatusRequest, pb::StatusResponse>(calls, "/etcdserverpb.Maintenance/Status"),
        ),
        (
            "/maintenance/defragment",
            unary::<pb::DefragmentRequest, pb::DefragmentResponse>(
                calls,
                "/etcdserverpb.Maintenance/Defragment",
            ),
        ),
        // etcd annotates Hash and HashKV with the same path; its gateway serves Hash there.
        (
            "/maintenance/hash",
            unary::<pb::HashRequest, pb::HashResponse>(calls, "/etcdserverpb.Maintenance/Hash"),
        ),
        (
            "/maintenance/hashkv",
            unary::<pb::HashKvRequest, pb::HashKvResponse>(calls, "/etcdserverpb.Maintenance/HashKV"),
        ),
        (
            "/maintenance/snapshot",
            server_streaming::<pb::SnapshotRequest, pb::SnapshotResponse>(
                calls,
                "/etcdserverpb.Maintenance/Snapshot",
            ),
        ),
        (
            "/maintenance/transfer-leadership",
            unary::<pb::MoveLeaderRequest, pb::MoveLeaderResponse>(
                calls,
                "/etcdserverpb.Maintenance/MoveLeader",
            ),
        ),
        (
            "/maintenance/downgrade",
            unary::<pb::DowngradeRequest, pb::DowngradeResponse>(
                calls,
                "/etcdserverpb.Maintenance/Downgrade",
            ),
        ),
        (
            "/auth/enable",
            unary::<pb::AuthEnableRequest, pb::AuthEnableResponse>(calls, "/etcdserverpb.Auth/AuthEnable"),
        ),
        (
            "/auth/disable",
            unary::<pb::AuthDisableRequest, pb::AuthDisableResponse>(calls, "/etcdserverpb.Auth/AuthDisable"),
        ),
        (
            "/auth/status",
            unary::<pb::AuthStatusRequest, pb::AuthStatusResponse>(calls, "/etcdserverpb.Auth/AuthStatus"),
        ),
        (
            "/auth/authenticate",
            unary::<pb::AuthenticateRequest, pb::AuthenticateResponse>(
                calls,
                "/etcdserverpb.Auth/Authenticate",
            ),
        ),
        (
            "/auth/user/add",
            unary::<pb::AuthUserAddRequest, pb::AuthUserAddResponse>(calls, "/etcdserverpb.Auth/UserAdd"),
        ),
        (
            "/auth/user/get",
            unary::<pb::AuthUserGetRequest, pb::AuthUserGetResponse>(calls, "/etcdserverpb.Auth/UserGet"),
        ),
        (
            "/auth/user/list",
            unary::<pb::AuthUserListRequest, pb::AuthUserListResponse>(calls, "/etcdserverpb.Auth/UserList"),
        ),
        (
            "/auth/user/delete",
            unary::<pb::AuthUserDeleteRequest, pb::AuthUserDeleteResponse>(
                calls,
                "/etcdserverpb.Auth/UserDelete",
            ),
        ),
        (
            "/auth/user/changepw",
            unary::<pb::AuthUserChangePasswordRequest, pb::AuthUserChangePasswordResponse>(
                calls,
                "/etcdserverpb.Auth/UserChangePassword",
            ),
        ),
        (
            "/auth/user/grant",
            unary::<pb::AuthUserGrantRoleRequest, pb::AuthUserGrantRoleResponse>(
                calls,
                "/etcdserverpb.Auth/UserGrantRole",
            ),
        ),
        (
            "/auth/user/revoke",
            unary::<pb::AuthUserRevokeRoleRequest, pb::AuthUserRevokeRoleResponse>(
                calls,
                "/etcdserverpb.Auth/UserRevokeRole",
            ),
        ),
        (
            "/auth/role/add",
            unary::<pb::AuthRoleAddRequest, pb::AuthRoleAddResponse>(calls, "/etcdserverpb.Auth/RoleAdd"),
        ),
        (
            "/auth/role/get",
            unary::<pb::AuthRoleGetRequest, pb::AuthRoleGetResponse>(calls, "/etcdserverpb.Auth/RoleGet"),
        ),
        (
            "/auth/role/list",
            unary::<pb::AuthRoleListRequest, pb::AuthRoleListResponse>(calls, "/etcdserverpb.Auth/RoleList"),
        ),
        (
            "/auth/role/delete",
            unary::<pb::AuthRoleDeleteRequest, pb::AuthRoleDeleteResponse>(
                calls,
                "/etcdserverpb.Auth/RoleDelete",
            ),
        ),
        (
            "/auth/role/grant",
            unary::<pb::AuthRoleGrantPermissionRequest, pb::AuthRoleGrantPermissionResponse>(
                calls,
                "/etcdserverpb.Auth/RoleGrantPermission",
            ),
        ),
        (
            "/auth/role/revoke",
            unary::<pb::AuthRoleRevokePermissionRequest, pb::AuthRoleRevokePermissionResponse>(
                calls,
                "/etcdserverpb.Auth/RoleRevokePermission",
            ),
        ),
        (
            "/lock/lock",
            unary::<lock::LockRequest, lock::LockResponse>(calls, "/v3lockpb.Lock/Lock"),
        ),
        (
            "/lock/unlock",
            unary::<lock::UnlockRequest, lock::UnlockResponse>(calls, "/v3lockpb.Lock/Unlock"),
        ),
        (
            "/election/campaign",
            unary::<election::CampaignRequest, election::CampaignResponse>(
                calls,
                "/v3electionpb.Election/Campaign",
            ),
        ),
        (
            "/election/proclaim",
            unary::<election::ProclaimRequest, election::ProclaimResponse>(
                calls,
                "/v3electionpb.Election/Proclaim",
            ),
        ),
        (
            "/election/leader",
            unary::<election::LeaderRequest, election::LeaderResponse>(
                calls,
                "/v3electionpb.Election/Leader",
            ),
        ),
        (
            "/election/observe",
            server_streaming::<election::LeaderRequest, election::LeaderResponse>(
                calls,
                "/v3electionpb.Election/Observe",
            ),
        ),
        (
            "/election/resign",
            unary::<election::ResignRequest, election::ResignResponse>(
                calls,
                "/v3electionpb.Election/Resign",
            ),
        ),
    ]
}

/// Concord's own services: `/v1/<service>/<method>`, the method's name in kebab case.
pub fn concord_methods(calls: &Loopback) -> Vec<(&'static str, MethodRouter)> {
    vec![
        (
            "/v1/registry/register",
            unary::<registry::RegisterRequest, registry::RegisterResponse>(
                calls,
                "/concord.registry.v1.Registry/Register",
            ),
        ),
        (
            "/v1/registry/deregister",
            unary::<registry::DeregisterRequest, registry::DeregisterResponse>(
                calls,
                "/concord.registry.v1.Registry/Deregister",
            ),
        ),
        (
            "/v1/registry/drain",
            unary::<registry::DrainRequest, registry::DrainResponse>(
                calls,
                "/concord.registry.v1.Registry/Drain",
            ),
        ),
        (
            "/v1/registry/list",
            unary::<registry::ListRequest, registry::ListResponse>(
                calls,
                "/concord.registry.v1.Registry/List",
            ),
        ),
        (
            "/v1/registry/watch",
            server_streaming::<registry::WatchRequest, registry::WatchResponse>(
                calls,
                "/concord.registry.v1.Registry/Watch",
            ),
        ),
        (
            "/v1/config/put",
            unary::<config::PutRequest, config::PutResponse>(calls, "/concord.config.v1.Config/Put"),
        ),
        (
            "/v1/config/get",
            unary::<config::GetRequest, config::GetResponse>(calls, "/concord.config.v1.Config/Get"),
        ),
        (
            "/v1/config/history",
            unary::<config::HistoryRequest, config::HistoryResponse>(
                calls,
                "/concord.config.v1.Config/History",
            ),
        ),
        (
            "/v1/config/rollback",
            unary::<config::RollbackRequest, config::PutResponse>(
                calls,
                "/concord.config.v1.Config/Rollback",
            ),
        ),
        (
            "/v1/config/watch",
            server_streaming::<config::WatchRequest, config::WatchResponse>(
                calls,
                "/concord.config.v1.Config/Watch",
            ),
        ),
        (
            "/v1/config/set-schema",
            unary::<config::SetSchemaRequest, config::SetSchemaResponse>(
                calls,
                "/concord.config.v1.Config/SetSchema",
            ),
        ),
        (
            "/v1/config/get-schema",
            unary::<config::GetSchemaRequest, config::GetSchemaResponse>(
                calls,
                "/concord.config.v1.Config/GetSchema",
            ),
        ),
        (
            "/v1/config/report",
            unary::<config::ReportRequest, config::ReportResponse>(calls, "/concord.config.v1.Config/Report"),
        ),
        (
            "/v1/config/status",
            unary::<config::StatusRequest, config::StatusResponse>(calls, "/concord.config.v1.Config/Status"),
        ),
        (
            "/v1/pubsub/publish",
            unary::<pubsub::PublishRequest, pubsub::PublishResponse>(
                calls,
                "/concord.pubsub.v1.PubSub/Publish",
            ),
        ),
        (
            "/v1/pubsub/subscribe",
            server_streaming::<pubsub::SubscribeRequest, pubsub::SubscribeResponse>(
                calls,
                "/concord.pubsub.v1.PubSub/Subscribe",
            ),
        ),
        (
            "/v1/pubsub/set-retention",
            unary::<pubsub::SetRetentionRequest, pubsub::SetRetentionResponse>(
                calls,
                "/concord.pubsub.v1.PubSub/SetRetention",
            ),
        ),
        (
            "/v1/pubsub/topic-status",
            unary::<pubsub::TopicStatusRequest, pubsub::TopicStatusResponse>(
                calls,
                "/concord.pubsub.v1.PubSub/TopicStatus",
            ),
        ),
    ]
}

/// LeaseRevoke, served at two paths (etcd 3.4 clients use `/v3/kv/lease/revoke`).
fn lease_revoke(calls: &Loopback) -> MethodRouter {
    unary::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>(calls, "/etcdserverpb.Lease/LeaseRevoke")
}

/// LeaseTimeToLive, served at two paths.
fn lease_time_to_live(calls: &Loopback) -> MethodRouter {
    unary::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>(
        calls,
        "/etcdserverpb.Lease/LeaseTimeToLive",
    )
}

/// LeaseLeases, served at two paths.
fn lease_leases(calls: &Loopback) -> MethodRouter {
    unary::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>(calls, "/etcdserverpb.Lease/LeaseLeases")
}

/// `POST` for a unary gRPC method.
fn unary<Req: JsonMessage, Resp: JsonAnswer>(calls: &Loopback, method: &'static str) -> MethodRouter {
    let calls = calls.clone();
    post(move |request: Request| async move { calls.unary::<Req, Resp>(method, request).await })
        .fallback(method_not_allowed)
}

/// `POST` for a server-streaming gRPC method.
fn server_streaming<Req: JsonMessage, Resp: JsonAnswer>(
    calls: &Loopback,
    method: &'static str,
) -> MethodRouter {
    let calls = calls.clone();
    post(move |request: Request| async move { calls.server_streaming::<Req, Resp>(method, request).await })
        .fallback(method_not_allowed)
}

/// `POST` for a bidirectional gRPC method.
fn streaming<Req: JsonMessage, Resp: JsonAnswer>(calls: &Loopback, method: &'static str) -> MethodRouter {
    let calls = calls.clone();
    post(move |request: Request| async move { calls.streaming::<Req, Resp>(method, request).await })
        .fallback(method_not_allowed)
}

/// A method other than `POST` on a method's path.
async fn method_not_allowed() -> Response {
    let mut response = json::error(&rpctypes::GATEWAY_POST_ONLY.status());
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}

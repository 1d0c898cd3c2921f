//! etcd's client-visible errors, each defined once: its gRPC code and the text clients match
//! on (etcd keeps exactly this in `api/v3rpc/rpctypes`, in the module its server and clients
//! share). The server's error types, the recipes and the Rust client all take their texts from
//! here, and recognise a status with the predicates below, so a reworded message cannot break
//! a retry without breaking the build.
//!
//! The codes are the ones Concord answers with; where that differs from etcd 3.5's table the
//! constant says so.

use tonic::{Code, Status};

/// One of etcd's errors: the gRPC code a server answers with and the text clients match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcError {
    code: Code,
    text: &'static str,
}

impl RpcError {
    const fn new(code: Code, text: &'static str) -> Self {
        Self { code, text }
    }

    /// The gRPC code.
    pub const fn code(&self) -> Code {
        self.code
    }

    /// The text, word for word as etcd's.
    pub const fn text(&self) -> &'static str {
        self.text
    }

    /// The status a server answers with.
    pub fn status(&self) -> Status {
        Status::new(self.code, self.text)
    }

    /// Whether `status` is this error. Like etcd's clients, this goes by the text: the Lock
    /// and Election services pass errors on with the code `Unknown`.
    pub fn is(&self, status: &Status) -> bool {
        status.message() == self.text
    }
}

// Requests (etcd's `v3rpc/key.go` checks).

/// `etcdserver: key is not provided`.
pub const EMPTY_KEY: RpcError = RpcError::new(Code::InvalidArgument, "etcdserver: key is not provided");
/// `etcdserver: key not found` (`ignore_value`/`ignore_lease` on a missing key, an empty op).
pub const KEY_NOT_FOUND: RpcError = RpcError::new(Code::InvalidArgument, "etcdserver: key not found");
/// `etcdserver: value is provided`.
pub const VALUE_PROVIDED: RpcError = RpcError::new(Code::InvalidArgument, "etcdserver: value is provided");
/// `etcdserver: lease is provided`.
pub const LEASE_PROVIDED: RpcError = RpcError::new(Code::InvalidArgument, "etcdserver: lease is provided");
/// `etcdserver: too many operations in txn request`.
pub const TOO_MANY_OPS: RpcError = RpcError::new(
    Code::InvalidArgument,
    "etcdserver: too many operations in txn request",
);
/// `etcdserver: duplicate key given in txn request`.
pub const DUPLICATE_KEY: RpcError = RpcError::new(
    Code::InvalidArgument,
    "etcdserver: duplicate key given in txn request",
);
/// `etcdserver: invalid sort option`.
pub const INVALID_SORT_OPTION: RpcError =
    RpcError::new(Code::InvalidArgument, "etcdserver: invalid sort option");
/// `etcdserver: request is too large` (over `--max-request-bytes`).
pub const REQUEST_TOO_LARGE: RpcError =
    RpcError::new(Code::InvalidArgument, "etcdserver: request is too large");

// History.

/// `etcdserver: mvcc: required revision has been compacted`.
pub const COMPACTED: RpcError = RpcError::new(
    Code::OutOfRange,
    "etcdserver: mvcc: required revision has been compacted",
);
/// `etcdserver: mvcc: required revision is a future revision`.
pub const FUTURE_REV: RpcError = RpcError::new(
    Code::OutOfRange,
    "etcdserver: mvcc: required revision is a future revision",
);

// Leases.

/// `etcdserver: requested lease not found`.
pub const LEASE_NOT_FOUND: RpcError = RpcError::new(Code::NotFound, "etcdserver: requested lease not found");
/// `etcdserver: lease already exists`.
pub const LEASE_EXISTS: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: lease already exists");
/// `etcdserver: mvcc: database space exceeded`: the NOSPACE alarm is raised, or this write
/// would take the database past its quota.
pub const NO_SPACE: RpcError = RpcError::new(
    Code::ResourceExhausted,
    "etcdserver: mvcc: database space exceeded",
);
/// `etcdserver: corrupt cluster`: the CORRUPT alarm is raised.
pub const CORRUPT: RpcError = RpcError::new(Code::DataLoss, "etcdserver: corrupt cluster");
/// `etcdserver: too large lease TTL`.
pub const LEASE_TTL_TOO_LARGE: RpcError = RpcError::new(Code::OutOfRange, "etcdserver: too large lease TTL");

// Members.

/// `etcdserver: member not found`.
pub const MEMBER_NOT_FOUND: RpcError = RpcError::new(Code::NotFound, "etcdserver: member not found");
/// `etcdserver: Peer URLs already exists`.
pub const PEER_URL_EXISTS: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: Peer URLs already exists");
/// `etcdserver: can only promote a learner member`.
pub const MEMBER_NOT_LEARNER: RpcError = RpcError::new(
    Code::FailedPrecondition,
    "etcdserver: can only promote a learner member",
);
/// `etcdserver: can only promote a learner member which is in sync with leader`.
pub const LEARNER_NOT_READY: RpcError = RpcError::new(
    Code::FailedPrecondition,
    "etcdserver: can only promote a learner member which is in sync with leader",
);
/// `etcdserver: re-configuration failed due to not enough started members`.
pub const NOT_ENOUGH_STARTED_MEMBERS: RpcError = RpcError::new(
    Code::FailedPrecondition,
    "etcdserver: re-configuration failed due to not enough started members",
);
/// `etcdserver: member peer URLs are not provided` (a MemberAdd or MemberUpdate without any).
pub const MEMBER_PEER_URLS_MISSING: RpcError = RpcError::new(
    Code::InvalidArgument,
    "etcdserver: member peer URLs are not provided",
);
/// `etcdserver: bad leader transferee` (MoveLeader to a member that cannot lead).
pub const BAD_LEADER_TRANSFEREE: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: bad leader transferee");

// The server's state.

/// `etcdserver: no leader`.
pub const NO_LEADER: RpcError = RpcError::new(Code::Unavailable, "etcdserver: no leader");
/// `etcdserver: not leader` (etcd 3.5 answers it with `FailedPrecondition`; Concord with
/// `Unavailable`, which clients retry).
pub const NOT_LEADER: RpcError = RpcError::new(Code::Unavailable, "etcdserver: not leader");
/// `etcdserver: leader changed`: the leader changed while the request was in its log, so it
/// may or may not have taken effect.
pub const LEADER_CHANGED: RpcError = RpcError::new(Code::Unavailable, "etcdserver: leader changed");
/// `etcdserver: request timed out`.
pub const TIMEOUT: RpcError = RpcError::new(Code::Unavailable, "etcdserver: request timed out");
/// `etcdserver: server stopped`.
pub const STOPPED: RpcError = RpcError::new(Code::Unavailable, "etcdserver: server stopped");

// Auth (etcd's `ErrGRPC*` of the auth store, codes as etcd 3.5's).

/// `etcdserver: root user does not exist` (AuthEnable before a `root` user exists).
pub const ROOT_USER_NOT_EXIST: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: root user does not exist");
/// `etcdserver: root user does not have root role` (AuthEnable while `root` lacks the role).
pub const ROOT_ROLE_NOT_EXIST: RpcError = RpcError::new(
    Code::FailedPrecondition,
    "etcdserver: root user does not have root role",
);
/// `etcdserver: user name already exists`.
pub const USER_ALREADY_EXIST: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: user name already exists");
/// `etcdserver: user name is empty` (also: a request without a user while auth is on).
pub const USER_EMPTY: RpcError = RpcError::new(Code::InvalidArgument, "etcdserver: user name is empty");
/// `etcdserver: user name not found`.
pub const USER_NOT_FOUND: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: user name not found");
/// `etcdserver: role name already exists`.
pub const ROLE_ALREADY_EXIST: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: role name already exists");
/// `etcdserver: role name not found`.
pub const ROLE_NOT_FOUND: RpcError =
    RpcError::new(Code::FailedPrecondition, "etcdserver: role name not found");
/// `etcdserver: role name is empty`.
pub const ROLE_EMPTY: RpcError = RpcError::new(Code::InvalidArgument, "etcdserver: role name is empty");
/// `etcdserver: authentication failed, invalid user ID or password`.
pub const AUTH_FAILED: RpcError = RpcError::new(
    Code::InvalidArgument,
    "etcdserver: authentication failed, invalid user ID or password",
);
/// `auth: authentication failed, password was given for no password user`: Authenticate as a
/// user added with `no_password` (who can only authenticate by a TLS certificate). etcd has no
/// gRPC mapping for it, so its clients see it with `Unknown`, prefix and all; so do Concord's.
pub const NO_PASSWORD_USER: RpcError = RpcError::new(
    Code::Unknown,
    "auth: authentication failed, password was given for no password user",
);
/// `etcdserver: password is too long (bcrypt uses at most 71 bytes)`: Concord refuses a
/// password bcrypt would silently cut short.
pub const PASSWORD_TOO_LONG: RpcError = RpcError::new(
    Code::InvalidArgument,
    "etcdserver: password is too long (bcrypt uses at most 71 bytes)",
);
/// `etcdserver: user or role name is too long (at most 256 bytes)`: Concord's own limit (etcd
/// has none), so a name cannot take a request's worth of every member's memory.
pub const NAME_TOO_LONG: RpcError = RpcError::new(
    Code::InvalidArgument,
    "etcdserver: user or role name is too long (at most 256 bytes)",
);
/// `auth: token signing attempted with verify-only key`: Authenticate on a member that has
/// only the public key of `--auth-token jwt` (etcd answers it with `Unknown`, text and all).
pub const VERIFY_ONLY: RpcError = RpcError::new(
    Code::Unknown,
    "auth: token signing attempted with verify-only key",
);
/// `etcdserver: permission not given` (RoleGrantPermission without a permission).
pub const PERMISSION_NOT_GIVEN: RpcError =
    RpcError::new(Code::InvalidArgument, "etcdserver: permission not given");
/// `etcdserver: permission denied`.
pub const PERMISSION_DENIED: RpcError =
    RpcError::new(Code::PermissionDenied, "etcdserver: permission denied");
/// `etcdserver: role is not granted to the user`.
pub const ROLE_NOT_GRANTED: RpcError = RpcError::new(
    Code::FailedPrecondition,
    "etcdserver: role is not granted to the user",
);
/// `etcdserver: permission is not granted to the role`.
pub const PERMISSION_NOT_GRANTED: RpcError = RpcError::new(
    Code::FailedPrecondition,
    "etcdserver: permission is not granted to the role",
);
/// `etcdserver: authentication is not enabled`.
pub const AUTH_NOT_ENABLED: RpcError = RpcError::new(
    Code::FailedPrecondition,
    "etcdserver: authentication is not enabled",
);
/// `etcdserver: invalid auth token` (unknown, expired or tampered: clients authenticate again).
pub const INVALID_AUTH_TOKEN: RpcError =
    RpcError::new(Code::Unauthenticated, "etcdserver: invalid auth token");
/// `etcdserver: invalid auth management` (deleting `root`, taking `root`'s role while auth is on,
/// a permission with an invalid range).
pub const INVALID_AUTH_MGMT: RpcError =
    RpcError::new(Code::InvalidArgument, "etcdserver: invalid auth management");
/// `etcdserver: revision of auth store is old` (the auth store changed between the permission
/// check and the write: clients retry).
pub const AUTH_OLD_REVISION: RpcError =
    RpcError::new(Code::InvalidArgument, "etcdserver: revision of auth store is old");

// Watch.

/// A create request with a watch ID the stream already uses: etcd's `ErrWatcherDuplicateID`,
/// prefix included, sent verbatim as the canceled watch's `cancel_reason`.
pub const DUPLICATE_WATCH_ID: RpcError = RpcError::new(
    Code::InvalidArgument,
    "mvcc: duplicate watch ID provided on the WatchStream",
);

// Elections (texts of etcd's `concurrency` package; its Election service answers them with
// `Unknown`).

/// `election: not leader` (Proclaim or Resign by a campaigner that no longer leads).
pub const ELECTION_NOT_LEADER: RpcError = RpcError::new(Code::Unknown, "election: not leader");
/// `election: no leader` (Leader of an election nobody leads).
pub const ELECTION_NO_LEADER: RpcError = RpcError::new(Code::Unknown, "election: no leader");
/// `"leader" field must be provided` (Proclaim or Resign without a leader key).
pub const MISSING_LEADER_KEY: RpcError = RpcError::new(Code::Unknown, "\"leader\" field must be provided");

// The HTTP/JSON gateway's own refusals (grpc-gateway's are plain-text HTTP errors; ours are
// JSON errors like every other answer there).

/// `gateway: no method at this path`: a path under `/v3/`, `/v3beta/`, `/v3alpha/` or `/v1/`
/// that names no method.
pub const GATEWAY_NO_METHOD: RpcError = RpcError::new(Code::NotFound, "gateway: no method at this path");
/// `gateway: use POST`: another HTTP method on a method's path (answered with HTTP 405).
pub const GATEWAY_POST_ONLY: RpcError = RpcError::new(Code::Unimplemented, "gateway: use POST");

/// A JSON request (a whole body, or one message of a streamed body) past the gateway's
/// `limit` of bytes: `RESOURCE_EXHAUSTED` `gateway: the request is larger than LIMIT bytes`.
pub fn gateway_request_too_large(limit: usize) -> Status {
    Status::resource_exhausted(format!("gateway: the request is larger than {limit} bytes"))
}

/// A gateway answer that could not be encoded as JSON (`INTERNAL`).
pub fn gateway_cannot_encode(reason: &dyn std::fmt::Display) -> Status {
    Status::internal(format!("gateway: cannot encode the answer: {reason}"))
}

/// What etcd's transport (grpc-go) answers a request of `found` bytes over its `limit`:
/// `RESOURCE_EXHAUSTED` `grpc: received message larger than max (found vs. limit)`.
pub fn message_too_large(found: &str, limit: &str) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ))
}

/// Whether `status` says the requested revision has been compacted.
pub fn is_compacted(status: &Status) -> bool {
    COMPACTED.is(status)
}

/// Whether `status` says the lease does not exist (expired or revoked).
pub fn is_lease_not_found(status: &Status) -> bool {
    LEASE_NOT_FOUND.is(status)
}

/// Whether `status` says no member leads (quorum lost, or an election under way).
pub fn is_no_leader(status: &Status) -> bool {
    NO_LEADER.is(status)
}

/// Whether `status` says the auth token is unknown or expired (authenticate again).
pub fn is_invalid_auth_token(status: &Status) -> bool {
    INVALID_AUTH_TOKEN.is(status)
}

/// Whether `status` says the request did not finish in time.
pub fn is_timeout(status: &Status) -> bool {
    TIMEOUT.is(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_recognised_by_their_text() {
        let status = COMPACTED.status();
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(is_compacted(&status));
        assert!(!is_lease_not_found(&status));
        // The Lock and Election services pass store errors on with `Unknown`.
        assert!(is_lease_not_found(&Status::unknown(LEASE_NOT_FOUND.text())));
        assert!(is_no_leader(&NO_LEADER.status()));
        assert!(is_timeout(&TIMEOUT.status()));
    }
}

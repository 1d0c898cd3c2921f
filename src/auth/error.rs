//! [`AuthError`]: everything the auth store refuses, with etcd's texts and codes.

use concord_proto::rpctypes::{self, RpcError};
use serde::{Deserialize, Serialize};

/// Why the auth store refused a request. Each is one of etcd's client-visible errors; the
/// store is unchanged after any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuthError {
    /// AuthEnable before a `root` user exists.
    #[error("{}", rpctypes::ROOT_USER_NOT_EXIST.text())]
    RootUserNotExist,
    /// AuthEnable while `root` does not have the `root` role.
    #[error("{}", rpctypes::ROOT_ROLE_NOT_EXIST.text())]
    RootRoleNotExist,
    /// UserAdd of a name in use.
    #[error("{}", rpctypes::USER_ALREADY_EXIST.text())]
    UserAlreadyExist,
    /// An empty user name, or a request without a user while auth is on.
    #[error("{}", rpctypes::USER_EMPTY.text())]
    UserEmpty,
    /// No such user.
    #[error("{}", rpctypes::USER_NOT_FOUND.text())]
    UserNotFound,
    /// RoleAdd of a name in use.
    #[error("{}", rpctypes::ROLE_ALREADY_EXIST.text())]
    RoleAlreadyExist,
    /// No such role.
    #[error("{}", rpctypes::ROLE_NOT_FOUND.text())]
    RoleNotFound,
    /// An empty role name.
    #[error("{}", rpctypes::ROLE_EMPTY.text())]
    RoleEmpty,
    /// A wrong password, an unknown user, or a user without a password.
    #[error("{}", rpctypes::AUTH_FAILED.text())]
    AuthFailed,
    /// Authenticate as a user without a password.
    #[error("{}", rpctypes::NO_PASSWORD_USER.text())]
    NoPasswordUser,
    /// A new password longer than bcrypt hashes (Concord's own error: etcd's bcrypt fails
    /// with an unmapped error).
    #[error("{}", rpctypes::PASSWORD_TOO_LONG.text())]
    PasswordTooLong,
    /// A user or role name longer than [`MAX_NAME_BYTES`](super::state::MAX_NAME_BYTES).
    #[error("{}", rpctypes::NAME_TOO_LONG.text())]
    NameTooLong,
    /// Authenticate on a member that can verify JWTs but not sign them.
    #[error("{}", rpctypes::VERIFY_ONLY.text())]
    VerifyOnly,
    /// RoleGrantPermission without a permission.
    #[error("{}", rpctypes::PERMISSION_NOT_GIVEN.text())]
    PermissionNotGiven,
    /// The caller may not do this.
    #[error("{}", rpctypes::PERMISSION_DENIED.text())]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("{}", rpctypes::ROLE_NOT_GRANTED.text())]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("{}", rpctypes::PERMISSION_NOT_GRANTED.text())]
    PermissionNotGranted,
    /// Authenticate while auth is off.
    #[error("{}", rpctypes::AUTH_NOT_ENABLED.text())]
    AuthNotEnabled,
    /// An unknown, expired or tampered token.
    #[error("{}", rpctypes::INVALID_AUTH_TOKEN.text())]
    InvalidAuthToken,
    /// A change that would lock everyone out (deleting `root` or its role while auth is on), or
    /// a malformed permission or password hash.
    #[error("{}", rpctypes::INVALID_AUTH_MGMT.text())]
    InvalidAuthMgmt,
    /// The auth store changed between the permission check and the write.
    #[error("{}", rpctypes::AUTH_OLD_REVISION.text())]
    AuthOldRevision,
}

impl AuthError {
    /// Every error, for decoding names.
    const ALL: [AuthError; 21] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::AuthFailed,
        AuthError::NoPasswordUser,
        AuthError::PasswordTooLong,
        AuthError::NameTooLong,
        AuthError::VerifyOnly,
        AuthError::PermissionNotGiven,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::AuthNotEnabled,
        AuthError::InvalidAuthToken,
        AuthError::InvalidAuthMgmt,
        AuthError::AuthOldRevision,
    ];

    /// The etcd error this is: its gRPC code and text.
    pub fn etcd(self) -> RpcError {
        match self {
            AuthError::RootUserNotExist => rpctypes::ROOT_USER_NOT_EXIST,
            AuthError::RootRoleNotExist => rpctypes::ROOT_ROLE_NOT_EXIST,
            AuthError::UserAlreadyExist => rpctypes::USER_ALREADY_EXIST,
            AuthError::UserEmpty => rpctypes::USER_EMPTY,
            AuthError::UserNotFound => rpctypes::USER_NOT_FOUND,
            AuthError::RoleAlreadyExist => rpctypes::ROLE_ALREADY_EXIST,
            AuthError::RoleNotFound => rpctypes::ROLE_NOT_FOUND,
            AuthError::RoleEmpty => rpctypes::ROLE_EMPTY,
            AuthError::AuthFailed => rpctypes::AUTH_FAILED,
            AuthError::NoPasswordUser => rpctypes::NO_PASSWORD_USER,
            AuthError::PasswordTooLong => rpctypes::PASSWORD_TOO_LONG,
            AuthError::NameTooLong => rpctypes::NAME_TOO_LONG,
            AuthError::VerifyOnly => rpctypes::VERIFY_ONLY,
            AuthError::PermissionNotGiven => rpctypes::PERMISSION_NOT_GIVEN,
            AuthError::PermissionDenied => rpctypes::PERMISSION_DENIED,
            AuthError::RoleNotGranted => rpctypes::ROLE_NOT_GRANTED,
            AuthError::PermissionNotGranted => rpctypes::PERMISSION_NOT_GRANTED,
            AuthError::AuthNotEnabled => rpctypes::AUTH_NOT_ENABLED,
            AuthError::InvalidAuthToken => rpctypes::INVALID_AUTH_TOKEN,
            AuthError::InvalidAuthMgmt => rpctypes::INVALID_AUTH_MGMT,
            AuthError::AuthOldRevision => rpctypes::AUTH_OLD_REVISION,
        }
    }

    /// A stable name, as a refusal travels between members (`StoreError.detail`).
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// The error named `name` (see [`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<AuthError> {
        Self::ALL.into_iter().find(|err| err.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_travels_by_name_and_speaks_etcds_text() {
        for err in AuthError::ALL {
            assert_eq!(AuthError::from_name(&err.name()), Some(err));
            assert_eq!(err.to_string(), err.etcd().text());
            let prefix = match err {
                AuthError::NoPasswordUser | AuthError::VerifyOnly => "auth: ",
                _ => "etcdserver: ",
            };
            assert!(err.to_string().starts_with(prefix), "{err}");
        }
        assert_eq!(AuthError::from_name("Nonsense"), None);
    }
}

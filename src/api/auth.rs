//! etcd's `Auth` service: turning auth on and off, authenticating, and managing users and
//! roles. Changes go through Raft as `AuthChange` commands (root only while auth is on);
//! reads are served from this member's applied state after a read index, so a change is seen
//! by the next read anywhere.

use std::sync::Arc;

use concord_proto::etcdserverpb::auth_server::Auth;
use concord_proto::etcdserverpb::*;
use concord_proto::raftpb::command::Request as Cmd;
use concord_proto::raftpb::{AuthChange, auth_change::Change};
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::password::Passwords;
use crate::auth::{AuthError, Caller, Need};
use crate::error::Error;

/// The Auth service over the shared [`Api`].
#[derive(Clone)]
pub struct AuthService {
    api: Arc<Api>,
}

impl AuthService {
    /// An Auth service for `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    /// Proposes `change` for `caller`, which must be root while auth is on; the header to
    /// answer with.
    async fn change(&self, caller: &Caller, change: Change) -> Result<Option<ResponseHeader>, Status> {
        let revision = self.api.authorize(caller, &[Need::Admin])?;
        let change = AuthChange { change: Some(change) };
        self.api.propose(Cmd::Auth(change), revision).await?;
        Ok(self.api.current_header())
    }

    /// The caller of `request`, once this member has applied everything committed before it
    /// (so a read sees the latest users and roles), and whether it is root.
    async fn reader<T>(&self, request: &Request<T>) -> Result<(Caller, bool), Status> {
        let caller = self.api.caller(request)?;
        self.api.linearizable_read().await?;
        let admin = self.api.authorize(&caller, &[Need::Admin]);
        Ok((caller, admin.is_ok()))
    }

    /// The `hashedPassword` a change stores: the client's own hash (checked), or the hash of
    /// its password.
    async fn hashed(&self, password: String, hashed_password: String) -> Result<String, Status> {
        if !hashed_password.is_empty() {
            if !Passwords::is_valid_hash(&hashed_password) {
                return Err(Error::from(AuthError::InvalidAuthMgmt).into());
            }
            return Ok(hashed_password);
        }
        Ok(self
            .api
            .auth()
            .passwords()
            .hash(password)
            .await
            .map_err(Error::from)?)
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self.change(&caller, Change::Enable(request.into_inner())).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::Disable(request.into_inner()))
            .await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.reader(&request).await?;
        let state = self.api.auth().state();
        Ok(Response::new(AuthStatusResponse {
            header: self.api.current_header(),
            enabled: state.enabled(),
            auth_revision: state.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        self.api.check_size(&req)?;
        let token = self
            .api
            .auth()
            .authenticate(&req.name, &req.password)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(AuthenticateResponse {
            header: self.api.current_header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let mut req = request.into_inner();
        if req.name.is_empty() {
            return Err(Error::from(AuthError::UserEmpty).into());
        }
        if req.name.len() > crate::auth::state::MAX_NAME_BYTES {
            return Err(Error::from(AuthError::NameTooLong).into());
        }
        self.api.authorize(&caller, &[Need::Admin])?;
        let no_password = req.options.is_some_and(|o| o.no_password);
        req.hashed_password = match no_password {
            true => String::new(),
            false => {
                self.hashed(std::mem::take(&mut req.password), req.hashed_password)
                    .await?
            }
        };
        req.password.clear();
        let header = self.change(&caller, Change::UserAdd(req)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let (caller, admin) = self.reader(&request).await?;
        let req = request.into_inner();
        // A user may look itself up (etcd's rule).
        if !admin && caller.user() != Some(req.name.as_str()) {
            self.api.authorize(&caller, &[Need::Admin])?;
        }
        let state = self.api.auth().state();
        let user = state
            .user(&req.name)
            .ok_or(Error::from(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.api.current_header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let (caller, _) = self.reader(&request).await?;
        self.api.authorize(&caller, &[Need::Admin])?;
        let users = self
            .api
            .auth()
            .state()
            .users()
            .map(|u| String::from_utf8_lossy(&u.name).into_owned())
            .collect();
        Ok(Response::new(AuthUserListResponse {
            header: self.api.current_header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::UserDelete(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let mut req = request.into_inner();
        self.api.authorize(&caller, &[Need::Admin])?;
        req.hashed_password = self
            .hashed(std::mem::take(&mut req.password), req.hashed_password)
            .await?;
        let header = self.change(&caller, Change::UserChangePassword(req)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::UserGrantRole(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::UserRevokeRole(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::RoleAdd(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let (caller, admin) = self.reader(&request).await?;
        let req = request.into_inner();
        let state = self.api.auth().state();
        // A user may look up its own roles (etcd's rule).
        if !admin && !caller.user().is_some_and(|user| state.has_role(user, &req.role)) {
            self.api.authorize(&caller, &[Need::Admin])?;
        }
        let role = state
            .role(&req.role)
            .ok_or(Error::from(AuthError::RoleNotFound))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.api.current_header(),
            perm: role.key_permission.clone(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let (caller, _) = self.reader(&request).await?;
        self.api.authorize(&caller, &[Need::Admin])?;
        let roles = self
            .api
            .auth()
            .state()
            .roles()
            .map(|r| String::from_utf8_lossy(&r.name).into_owned())
            .collect();
        Ok(Response::new(AuthRoleListResponse {
            header: self.api.current_header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::RoleDelete(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::RoleGrantPermission(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.api.caller(&request)?;
        let header = self
            .change(&caller, Change::RoleRevokePermission(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}

//! [`AuthState`]: users, roles, the enabled flag and the auth revision, and how each
//! `AuthChange` changes them (etcd's auth store rules, error for error).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use concord_proto::authpb::{Permission, Role, User, UserAddOptions};
use concord_proto::raftpb::auth_change::Change;

use super::error::AuthError;
use super::permissions::{self, Access, Permits};

/// The user that may enable auth, and the role that may do everything.
pub const ROOT: &str = "root";

/// The longest user or role name (Concord's limit; etcd has none).
pub const MAX_NAME_BYTES: usize = 256;

/// The auth store's replicated state, as one member has applied it.
#[derive(Debug, Clone)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's merged permissions (rebuilt after every change; users are few).
    permits: HashMap<String, Arc<Permits>>,
}

impl Default for AuthState {
    /// A store that never changed: auth off, revision 1 (etcd's first revision; 0 means "no
    /// revision" in a request).
    fn default() -> Self {
        Self {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            permits: HashMap::new(),
        }
    }
}

/// What a change did besides changing the state: the users whose tokens no longer hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the state changed (and the revision moved on).
    pub changed: bool,
    /// A user deleted or given a new password: its tokens must go.
    pub invalidated_user: Option<String>,
    /// Auth was turned off: every token must go.
    pub disabled: bool,
}

impl AuthState {
    /// A state from its parts, as stored.
    pub fn from_parts(enabled: bool, revision: u64, users: Vec<User>, roles: Vec<Role>) -> AuthState {
        let mut state = AuthState {
            enabled,
            revision: revision.max(1),
            users: users.into_iter().map(|u| (name_of(&u.name), u)).collect(),
            roles: roles.into_iter().map(|r| (name_of(&r.name), r)).collect(),
            permits: HashMap::new(),
        };
        state.refresh_permits();
        state
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: it moves on with every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The user `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The role `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Every role, by name.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// Whether `user` exists and has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(has_root_role)
    }

    /// Whether `user` has the role `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// Whether `user` may have `access` to `key` (`range_end` as in a request): root may do
    /// anything, an unknown user nothing.
    pub fn allows(&self, user: &str, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        if self.is_root(user) {
            return true;
        }
        self.permits
            .get(user)
            .is_some_and(|permits| permits.allow(access, key, range_end))
    }

    /// Applies `change`, or refuses it with etcd's error (the state unchanged).
    pub fn apply(&mut self, change: &Change) -> Result<Outcome, AuthError> {
        let mut outcome = Outcome {
            changed: true,
            ..Outcome::default()
        };
        match change {
            Change::Enable(_) => {
                if self.enabled {
                    return Ok(Outcome::default());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !has_root_role(root) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            Change::Disable(_) => {
                if !self.enabled {
                    return Ok(Outcome::default());
                }
                self.enabled = false;
                outcome.disabled = true;
            }
            Change::UserAdd(req) => {
                if req.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if req.name.len() > MAX_NAME_BYTES {
                    return Err(AuthError::NameTooLong);
                }
                if self.users.contains_key(&req.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let options = req.options.unwrap_or(UserAddOptions { no_password: false });
                let password = match options.no_password {
                    true => Vec::new(),
                    false => stored_hash(&req.hashed_password)?,
                };
                let user = User {
                    name: req.name.clone().into_bytes(),
                    password,
                    roles: Vec::new(),
                    options: Some(options),
                };
                self.users.insert(req.name.clone(), user);
            }
            Change::UserDelete(req) => {
                if self.enabled && req.name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(&req.name).ok_or(AuthError::UserNotFound)?;
                outcome.invalidated_user = Some(req.name.clone());
            }
            Change::UserChangePassword(req) => {
                let user = self.users.get_mut(&req.name).ok_or(AuthError::UserNotFound)?;
                if !user.options.is_some_and(|o| o.no_password) {
                    user.password = stored_hash(&req.hashed_password)?;
                }
                outcome.invalidated_user = Some(req.name.clone());
            }
            Change::UserGrantRole(req) => {
                if !self.users.contains_key(&req.user) {
                    return Err(AuthError::UserNotFound);
                }
                if req.role != ROOT && !self.roles.contains_key(&req.role) {
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(&req.user).ok_or(AuthError::UserNotFound)?;
                match user.roles.binary_search(&req.role) {
                    Ok(_) => return Ok(Outcome::default()),
                    Err(at) => user.roles.insert(at, req.role.clone()),
                }
            }
            Change::UserRevokeRole(req) => {
                if self.enabled && req.name == ROOT && req.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(&req.name).ok_or(AuthError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|role| role != &req.role);
                if user.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            Change::RoleAdd(req) => {
                if req.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if req.name.len() > MAX_NAME_BYTES {
                    return Err(AuthError::NameTooLong);
                }
                if self.roles.contains_key(&req.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                let role = Role {
                    name: req.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                self.roles.insert(req.name.clone(), role);
            }
            Change::RoleDelete(req) => {
                if self.enabled && req.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(&req.role).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.retain(|role| role != &req.role);
                }
            }
            Change::RoleGrantPermission(req) => {
                let perm = req.perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                if !permissions::is_valid(perm) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(&req.name).ok_or(AuthError::RoleNotFound)?;
                let same_range = |p: &Permission| p.key == perm.key && p.range_end == perm.range_end;
                match role.key_permission.iter_mut().find(|p| same_range(p)) {
                    Some(existing) => existing.perm_type = perm.perm_type,
                    None => {
                        let at = role.key_permission.partition_point(|p| p.key <= perm.key);
                        role.key_permission.insert(at, perm.clone());
                    }
                }
            }
            Change::RoleRevokePermission(req) => {
                let role = self.roles.get_mut(&req.role).ok_or(AuthError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != req.key || p.range_end != req.range_end);
                if role.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        self.refresh_permits();
        Ok(outcome)
    }

    fn refresh_permits(&mut self) {
        self.permits = self
            .users
            .iter()
            .map(|(name, user)| {
                let roles = user.roles.iter().filter_map(|role| self.roles.get(role));
                (name.clone(), Arc::new(Permits::of(roles)))
            })
            .collect();
    }
}

fn has_root_role(user: &User) -> bool {
    user.roles.iter().any(|role| role == ROOT)
}

fn name_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The hash a change carries (base64 of a bcrypt hash), as stored.
fn stored_hash(hashed_password: &str) -> Result<Vec<u8>, AuthError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(hashed_password)
        .map_err(|_| AuthError::InvalidAuthMgmt)
}

#[cfg(test)]
mod tests;

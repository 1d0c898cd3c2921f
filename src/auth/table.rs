//! The `auth` table in the state machine's database: the enabled flag, the auth revision, and
//! each user and role (prost-encoded `authpb.User` / `authpb.Role`), so the auth store survives
//! restarts and travels in snapshots.

use concord_proto::authpb::{Role, User};
use prost::Message;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction,
};

use super::state::AuthState;
use crate::mvcc::MvccError;
use crate::mvcc::history::copy_table;

/// `enabled` / `revision` (8 bytes, big-endian) / `user/<name>` / `role/<name>` → value.
pub const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");

const ENABLED: &str = "enabled";
const REVISION: &str = "revision";
const USER: &str = "user/";
const ROLE: &str = "role/";

/// The auth state stored in `db` (the default state if nothing is).
pub fn load(db: &Database) -> Result<AuthState, MvccError> {
    load_in(&db.begin_read()?)
}

/// The auth state stored in the database `read` reads.
pub fn load_in(read: &ReadTransaction) -> Result<AuthState, MvccError> {
    let table = match read.open_table(AUTH) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(AuthState::default()),
        Err(err) => return Err(err.into()),
    };
    let (mut enabled, mut revision) = (false, 1);
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (key, value) = (key.value(), value.value());
        if key == ENABLED {
            enabled = value == [1];
        } else if key == REVISION {
            let bytes: [u8; 8] = value
                .try_into()
                .map_err(|_| MvccError::Storage("auth revision is not 8 bytes".into()))?;
            revision = u64::from_be_bytes(bytes);
        } else if key.starts_with(USER) {
            users.push(User::decode(value)?);
        } else if key.starts_with(ROLE) {
            roles.push(Role::decode(value)?);
        }
    }
    Ok(AuthState::from_parts(enabled, revision, users, roles))
}

/// Replaces what `txn` stores with `state` (auth changes are rare and small).
pub fn save(txn: &WriteTransaction, state: &AuthState) -> Result<(), MvccError> {
    txn.delete_table(AUTH)?;
    let mut table = txn.open_table(AUTH)?;
    table.insert(ENABLED, [u8::from(state.enabled())].as_slice())?;
    table.insert(REVISION, state.revision().to_be_bytes().as_slice())?;
    for user in state.users() {
        let key = format!("{USER}{}", String::from_utf8_lossy(&user.name));
        table.insert(key.as_str(), user.encode_to_vec().as_slice())?;
    }
    for role in state.roles() {
        let key = format!("{ROLE}{}", String::from_utf8_lossy(&role.name));
        table.insert(key.as_str(), role.encode_to_vec().as_slice())?;
    }
    Ok(())
}

/// Replaces the `auth` table written by `write` with the one `read` sees (snapshots).
pub fn copy(read: &ReadTransaction, write: &WriteTransaction) -> Result<(), MvccError> {
    copy_table(read, write, AUTH)
}

#[cfg(test)]
mod tests {
    use concord_proto::etcdserverpb::{AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest};
    use concord_proto::raftpb::auth_change::Change;

    use super::*;

    #[test]
    fn the_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let empty = load(&db).unwrap();
        assert!(!empty.enabled() && empty.revision() == 1, "no table yet");
        let mut state = AuthState::default();
        for change in [
            Change::UserAdd(AuthUserAddRequest {
                name: "root".into(),
                hashed_password: "aGFzaA==".into(),
                ..Default::default()
            }),
            Change::RoleAdd(AuthRoleAddRequest { name: "ops".into() }),
            Change::UserGrantRole(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }),
            Change::Enable(Default::default()),
        ] {
            state.apply(&change).unwrap();
        }
        let txn = db.begin_write().unwrap();
        save(&txn, &state).unwrap();
        txn.commit().unwrap();
        let loaded = load(&db).unwrap();
        assert!(loaded.enabled());
        assert_eq!(loaded.revision(), state.revision());
        assert_eq!(loaded.user("root"), state.user("root"));
        assert!(loaded.role("ops").is_some() && loaded.is_root("root"));
    }
}

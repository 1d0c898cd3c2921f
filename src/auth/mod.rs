//! Authentication and authorization: etcd's users, roles and key-range permissions.
//!
//! - [`state`]: [`AuthState`], the replicated users, roles, enabled flag and revision, and
//!   etcd's rules for changing them.
//! - [`permissions`]: a user's merged key ranges and the range checks.
//! - [`store`]: [`AuthStore`], this member's view: who a request comes from ([`Caller`]) and
//!   whether it may do what it asks ([`AuthStore::authorize`]).
//! - [`apply`]: applying auth changes in a batch of committed commands.
//! - [`table`]: the `auth` table in the state machine's database.
//! - [`tokens`]: simple tokens; [`jwt`]: JWTs; [`password`]: bcrypt hashing off the runtime.
//! - [`error`]: [`AuthError`], etcd's texts.
//!
//! The path of a write while auth is on: the service finds the caller and checks its
//! permissions (`crate::api`), the command carries the auth revision it was checked at, and the
//! state machine refuses it if the auth store changed in between (`revision of auth store is
//! old`), so a permission revoked before a write is applied never lets it through. Auth
//! changes themselves are commands like any other (`AuthChange`), applied in log order on
//! every member.

pub mod apply;
pub mod error;
pub mod jwt;
pub mod password;
pub mod permissions;
pub mod state;
pub mod store;
pub mod table;
pub mod tokens;

pub use apply::AuthBatch;
pub use error::AuthError;
pub use state::AuthState;
pub use store::{AuthOptions, AuthStore, Caller, Need, TokenKind};

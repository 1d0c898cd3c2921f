//! [`AuthStore`]: this member's view of the replicated auth state, who a request comes from
//! ([`Caller`]), and whether it may do what it asks ([`AuthStore::authorize`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::Database;

use super::error::AuthError;
use super::jwt::{JwtOptions, JwtTokens};
use super::password::Passwords;
use super::permissions::Access;
use super::state::{AuthState, Outcome};
use super::table;
use super::tokens::SimpleTokens;
use crate::mvcc::MvccError;
use crate::net::tls::TlsPeer;

/// The gRPC metadata keys a token travels in: etcd's clients send `token`, its HTTP gateway
/// `authorization`.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// Who sent a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Caller {
    /// Nobody in particular: no token (allowed everything while auth is off, nothing while
    /// it is on).
    #[default]
    Anonymous,
    /// An authenticated user.
    User(String),
}

impl Caller {
    /// The user's name, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::User(name) => Some(name),
        }
    }
}

/// One thing a request needs to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// To read `key` (`range_end` as in a request).
    Read(&'a [u8], &'a [u8]),
    /// To write `key` (`range_end` as in a request).
    Write(&'a [u8], &'a [u8]),
    /// To be root (auth administration, membership, maintenance).
    Admin,
    /// To be some user (status calls).
    User,
}

/// Which tokens Authenticate hands out (`--auth-token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TokenKind {
    /// `simple`: random strings this member remembers.
    #[default]
    Simple,
    /// `jwt,...`: signed tokens any member with the key verifies.
    Jwt(JwtOptions),
}

impl TokenKind {
    /// Parses `--auth-token`: `simple`, or `jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`.
    pub fn parse(flag: &str) -> Result<TokenKind, String> {
        match flag.split_once(',').unwrap_or((flag, "")) {
            ("simple", "") => Ok(TokenKind::Simple),
            ("jwt", options) => JwtOptions::parse(options).map(TokenKind::Jwt),
            _ => Err(format!(
                "unsupported --auth-token {flag:?} (simple, or jwt,pub-key=...,priv-key=...,sign-method=...)"
            )),
        }
    }
}

/// How the auth store is set up (`--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`).
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// Simple tokens or JWTs.
    pub token: TokenKind,
    /// How long a simple token lives without use.
    pub token_ttl: Duration,
    /// bcrypt's cost for new passwords.
    pub bcrypt_cost: u32,
}

impl Default for AuthOptions {
    /// etcd's defaults: simple tokens of 300 s, bcrypt cost 10.
    fn default() -> Self {
        Self {
            token: TokenKind::Simple,
            token_ttl: Duration::from_secs(300),
            bcrypt_cost: super::password::DEFAULT_COST,
        }
    }
}

/// The tokens this member hands out and accepts.
#[derive(Debug)]
enum Tokens {
    Simple(SimpleTokens),
    Jwt(JwtTokens),
}

/// This member's auth store: the state the state machine last committed, the tokens this
/// member issued, and its password hasher.
#[derive(Debug)]
pub struct AuthStore {
    state: RwLock<Arc<AuthState>>,
    /// `state`'s revision and enabled flag in one word (see [`summary`]), readable without the
    /// lock and always consistent with each other: every request asks.
    summary: AtomicU64,
    tokens: Tokens,
    passwords: Passwords,
}

impl AuthStore {
    /// The auth store stored in `db`.
    pub fn open(db: &Database, options: AuthOptions) -> Result<Arc<Self>, crate::error::Error> {
        let state = table::load(db)?;
        let tokens = match &options.token {
            TokenKind::Simple => Tokens::Simple(SimpleTokens::new(options.token_ttl)),
            TokenKind::Jwt(jwt) => Tokens::Jwt(
                JwtTokens::load(jwt)
                    .map_err(|e| crate::error::Error::Config(format!("--auth-token: {e}")))?,
            ),
        };
        Ok(Arc::new(Self {
            summary: AtomicU64::new(summary(&state)),
            state: RwLock::new(Arc::new(state)),
            tokens,
            passwords: Passwords::new(options.bcrypt_cost),
        }))
    }

    /// The state as last committed.
    pub fn state(&self) -> Arc<AuthState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.summary.load(Ordering::Acquire) & 1 == 1
    }

    /// The password hasher.
    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    /// Makes `state` the current one, once the changes that made it are committed; `outcomes`
    /// say whose tokens go.
    pub fn publish(&self, state: Arc<AuthState>, outcomes: &[Outcome]) {
        // JWTs issued before this change are refused by their revision instead.
        if let Tokens::Simple(tokens) = &self.tokens {
            for outcome in outcomes {
                if let Some(user) = &outcome.invalidated_user {
                    tokens.invalidate_user(user);
                }
                if outcome.disabled {
                    tokens.clear();
                }
            }
        }
        let summary = summary(&state);
        *self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
        self.summary.store(summary, Ordering::Release);
    }

    /// Loads the state again from `db` (after a snapshot replaced it); every token goes.
    pub fn reload(&self, db: &Database) -> Result<(), MvccError> {
        let state = table::load(db)?;
        if let Tokens::Simple(tokens) = &self.tokens {
            tokens.clear();
        }
        self.publish(Arc::new(state), &[]);
        Ok(())
    }

    /// Who sent `request`: the caller the server itself attached (a service running a recipe
    /// for its client), else the user the request's token names, else (etcd's rule) the common
    /// name of the client certificate its TLS connection presented. While auth is off, tokens
    /// are not looked at; while it is on, an unknown or lapsed token is refused.
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        if let Some(caller) = request.extensions().get::<Caller>() {
            return Ok(caller.clone());
        }
        let caller = self.caller_of(request.metadata())?;
        let certified = request
            .extensions()
            .get::<TlsPeer>()
            .and_then(|peer| peer.common_name.clone());
        match (caller, certified) {
            (Caller::Anonymous, Some(name)) if self.enabled() => Ok(Caller::User(name)),
            (caller, _) => Ok(caller),
        }
    }

    /// Who the token in `metadata` names (see [`caller`](Self::caller)): a long-lived stream
    /// asks again for each message, so a token that lapsed or was invalidated stops it.
    pub fn caller_of(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, AuthError> {
        if !self.enabled() {
            return Ok(Caller::Anonymous);
        }
        let token = TOKEN_KEYS
            .iter()
            .find_map(|key| metadata.get(*key))
            .map(|value| value.to_str().map_err(|_| AuthError::InvalidAuthToken));
        match token {
            None => Ok(Caller::Anonymous),
            Some(token) => {
                let token = token?;
                let token = token.strip_prefix("Bearer ").unwrap_or(token);
                match &self.tokens {
                    Tokens::Simple(tokens) => tokens.user(token).map(Caller::User),
                    Tokens::Jwt(tokens) => tokens
                        .verify(token)
                        .filter(|(_, revision)| *revision >= self.state().revision())
                        .map(|(user, _)| Caller::User(user)),
                }
                .ok_or(AuthError::InvalidAuthToken)
            }
        }
    }

    /// Whether `caller` may do everything `needs` names; the auth revision it was checked at,
    /// which a write carries into the log (see `Command.auth_revision`).
    pub fn authorize(&self, caller: &Caller, needs: &[Need<'_>]) -> Result<u64, AuthError> {
        let quick = self.summary.load(Ordering::Acquire);
        if quick & 1 == 0 {
            // Off: nothing to check. Should auth be turned on before this write applies, its
            // revision is old by then and the write is refused.
            return Ok(quick >> 1);
        }
        let state = self.state();
        check(&state, caller, needs)?;
        Ok(state.revision())
    }

    /// Authenticates `name` with `password`: a token for it, good on this member.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String, AuthError> {
        let state = self.state();
        if !state.enabled() {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = state.user(name).ok_or(AuthError::AuthFailed)?;
        if user.options.is_some_and(|o| o.no_password) {
            return Err(AuthError::NoPasswordUser);
        }
        self.passwords
            .check(password.to_owned(), user.password.clone())
            .await?;
        // The password may have changed (or the user gone) while it was being checked.
        let now = self.state();
        if now.user(name).map(|u| &u.password) != Some(&user.password) {
            return Err(AuthError::AuthFailed);
        }
        match &self.tokens {
            Tokens::Simple(tokens) => Ok(tokens.issue(name)),
            Tokens::Jwt(tokens) => tokens.issue(name, now.revision()),
        }
    }
}

/// `state`'s revision and enabled flag as one word: `revision << 1 | enabled`.
fn summary(state: &AuthState) -> u64 {
    (state.revision() << 1) | u64::from(state.enabled())
}

/// Whether `caller` may do everything `needs` names in `state` (etcd's `isOpPermitted` and
/// `IsAdminPermitted`).
pub fn check(state: &AuthState, caller: &Caller, needs: &[Need<'_>]) -> Result<(), AuthError> {
    if !state.enabled() {
        return Ok(());
    }
    let user = caller.user().ok_or(AuthError::UserEmpty)?;
    for need in needs {
        let allowed = match *need {
            Need::User => true,
            Need::Admin => {
                if state.user(user).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                state.is_root(user)
            }
            Need::Read(key, range_end) => state.allows(user, Access::Read, key, range_end),
            Need::Write(key, range_end) => state.allows(user, Access::Write, key, range_end),
        };
        if !allowed {
            return Err(AuthError::PermissionDenied);
        }
    }
    Ok(())
}

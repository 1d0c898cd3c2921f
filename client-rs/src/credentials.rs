//! [`Credentials`] and the token every request carries: the client authenticates with its
//! user and password before its first request (and again whenever a server says the token is
//! invalid: it lapsed, the member restarted, or the request went to another member, since a
//! simple token is good only on the member that issued it), so user code never sees an
//! `invalid auth token`.

use std::sync::{Arc, PoisonError, RwLock};

use concord_proto::etcdserverpb::AuthenticateRequest;
use concord_proto::etcdserverpb::auth_client::AuthClient;
use concord_proto::rpctypes;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A user and password to authenticate with (etcd's `--user name:password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl Credentials {
    /// `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    /// The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"…")
            .finish()
    }
}

/// A channel whose requests carry the client's token (when it has one): what the client's
/// generated gRPC clients run on, and what [`Client::channel`](crate::Client::channel) hands
/// out for calling other services.
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

/// The client's current token, shared by every request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Token {
    value: Arc<RwLock<TokenState>>,
}

/// What the client knows about its token.
#[derive(Debug, Clone, Default)]
enum TokenState {
    /// Nothing yet (or the server refused the last one): authenticate before the next request.
    #[default]
    Unknown,
    /// The token to send.
    Issued(AsciiMetadataValue),
    /// The server has auth off: send none (until a server asks for a user).
    NotNeeded,
}

impl Token {
    /// Whether the next request can go without authenticating first.
    pub(crate) fn is_set(&self) -> bool {
        !matches!(
            *self.value.read().unwrap_or_else(PoisonError::into_inner),
            TokenState::Unknown
        )
    }

    /// Forgets the token (the server refused it): the next request authenticates first.
    pub(crate) fn clear(&self) {
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = TokenState::Unknown;
    }

    /// Authenticates `credentials` on `channel` and keeps the token (or that none is needed,
    /// while the server has auth off).
    pub(crate) async fn authenticate(
        &self,
        channel: Channel,
        credentials: &Credentials,
    ) -> Result<(), Status> {
        let request = AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        };
        let state = match AuthClient::new(channel).authenticate(request).await {
            Ok(answer) => TokenState::Issued(
                MetadataValue::try_from(answer.into_inner().token)
                    .map_err(|_| Status::internal("the server answered a token that is not ASCII"))?,
            ),
            Err(status) if rpctypes::AUTH_NOT_ENABLED.is(&status) => TokenState::NotNeeded,
            Err(status) => return Err(status),
        };
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = state;
        Ok(())
    }

    /// `channel` with this token on every request.
    pub(crate) fn attach(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, TokenInterceptor { token: self.clone() })
    }
}

/// Puts the client's token into each request's `token` metadata.
#[derive(Debug, Clone)]
pub struct TokenInterceptor {
    token: Token,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let state = self
            .token
            .value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let TokenState::Issued(token) = state {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// Whether `status` says the request's token is no good (lapsed, unknown to this member,
/// invalidated) or missing while auth is on: authenticating again and retrying fixes it, and
/// the request was not applied.
pub(crate) fn needs_token(status: &Status) -> bool {
    rpctypes::is_invalid_auth_token(status)
        || rpctypes::USER_EMPTY.is(status)
        || rpctypes::AUTH_OLD_REVISION.is(status)
}

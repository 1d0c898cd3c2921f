//! The endpoints a client knows, one cached channel each, and the retry policy every request
//! goes through.
//!
//! A request runs on the *current* endpoint. When it fails in a way that says the endpoint is
//! unreachable or unhealthy (`UNAVAILABLE`, a transport error, or no answer within the request
//! timeout), the current endpoint moves on to the next one, and the request is retried there
//! after a short backoff if that is safe:
//!
//! - a request that cannot have reached a server (no connection could be made) is retried
//!   whatever it is;
//! - an idempotent request (a read, a keep-alive, a revoke, the creation of a watch) is retried
//!   after any of those failures;
//! - a write that may have been sent is never retried: it may have been applied, and applying
//!   it twice is not applying it once. The caller gets the error and decides.
//!
//! Any other status (a failed compare is no error at all; `NOT_FOUND`, `INVALID_ARGUMENT`,
//! ...) is the server's answer and is returned as it is, except that a client with
//! [`Credentials`](crate::Credentials) authenticates (again) and retries once the server says
//! its token is missing or no good, and retries a write the server refused because the auth
//! store changed under it (neither was applied).

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use std::time::Duration;

use concord_proto::concord::config::v1::config_client::ConfigClient;
use concord_proto::concord::pubsub::v1::pub_sub_client::PubSubClient;
use concord_proto::concord::registry::v1::registry_client::RegistryClient;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::credentials::{AuthChannel, Token, needs_token};
use crate::error::Error;
use crate::options::ClientOptions;

/// The largest response the client accepts (etcd's clients allow `math.MaxInt32`).
pub(crate) const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// A unary request carrying `timeout` as its `grpc-timeout`, so the server gives up too.
pub(crate) fn unary<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

pub(crate) fn kv(channel: AuthChannel) -> KvClient<AuthChannel> {
    KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

pub(crate) fn lease(channel: AuthChannel) -> LeaseClient<AuthChannel> {
    LeaseClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

pub(crate) fn registry(channel: AuthChannel) -> RegistryClient<AuthChannel> {
    RegistryClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

pub(crate) fn config(channel: AuthChannel) -> ConfigClient<AuthChannel> {
    ConfigClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

pub(crate) fn pubsub(channel: AuthChannel) -> PubSubClient<AuthChannel> {
    PubSubClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// Whether a request may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Sending it twice is the same as once (reads, keep-alives, revokes, watch creation).
    Idempotent,
    /// It changes the store: retried only if it cannot have been sent.
    Write,
}

/// How a failed attempt failed, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection could be made: the request was not sent.
    NotSent,
    /// The endpoint is unreachable, broke the connection, is unhealthy, or did not answer in
    /// time: the request may or may not have been applied.
    Unhealthy,
    /// The server's answer.
    Final,
}

/// One endpoint and its cached channel.
struct Slot {
    uri: String,
    endpoint: Endpoint,
    /// The channel, with the generation that tells it apart from its successors.
    channel: Mutex<Option<(u64, Channel)>>,
}

/// A channel to one endpoint, as handed to a request.
#[derive(Clone)]
pub(crate) struct Conn {
    /// The channel, carrying the client's token.
    pub(crate) channel: AuthChannel,
    /// The same channel without the token (to authenticate on).
    raw: Channel,
    /// The endpoint's index.
    pub(crate) index: usize,
    /// Which channel of that endpoint this is (a new one after each failure).
    pub(crate) generation: u64,
}

/// The endpoint list and the retry policy (see the module docs).
pub(crate) struct Endpoints {
    slots: Vec<Slot>,
    current: AtomicUsize,
    generations: AtomicU64,
    options: ClientOptions,
    /// The token requests carry, if the options have credentials.
    token: Token,
}

impl Endpoints {
    /// The endpoints, checked but not connected. `host:port` means `http://host:port`.
    pub(crate) fn new(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let slots = endpoints
            .into_iter()
            .map(|endpoint| slot(endpoint.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        if slots.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Self {
            slots,
            current: AtomicUsize::new(0),
            generations: AtomicU64::new(0),
            options,
            token: Token::default(),
        })
    }

    /// The options the endpoints were made with.
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Every endpoint's URL, in order.
    pub(crate) fn uris(&self) -> Vec<String> {
        self.slots.iter().map(|slot| slot.uri.clone()).collect()
    }

    /// The URL of the endpoint requests go to now.
    pub(crate) fn current_uri(&self) -> &str {
        &self.slots[self.current()].uri
    }

    fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.slots.len()
    }

    /// Connects to the first endpoint that answers, starting with the current one, and makes
    /// it current. Fails with the last endpoint's error if none does.
    pub(crate) async fn connect_any(&self) -> Result<(), Status> {
        let mut last = Status::unavailable("no endpoints");
        for _ in 0..self.slots.len() {
            let index = self.current();
            match self.conn(index).await {
                Ok(_) => return Ok(()),
                Err(status) => {
                    tracing::debug!(endpoint = %self.slots[index].uri, error = %status, "cannot connect");
                    self.failed(index, None);
                    last = status;
                }
            }
        }
        Err(last)
    }

    /// The cached channel to endpoint `index`, connecting it if there is none.
    async fn conn(&self, index: usize) -> Result<Conn, Status> {
        let slot = &self.slots[index];
        let cached = slot
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((generation, channel)) = cached {
            return Ok(Conn {
                channel: self.token.attach(channel.clone()),
                raw: channel,
                index,
                generation,
            });
        }
        let connect = tokio::time::timeout(self.options.connect_timeout, slot.endpoint.connect());
        let channel = match connect.await {
            Ok(Ok(channel)) => channel,
            Ok(Err(err)) => {
                return Err(Status::unavailable(format!(
                    "connecting to {}: {}",
                    slot.uri,
                    chain(&err)
                )));
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "connecting to {}: no connection within {:?}",
                    slot.uri, self.options.connect_timeout
                )));
            }
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *slot.channel.lock().unwrap_or_else(PoisonError::into_inner) = Some((generation, channel.clone()));
        Ok(Conn {
            channel: self.token.attach(channel.clone()),
            raw: channel,
            index,
            generation,
        })
    }

    /// Endpoint `index` failed: forget its channel (if it is still the one of `generation`;
    /// `None`: whatever it is) and make the next endpoint current, unless another request
    /// already moved on.
    pub(crate) fn failed(&self, index: usize, generation: Option<u64>) {
        {
            let mut cached = self.slots[index]
                .channel
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if generation.is_none() || cached.as_ref().map(|(g, _)| *g) == generation {
                *cached = None;
            }
        }
        let next = (index + 1) % self.slots.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Runs `attempt` on the current endpoint, each try within the request timeout, failing
    /// over and retrying as the module docs say. Its retries and failovers are logged inside a
    /// `request` span.
    #[tracing::instrument(level = "debug", name = "request", skip_all, fields(?idempotence))]
    pub(crate) async fn call<T, F, Fut>(&self, idempotence: Idempotence, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        // Every endpoint gets a chance, whatever the configured retries.
        let retries = self.options.retries.max(self.slots.len() - 1);
        let mut retry = 0;
        // Authenticating again (or retrying a write the auth store's change refused) is not a
        // failover: it gets a few tries of its own.
        let mut auth_retries = 0;
        loop {
            let index = self.current();
            let (status, failure, generation) = match self.conn(index).await {
                Err(status) => (status, Failure::NotSent, None),
                Ok(conn) => {
                    let generation = conn.generation;
                    let attempt = async {
                        self.authenticate_if_needed(&conn).await?;
                        attempt(conn).await
                    };
                    match tokio::time::timeout(self.options.request_timeout, attempt).await {
                        Ok(Ok(answer)) => return Ok(answer),
                        Ok(Err(status))
                            if self.may_retry_for_auth(&status) && auth_retries < AUTH_RETRIES =>
                        {
                            auth_retries += 1;
                            if concord_proto::rpctypes::AUTH_OLD_REVISION.is(&status) {
                                // The member had not yet applied the auth change the write
                                // met: give it a moment to.
                                tokio::time::sleep(self.options.jittered_backoff(auth_retries)).await;
                            } else {
                                self.token.clear();
                                tracing::debug!(error = %status, "authenticating again");
                            }
                            continue;
                        }
                        Ok(Err(status)) => {
                            let failure = classify(&status);
                            (status, failure, Some(generation))
                        }
                        Err(_) => (
                            Status::deadline_exceeded(format!(
                                "no answer from {} within {:?}",
                                self.slots[index].uri, self.options.request_timeout
                            )),
                            Failure::Unhealthy,
                            Some(generation),
                        ),
                    }
                }
            };
            if failure == Failure::Final {
                return Err(status);
            }
            tracing::debug!(endpoint = %self.slots[index].uri, error = %status, ?failure, "request failed");
            self.failed(index, generation);
            if self.slots.len() > 1 {
                let next = &self.slots[self.current()].uri;
                tracing::info!(from = %self.slots[index].uri, to = %next, error = %status, "failing over");
            }
            let may_retry = failure == Failure::NotSent || idempotence == Idempotence::Idempotent;
            if !may_retry || retry >= retries {
                return Err(status);
            }
            tokio::time::sleep(self.options.jittered_backoff(retry)).await;
            retry += 1;
        }
    }
}

/// How many times one request authenticates again (or retries a write refused for an old auth
/// revision) before it gives up with the server's answer.
const AUTH_RETRIES: usize = 3;

impl Endpoints {
    /// Whether a request the server refused with `status` is worth sending again after
    /// authenticating (with credentials), or as it is (a write checked at an old auth revision).
    fn may_retry_for_auth(&self, status: &Status) -> bool {
        concord_proto::rpctypes::AUTH_OLD_REVISION.is(status)
            || (self.options.credentials.is_some() && needs_token(status))
    }

    /// Authenticates on `conn` first if the client has credentials but no token yet.
    async fn authenticate_if_needed(&self, conn: &Conn) -> Result<(), Status> {
        match &self.options.credentials {
            Some(credentials) if !self.token.is_set() => {
                self.token.authenticate(conn.raw.clone(), credentials).await
            }
            _ => Ok(()),
        }
    }
}

/// A server stream opened by [`Endpoints::open_stream`], with the channel it runs on.
pub(crate) struct OpenStream<T> {
    /// The responses.
    pub(crate) responses: tonic::Streaming<T>,
    index: usize,
    generation: u64,
}

impl Endpoints {
    /// Opens a server stream with `open` (retried on the next endpoint like a read until the
    /// server answers).
    pub(crate) async fn open_stream<T, F, Fut>(&self, mut open: F) -> Result<OpenStream<T>, Status>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, Status>>,
    {
        self.call(Idempotence::Idempotent, |conn| {
            let (index, generation) = (conn.index, conn.generation);
            let opened = open(conn.channel);
            async move {
                Ok(OpenStream {
                    responses: opened.await?.into_inner(),
                    index,
                    generation,
                })
            }
        })
        .await
    }

    /// A stream opened by [`open_stream`](Self::open_stream) broke with `status`: if that says
    /// its endpoint failed, the next request goes to the next endpoint.
    pub(crate) fn stream_broke<T>(&self, stream: &OpenStream<T>, status: &Status) {
        if needs_token(status) && !concord_proto::rpctypes::AUTH_OLD_REVISION.is(status) {
            self.token.clear(); // the stream's reopening authenticates again
        }
        if is_transient(status) {
            self.failed(stream.index, Some(stream.generation));
        }
    }
}

/// Checks and configures one endpoint.
fn slot(uri: &str, options: &ClientOptions) -> Result<Slot, Error> {
    let invalid = |reason: String| Error::InvalidEndpoint {
        endpoint: uri.to_string(),
        reason,
    };
    let full = if uri.contains("://") {
        uri.to_string()
    } else {
        format!("http://{uri}")
    };
    let mut endpoint = Endpoint::from_shared(full.clone())
        .map_err(|err| invalid(chain(&err)))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if let Some(interval) = options.keep_alive_interval {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(options.keep_alive_timeout)
            .keep_alive_while_idle(true);
    }
    match (endpoint.uri().scheme_str(), &options.tls) {
        (Some("http"), _) => {}
        (Some("https"), Some(tls)) => {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|err| invalid(chain(&err)))?;
        }
        (Some("https"), None) => return Err(invalid("https needs ClientOptions::tls".into())),
        (scheme, _) => return Err(invalid(format!("unsupported scheme {scheme:?}"))),
    }
    Ok(Slot {
        uri: full,
        endpoint,
        channel: Mutex::new(None),
    })
}

/// Whether `status` says the endpoint failed (unreachable, broken, unhealthy, too slow) rather
/// than answered: a long-lived stream that ends with it is reopened, elsewhere if need be.
pub(crate) fn is_transient(status: &Status) -> bool {
    classify(status) != Failure::Final
}

/// How a failed attempt failed.
fn classify(status: &Status) -> Failure {
    let mut source: Option<&(dyn StdError + 'static)> = Some(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return Failure::NotSent; // the channel could not reconnect: nothing went out
        }
        source = err.source();
    }
    // A status the server sent has no source; one with a source was made here, from a
    // transport error (a broken connection, a reset stream, ...).
    let local = StdError::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Failure::Unhealthy,
        _ if local => Failure::Unhealthy,
        _ => Failure::Final,
    }
}

/// `err` and its sources, joined by `: `.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let next = err.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn options() -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(500),
            retry_backoff: Duration::from_millis(1),
            ..ClientOptions::default()
        }
    }

    /// A local port nothing listens on (bound, then closed).
    fn dead_port() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr.to_string()
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(matches!(
            Endpoints::new(Vec::<String>::new(), options()),
            Err(Error::NoEndpoints)
        ));
        let https = Endpoints::new(["https://127.0.0.1:1"], options());
        assert!(
            matches!(https, Err(Error::InvalidEndpoint { .. })),
            "{:?}",
            https.err()
        );
        let bad = Endpoints::new(["ftp://127.0.0.1:1"], options());
        assert!(matches!(bad, Err(Error::InvalidEndpoint { .. })));
        let plain = Endpoints::new(["127.0.0.1:2379", "http://localhost:2379"], options()).unwrap();
        assert_eq!(plain.uris(), ["http://127.0.0.1:2379", "http://localhost:2379"]);
    }

    #[test]
    fn server_statuses_are_final_and_transport_ones_are_not() {
        assert_eq!(classify(&Status::not_found("x")), Failure::Final);
        assert_eq!(classify(&Status::unknown("x")), Failure::Final);
        assert_eq!(
            classify(&Status::unavailable("etcdserver: no leader")),
            Failure::Unhealthy
        );
        assert_eq!(classify(&Status::deadline_exceeded("x")), Failure::Unhealthy);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify(&Status::from_error(Box::new(reset))), Failure::Unhealthy);
        let refused = tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(classify(&Status::from_error(Box::new(refused))), Failure::NotSent);
    }

    #[tokio::test]
    async fn nothing_listening_is_unavailable_after_trying_every_endpoint() {
        let endpoints = Endpoints::new([dead_port(), dead_port()], options()).unwrap();
        let err = endpoints.connect_any().await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("connecting to"), "{err:?}");

        // A write that was never sent is retried on every endpoint.
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let err = endpoints
            .call(Idempotence::Write, |_conn| {
                counted.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, Status>(()) }
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(calls.load(Ordering::Relaxed), 0, "no connection, no attempt");
    }
}

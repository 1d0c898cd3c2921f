//! [`ClientOptions`]: timeouts, retries and the defaults of the coordination helpers.

use std::time::Duration;

/// How a [`Client`](crate::Client) talks to its endpoints. `ClientOptions::default()` suits a
/// cluster on a local network; start from it and change what you need:
///
/// ```
/// use std::time::Duration;
/// use concord_client::ClientOptions;
///
/// let options = ClientOptions {
///     request_timeout: Duration::from_secs(2),
///     ..ClientOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long one attempt of a unary request (put, range, txn, lease grant, keep-alive, ...)
    /// or the creation of a watch may take. A retried request gets this much per attempt.
    /// Default: 5 s.
    pub request_timeout: Duration,
    /// How long connecting to one endpoint (TCP and HTTP/2 handshake) may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// How many times a failed request is retried on the next endpoint, when it may be (see
    /// [`Client`](crate::Client)). Every endpoint is tried at least once whatever this says.
    /// Default: 3.
    pub retries: usize,
    /// The pause before the first retry; it doubles with each further retry, up to
    /// [`max_retry_backoff`](Self::max_retry_backoff), with jitter. Default: 50 ms.
    pub retry_backoff: Duration,
    /// The longest pause between two retries, and between two reopenings of a long-lived
    /// stream during an outage. Default: 1 s.
    pub max_retry_backoff: Duration,
    /// The interval of HTTP/2 pings on an open connection, which notice a dead server even
    /// while a watch waits quietly; `None` sends none. Default: 10 s.
    pub keep_alive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection counts as dead. Default: 5 s.
    pub keep_alive_timeout: Duration,
    /// The TTL of the lease behind [`Client::lock`](crate::Client::lock): a holder that dies
    /// without unlocking holds the lock this long at most. Default: 10 s.
    pub lock_ttl: Duration,
    /// TLS for `https://` endpoints (which are refused without it); `http://` ones ignore it.
    /// Default: none.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// The user to authenticate as, while the server has auth on. The client authenticates
    /// before its first request and again whenever its token lapses. Default: none.
    pub credentials: Option<crate::Credentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retries: 3,
            retry_backoff: Duration::from_millis(50),
            max_retry_backoff: Duration::from_secs(1),
            keep_alive_interval: Some(Duration::from_secs(10)),
            keep_alive_timeout: Duration::from_secs(5),
            lock_ttl: Duration::from_secs(10),
            tls: None,
            credentials: None,
        }
    }
}

impl ClientOptions {
    /// The pause before retry number `retry` (0 for the first).
    pub(crate) fn backoff(&self, retry: usize) -> Duration {
        let factor = 1u32 << retry.min(16);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.max_retry_backoff)
    }

    /// [`backoff`](Self::backoff) scaled by a random factor in [0.5, 1), so that the
    /// long-lived streams of many clients that broke together do not reopen together.
    pub(crate) fn jittered_backoff(&self, retry: usize) -> Duration {
        let entropy = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let factor = 0.5 + f64::from(entropy % 1000) / 2000.0;
        self.backoff(retry).mul_f64(factor)
    }
}

/// `ttl` in whole seconds, rounded up, at least 1: the unit of etcd's lease TTLs.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let options = ClientOptions::default();
        let pauses: Vec<_> = (0..7).map(|retry| options.backoff(retry).as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(options.backoff(usize::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_backoff() {
        let options = ClientOptions::default();
        for retry in 0..8 {
            let full = options.backoff(retry);
            let jittered = options.jittered_backoff(retry);
            assert!(
                jittered >= full / 2 && jittered < full,
                "{jittered:?} of {full:?}"
            );
        }
    }

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2001)), 3);
    }
}

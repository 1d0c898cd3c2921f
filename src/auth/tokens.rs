//! [`SimpleTokens`]: etcd's `simple` auth tokens. A token is a random string handed out by
//! Authenticate; it names a user on the member that issued it, and lapses after the TTL
//! (`--auth-token-ttl`) without use. Every use restarts the TTL, as etcd's do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The tokens this member issued, and whose they are.
#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    issued: AtomicU64,
    tokens: Mutex<HashMap<String, Held>>,
}

#[derive(Debug)]
struct Held {
    user: String,
    lapses_at: Instant,
}

impl SimpleTokens {
    /// No tokens yet; each lapses `ttl` after its last use.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            issued: AtomicU64::new(0),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        // A panic while holding the lock leaves a map of whole entries.
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new token for `user`: 16 random letters, a dot, and a sequence number (etcd's form).
    pub fn issue(&self, user: &str) -> String {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let letters: String = random
            .bytes()
            .take(16)
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        let token = format!("{letters}.{}", self.issued.fetch_add(1, Ordering::Relaxed) + 1);
        let now = Instant::now();
        let mut tokens = self.tokens();
        tokens.retain(|_, held| held.lapses_at > now);
        tokens.insert(
            token.clone(),
            Held {
                user: user.to_owned(),
                lapses_at: now + self.ttl,
            },
        );
        token
    }

    /// The user `token` names, if it is one of ours and has not lapsed; its TTL restarts.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.tokens();
        let held = tokens.get_mut(token)?;
        if held.lapses_at <= now {
            tokens.remove(token);
            return None;
        }
        held.lapses_at = now + self.ttl;
        Some(held.user.clone())
    }

    /// Drops every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.tokens().retain(|_, held| held.user != user);
    }

    /// Drops every token (auth turned off).
    pub fn clear(&self) {
        self.tokens().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_user_until_they_lapse_or_are_invalidated() {
        let tokens = SimpleTokens::new(Duration::from_secs(60));
        let alice = tokens.issue("alice");
        let bob = tokens.issue("bob");
        assert_ne!(alice, bob);
        let (letters, seq) = alice.split_once('.').unwrap();
        assert!(letters.len() == 16 && letters.bytes().all(|b| b.is_ascii_lowercase()));
        assert_eq!(seq, "1");
        assert_eq!(tokens.user(&alice).as_deref(), Some("alice"));
        assert_eq!(tokens.user("forged.1"), None);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user(&alice), None);
        assert_eq!(tokens.user(&bob).as_deref(), Some("bob"));
        tokens.clear();
        assert_eq!(tokens.user(&bob), None);
    }

    #[test]
    fn an_unused_token_lapses_after_the_ttl() {
        let tokens = SimpleTokens::new(Duration::ZERO);
        let token = tokens.issue("alice");
        assert_eq!(tokens.user(&token), None);
    }
}

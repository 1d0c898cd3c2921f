//! Passwords: stored only as salted bcrypt hashes (etcd's format, so etcd's `hashedPassword`
//! field means the same here), hashed and checked off the async runtime, a bounded number at a
//! time, so a burst of wrong passwords costs its callers and not the cluster's other clients.

use std::sync::Arc;

use base64::Engine as _;
use tokio::sync::Semaphore;

use super::error::AuthError;

/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_COST: u32 = 10;

/// Hashes and checks passwords on blocking threads, at most `permits` at once.
#[derive(Debug, Clone)]
pub struct Passwords {
    cost: u32,
    permits: Arc<Semaphore>,
}

impl Passwords {
    /// Hashing at bcrypt `cost`, with one hash at a time per two cores (at least one), so the
    /// others stay free for requests.
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            cost,
            permits: Arc::new(Semaphore::new((cores / 2).max(1))),
        }
    }

    /// The `hashedPassword` of a change that sets `password`: base64 of its bcrypt hash.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let cost = self.cost;
        let hash = self
            .blocking(move || {
                bcrypt::non_truncating_hash(password, cost).map_err(|err| match err {
                    bcrypt::BcryptError::Truncation(_) => AuthError::PasswordTooLong,
                    _ => AuthError::InvalidAuthMgmt,
                })
            })
            .await??;
        Ok(base64::engine::general_purpose::STANDARD.encode(hash))
    }

    /// Whether `password` matches the stored `hash`; `AuthFailed` if not.
    pub async fn check(&self, password: String, hash: Vec<u8>) -> Result<(), AuthError> {
        let matches = self
            .blocking(move || {
                let hash = String::from_utf8(hash).map_err(|_| AuthError::AuthFailed)?;
                bcrypt::non_truncating_verify(password, &hash).map_err(|_| AuthError::AuthFailed)
            })
            .await??;
        if matches {
            Ok(())
        } else {
            Err(AuthError::AuthFailed)
        }
    }

    /// Whether a client's `hashedPassword` is base64 of a bcrypt hash.
    pub fn is_valid_hash(hashed_password: &str) -> bool {
        base64::engine::general_purpose::STANDARD
            .decode(hashed_password)
            .ok()
            .and_then(|hash| String::from_utf8(hash).ok())
            .is_some_and(|hash| hash.parse::<bcrypt::HashParts>().is_ok())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self.permits.acquire().await.map_err(|_| AuthError::AuthFailed)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| AuthError::AuthFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_checks_its_password_only() {
        let passwords = Passwords::new(4);
        let hashed = passwords.hash("s3cret".into()).await.unwrap();
        assert!(Passwords::is_valid_hash(&hashed));
        assert!(!Passwords::is_valid_hash("c2VjcmV0"));
        let stored = base64::engine::general_purpose::STANDARD.decode(&hashed).unwrap();
        assert!(!String::from_utf8_lossy(&stored).contains("s3cret"));
        passwords.check("s3cret".into(), stored.clone()).await.unwrap();
        // bcrypt reads at most 71 bytes: a longer password is refused, never cut short.
        assert_eq!(
            passwords.hash("p".repeat(72)).await,
            Err(AuthError::PasswordTooLong)
        );
        assert!(passwords.hash("p".repeat(71)).await.is_ok());
        assert_eq!(
            passwords.check("s3cret".repeat(20), stored.clone()).await,
            Err(AuthError::AuthFailed)
        );
        assert_eq!(
            passwords.check("wrong".into(), stored).await,
            Err(AuthError::AuthFailed)
        );
        assert_eq!(
            passwords.check("s3cret".into(), b"garbage".to_vec()).await,
            Err(AuthError::AuthFailed)
        );
    }
}

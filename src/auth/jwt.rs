//! JWT auth tokens (`--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`, as
//! etcd takes them): signed by the member that authenticates, good on every member that has the
//! public key, and never stored.
//!
//! A token carries its user, the auth revision it was issued at and its expiry. Since a JWT
//! cannot be revoked, one issued before the auth store last changed (a user deleted, a password
//! or a permission changed) is refused as an invalid token, and clients authenticate again: the
//! same effect etcd gets by refusing such requests with `revision of auth store is old`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::AuthError;

/// etcd's default JWT lifetime.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// What `--auth-token jwt,...` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    /// The public key (PEM) tokens are verified with (for HS*, none: the secret does both).
    pub pub_key: Option<PathBuf>,
    /// The private key (PEM; for HS*, the secret) tokens are signed with. A member without it
    /// verifies tokens but issues none.
    pub priv_key: Option<PathBuf>,
    /// RS256/384/512, PS256/384/512, ES256/384, EdDSA or HS256/384/512.
    pub sign_method: String,
    /// How long a token is good for.
    pub ttl: Duration,
}

impl JwtOptions {
    /// Parses the options after `jwt,` (`pub-key=...,priv-key=...,sign-method=...,ttl=...`).
    pub fn parse(options: &str) -> Result<JwtOptions, String> {
        let mut parsed = JwtOptions {
            pub_key: None,
            priv_key: None,
            sign_method: String::new(),
            ttl: DEFAULT_TTL,
        };
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (name, value) = option
                .split_once('=')
                .ok_or_else(|| format!("JWT option {option:?} is not name=value"))?;
            match name {
                "pub-key" => parsed.pub_key = Some(value.into()),
                "priv-key" => parsed.priv_key = Some(value.into()),
                "sign-method" => parsed.sign_method = value.to_string(),
                "ttl" => {
                    parsed.ttl = crate::config::parse_duration(value).map_err(|e| e.to_string())?;
                }
                _ => return Err(format!("unknown JWT option {name:?}")),
            }
        }
        let algorithm = Algorithm::from_str(&parsed.sign_method)
            .map_err(|_| format!("unsupported JWT sign-method {:?}", parsed.sign_method))?;
        let hmac = matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        if hmac && parsed.priv_key.is_none() {
            return Err("an HS* JWT needs priv-key (the secret)".into());
        }
        if !hmac && parsed.pub_key.is_none() {
            return Err("a JWT needs pub-key".into());
        }
        if parsed.ttl.is_zero() {
            return Err("a JWT ttl must be positive".into());
        }
        Ok(parsed)
    }
}

/// A token's claims, named as etcd names them.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and verifies JWTs with one member's keys.
pub struct JwtTokens {
    algorithm: Algorithm,
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("signs", &self.signing.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl JwtTokens {
    /// Loads the keys `options` name; the error names the file or the problem.
    pub fn load(options: &JwtOptions) -> Result<JwtTokens, String> {
        let algorithm = Algorithm::from_str(&options.sign_method)
            .map_err(|_| format!("unsupported JWT sign-method {:?}", options.sign_method))?;
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
        let bad = |path: &PathBuf, e: jsonwebtoken::errors::Error| format!("{}: {e}", path.display());
        use Algorithm::*;
        let signing = match &options.priv_key {
            None => None,
            Some(path) => {
                let pem = read(path)?;
                Some(match algorithm {
                    HS256 | HS384 | HS512 => EncodingKey::from_secret(&pem),
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                        EncodingKey::from_rsa_pem(&pem).map_err(|e| bad(path, e))?
                    }
                    ES256 | ES384 => EncodingKey::from_ec_pem(&pem).map_err(|e| bad(path, e))?,
                    EdDSA => EncodingKey::from_ed_pem(&pem).map_err(|e| bad(path, e))?,
                })
            }
        };
        let verifying = match (algorithm, &options.pub_key, &options.priv_key) {
            (HS256 | HS384 | HS512, _, Some(secret)) => DecodingKey::from_secret(&read(secret)?),
            (_, Some(path), _) => {
                let pem = read(path)?;
                match algorithm {
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                        DecodingKey::from_rsa_pem(&pem).map_err(|e| bad(path, e))?
                    }
                    ES256 | ES384 => DecodingKey::from_ec_pem(&pem).map_err(|e| bad(path, e))?,
                    EdDSA => DecodingKey::from_ed_pem(&pem).map_err(|e| bad(path, e))?,
                    HS256 | HS384 | HS512 => return Err("an HS* JWT needs priv-key".into()),
                }
            }
            _ => return Err("a JWT needs pub-key".into()),
        };
        let tokens = JwtTokens {
            algorithm,
            signing,
            verifying,
            ttl: options.ttl,
        };
        // The two keys must be a pair: a token signed here must verify here.
        if tokens.signing.is_some() {
            let probe = tokens.issue("probe", 1).map_err(|e| e.to_string())?;
            if tokens.verify(&probe).is_none() {
                return Err("the JWT public and private keys do not match".into());
            }
        }
        Ok(tokens)
    }

    /// A token for `user` at auth `revision`.
    pub fn issue(&self, user: &str, revision: u64) -> Result<String, AuthError> {
        let signing = self.signing.as_ref().ok_or(AuthError::VerifyOnly)?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |now| (now + self.ttl).as_secs());
        let claims = Claims {
            username: user.to_owned(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, signing)
            .map_err(|_| AuthError::VerifyOnly)
    }

    /// The user and auth revision of `token`, if its signature holds and it has not expired.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_options(dir: &std::path::Path, ttl: &str) -> JwtOptions {
        let secret = dir.join("secret");
        std::fs::write(&secret, b"a shared secret of reasonable length").unwrap();
        JwtOptions::parse(&format!(
            "priv-key={},sign-method=HS256,ttl={ttl}",
            secret.display()
        ))
        .unwrap()
    }

    #[test]
    fn options_are_parsed_as_etcd_writes_them() {
        let parsed = JwtOptions::parse("pub-key=a.pub,priv-key=a.key,sign-method=RS256,ttl=10m").unwrap();
        assert_eq!(parsed.pub_key, Some(PathBuf::from("a.pub")));
        assert_eq!(parsed.ttl, Duration::from_secs(600));
        assert_eq!(
            JwtOptions::parse("pub-key=a.pub,sign-method=ES256").unwrap().ttl,
            DEFAULT_TTL
        );
        for bad in [
            "pub-key=a.pub,sign-method=XX999",
            "pub-key=a.pub",
            "sign-method=RS256",
            "sign-method=HS256",
            "pub-key=a.pub,sign-method=RS256,colour=blue",
            "pub-key=a.pub,sign-method=RS256,ttl=soon",
            "pub-key",
        ] {
            assert!(JwtOptions::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_verifies_until_it_expires_and_not_when_tampered_with() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = JwtTokens::load(&secret_options(dir.path(), "1m")).unwrap();
        let token = tokens.issue("alice", 7).unwrap();
        assert_eq!(tokens.verify(&token), Some(("alice".to_string(), 7)));
        // Change the payload (the user), keep the signature.
        let parts: Vec<&str> = token.split('.').collect();
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(engine.decode(parts[1]).unwrap()).unwrap();
        let forged = engine.encode(payload.replace("alice", "root"));
        assert_eq!(
            tokens.verify(&format!("{}.{forged}.{}", parts[0], parts[2])),
            None
        );
        assert_eq!(tokens.verify("not.a.token"), None);
        // Another secret's token.
        let other = dir.path().join("other");
        std::fs::write(&other, b"another secret").unwrap();
        let options = JwtOptions::parse(&format!("priv-key={},sign-method=HS256", other.display())).unwrap();
        let stranger = JwtTokens::load(&options).unwrap().issue("alice", 7).unwrap();
        assert_eq!(tokens.verify(&stranger), None);
        // Expired.
        let mut expired = secret_options(dir.path(), "1s");
        expired.ttl = Duration::from_secs(1);
        let short = JwtTokens::load(&expired).unwrap();
        let claims = Claims {
            username: "alice".into(),
            revision: 7,
            exp: 1,
        };
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            short.signing.as_ref().unwrap(),
        )
        .unwrap();
        assert_eq!(short.verify(&old), None);
    }
}

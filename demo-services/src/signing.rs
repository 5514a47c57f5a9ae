//! The keys user-service signs tokens with: Ed25519 pairs in the users database,
//! so every replica signs with the current one and publishes the same set
//! (`GET /.well-known/jwks.json`), the private halves sealed with a key from a
//! secret file.
//!
//! A key is published one rotation before it signs (`next`), signs while it is
//! `current`, and stays published after it is `retired` until every token it
//! signed has expired (the token lifetime, and a minute's margin for a replica
//! that signed with it just before it saw the rotation). Verifiers that refetch
//! the set on their schedule therefore know a key before its first token, and
//! know it as long as any of its tokens lives: a rotation refuses no valid token.
//!
//! Rotation happens on `POST /keys/rotate` (admin) and on an interval; replicas
//! racing to rotate on the interval rotate once (the check runs in one write
//! transaction).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sqlx::AnyPool;
use tower_gateway_auth::{Algorithm, KeyConfig, TokenIssuer};

use crate::db;
use crate::error::ApiError;

/// How long a retired key stays published past the token lifetime.
const RETIRED_MARGIN: Duration = Duration::from_secs(60);

/// Why keys cannot be made, read or used.
#[derive(Debug)]
pub struct KeyError(String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl From<sqlx::Error> for KeyError {
    fn from(err: sqlx::Error) -> Self {
        Self(format!("signing keys: {err}"))
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The key that seals private keys at rest: SHA-256 of the secret file's bytes.
#[derive(Clone)]
pub struct SealingKey(Arc<LessSafeKey>);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// A sealing key from a secret of at least 32 bytes.
    pub fn new(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError("the key-encryption secret must be at least 32 bytes".into()));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret);
        let key = UnboundKey::new(&AES_256_GCM, digest.as_ref()).map_err(|_| KeyError("AES-256-GCM key".into()))?;
        Ok(Self(Arc::new(LessSafeKey::new(key))))
    }

    fn seal(&self, kid: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| KeyError("no random source".into()))?;
        let mut sealed = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(kid.as_bytes()), &mut sealed)
            .map_err(|_| KeyError("cannot seal a private key".into()))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(out)
    }

    fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let wrong = || {
            KeyError(format!(
                "the private key {kid} does not open: is KEY_ENCRYPTION_KEY_FILE the one it was sealed with?"
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, sealed) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buffer = sealed.to_vec();
        let plain = self.0.open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buffer).map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

/// A fresh Ed25519 pair: its kid (the RFC 7638 thumbprint), public JWK and PKCS#8 private key.
fn generate() -> Result<(String, Value, Vec<u8>), KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError("Ed25519 key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError("Ed25519 key".into()))?;
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    // RFC 7638: the required members, sorted, no spaces.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()));
    let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig", "kid": kid });
    Ok((kid, jwk, pkcs8.as_ref().to_vec()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let base64 = STANDARD.encode(der);
    let lines: Vec<&str> = base64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// The key that signs now, ready to sign.
struct Current {
    kid: String,
    issuer: TokenIssuer,
}

/// The rotating keys of user-service. See the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct SigningKeys {
    db: AnyPool,
    sealing: SealingKey,
    claims: Arc<KeyConfig>,
    current: Arc<ArcSwapOption<Current>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kid = self.current.load().as_ref().map(|c| c.kid.clone());
        f.debug_struct("SigningKeys").field("current", &kid).finish_non_exhaustive()
    }
}

/// A key rotation: the kid that signed before, and the one that signs now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    /// The key that signed until now (still published until its tokens expire).
    pub previous: String,
    /// The key that signs from now on.
    pub current: String,
}

impl SigningKeys {
    /// The keys in `db`, sealed with `sealing`; tokens carry `claims`' issuer,
    /// audience and lifetime. Makes the first keys if there are none.
    pub async fn open(db: AnyPool, sealing: SealingKey, claims: KeyConfig) -> Result<Self, KeyError> {
        let keys = Self { db, sealing, claims: Arc::new(claims), current: Arc::new(ArcSwapOption::empty()) };
        keys.ensure().await?;
        keys.load_current().await?;
        Ok(keys)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.claims.token_ttl_secs)
    }

    async fn insert(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, state: &str) -> Result<String, KeyError> {
        let (kid, jwk, private) = generate()?;
        let sealed = self.sealing.seal(&kid, &private)?;
        let activated = (state == "current").then(now);
        sqlx::query(
            "INSERT INTO signing_keys (kid, state, public_jwk, private_sealed, created_at, activated_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&kid)
        .bind(state)
        .bind(jwk.to_string())
        .bind(sealed)
        .bind(now())
        .bind(activated)
        .execute(&mut **tx)
        .await?;
        Ok(kid)
    }

    /// A current and a next key, if either is missing (first start, or two
    /// replicas starting at once: the write lock makes one of them do it).
    async fn ensure(&self) -> Result<(), KeyError> {
        let mut tx = db::begin_write(&self.db).await?;
        let states: Vec<(String,)> =
            sqlx::query_as("SELECT state FROM signing_keys WHERE state IN ('next', 'current')")
                .fetch_all(&mut *tx)
                .await?;
        for state in ["current", "next"] {
            if !states.iter().any(|(s,)| s == state) {
                self.insert(&mut tx, state).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Reads the current key if it changed (another replica rotated).
    async fn load_current(&self) -> Result<Arc<Current>, KeyError> {
        let (kid,): (String,) =
            sqlx::query_as("SELECT kid FROM signing_keys WHERE state = 'current'").fetch_one(&self.db).await?;
        if let Some(current) = self.current.load_full()
            && current.kid == kid
        {
            return Ok(current);
        }
        let (sealed,): (Vec<u8>,) = sqlx::query_as("SELECT private_sealed FROM signing_keys WHERE kid = $1")
            .bind(&kid)
            .fetch_one(&self.db)
            .await?;
        let private = self.sealing.open(&kid, &sealed)?;
        let issuer = TokenIssuer::private_pem(Algorithm::EdDSA, pem("PRIVATE KEY", &private).as_bytes())
            .map_err(|e| KeyError(e.to_string()))?;
        let issuer = self.claims.apply_to(issuer).map_err(|e| KeyError(e.to_string()))?.with_kid(kid.clone());
        let current = Arc::new(Current { kid, issuer });
        self.current.store(Some(current.clone()));
        Ok(current)
    }

    /// A token signed with the current key (as the database has it now).
    pub async fn issue(&self, subject: &str, email: Option<&str>, roles: &[String]) -> Result<String, KeyError> {
        let current = self.load_current().await?;
        current.issuer.issue(subject, email, roles).map_err(|e| KeyError(e.to_string()))
    }

    /// How long tokens live.
    pub fn token_ttl(&self) -> Duration {
        self.ttl()
    }

    /// The `iss` tokens carry.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.issuer.as_deref()
    }

    /// The kid that signs now.
    pub async fn current_kid(&self) -> Result<String, KeyError> {
        Ok(self.load_current().await?.kid.clone())
    }

    /// Rotates now: the next key signs, the current one retires, a new next is
    /// made, and keys retired longer ago than the token lifetime (and margin) go.
    pub async fn rotate(&self) -> Result<Rotation, KeyError> {
        self.rotate_if(|_| true).await?.ok_or_else(|| KeyError("no current key".into()))
    }

    /// Rotates if the current key has signed for `every` or longer; what was
    /// rotated, if anything.
    pub async fn rotate_if_older(&self, every: Duration) -> Result<Option<Rotation>, KeyError> {
        let every = every.as_secs() as i64;
        self.rotate_if(|activated_at| activated_at + every <= now()).await
    }

    async fn rotate_if(&self, due: impl Fn(i64) -> bool) -> Result<Option<Rotation>, KeyError> {
        let mut tx = db::begin_write(&self.db).await?;
        let row: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT kid, activated_at FROM signing_keys WHERE state = 'current'")
                .fetch_optional(&mut *tx)
                .await?;
        let Some((previous, activated_at)) = row else { return Ok(None) };
        if !due(activated_at.unwrap_or(0)) {
            return Ok(None);
        }
        let at = now();
        sqlx::query("UPDATE signing_keys SET state = 'retired', retired_at = $1 WHERE state = 'current'")
            .bind(at)
            .execute(&mut *tx)
            .await?;
        let (current,): (String,) = sqlx::query_as(
            "UPDATE signing_keys SET state = 'current', activated_at = $1 WHERE state = 'next' RETURNING kid",
        )
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        self.insert(&mut tx, "next").await?;
        sqlx::query("DELETE FROM signing_keys WHERE state = 'retired' AND retired_at < $1")
            .bind(self.published_since(at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.load_current().await?;
        tracing::info!(%previous, %current, "signing key rotated");
        Ok(Some(Rotation { previous, current }))
    }

    /// At `at`, the earliest retirement whose key is still published: one that
    /// may have signed a token that has not expired yet. One rule for what the
    /// set publishes and what a rotation deletes.
    fn published_since(&self, at: i64) -> i64 {
        at - (self.ttl() + RETIRED_MARGIN).as_secs() as i64
    }

    /// The published set: the next, current and recently retired keys.
    pub async fn jwks(&self) -> Result<Value, KeyError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT public_jwk FROM signing_keys WHERE state != 'retired' OR retired_at >= $1 ORDER BY created_at DESC",
        )
        .bind(self.published_since(now()))
        .fetch_all(&self.db)
        .await?;
        let keys: Vec<Value> = rows.into_iter().filter_map(|(jwk,)| serde_json::from_str(&jwk).ok()).collect();
        Ok(json!({ "keys": keys }))
    }

    /// Rotates whenever the current key has signed for `every`, checking every
    /// tenth of it (at most every minute), until the process ends.
    pub fn rotate_every(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let keys = self.clone();
        let check = (every / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(check);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(err) = keys.rotate_if_older(every).await {
                    tracing::warn!(%err, "scheduled key rotation failed; trying again");
                }
            }
        })
    }
}

/// How user-service signs tokens.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// With one key, from a file, never rotated nor published.
    Fixed(Arc<TokenIssuer>),
    /// With keys kept in the users database, rotated and published for
    /// verifiers at `jwks_uri`.
    Rotating {
        /// The keys.
        keys: SigningKeys,
        /// Where verifiers fetch the public keys: this service's
        /// `/.well-known/jwks.json` as they reach it.
        jwks_uri: String,
    },
}

impl From<Arc<TokenIssuer>> for Tokens {
    fn from(issuer: Arc<TokenIssuer>) -> Self {
        Self::Fixed(issuer)
    }
}

impl Tokens {
    pub(crate) async fn issue(&self, subject: &str, email: Option<&str>, roles: &[String]) -> Result<String, ApiError> {
        match self {
            Self::Fixed(issuer) => issuer.issue(subject, email, roles).map_err(ApiError::internal),
            Self::Rotating { keys, .. } => keys.issue(subject, email, roles).await.map_err(ApiError::internal),
        }
    }

    pub(crate) fn token_ttl(&self) -> Duration {
        match self {
            Self::Fixed(issuer) => issuer.token_ttl(),
            Self::Rotating { keys, .. } => keys.token_ttl(),
        }
    }

    pub(crate) fn rotating(&self) -> Result<(&SigningKeys, &str), ApiError> {
        match self {
            Self::Rotating { keys, jwks_uri } => Ok((keys, jwks_uri)),
            Self::Fixed(_) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "this service signs with a fixed key: it publishes no key set",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_key_and_kid() {
        let sealing = SealingKey::new(&[7; 32]).unwrap();
        let sealed = sealing.seal("k1", b"private").unwrap();
        assert_eq!(sealing.open("k1", &sealed).unwrap(), b"private");
        assert!(sealing.open("k2", &sealed).is_err(), "bound to its kid");
        assert!(SealingKey::new(&[8; 32]).unwrap().open("k1", &sealed).is_err(), "bound to its key");
        assert!(SealingKey::new(&[7; 31]).is_err(), "at least 32 bytes");
    }
}

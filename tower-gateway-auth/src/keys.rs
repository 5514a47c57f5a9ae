//! One key configuration for the side that issues tokens and the side that
//! verifies them, read the same way by both.
//!
//! ```toml
//! # asymmetric: the issuer holds the private key, verifiers only the public one
//! algorithm = "EdDSA"                       # or ES256, RS256, …
//! public_key_file = "/run/secrets/jwt_public.pem"
//! private_key_file = "/run/secrets/jwt_private.pem" # the issuer only
//! issuer = "user-service"
//! audience = "tower-gateway"
//! token_ttl_secs = 900
//! ```
//!
//! or, with one shared secret, `secret_file = "/run/secrets/jwt_secret"` (HS256).
//! The same fields come from the environment with [`KeyConfig::apply_env`]:
//! `JWT_ALGORITHM`, `JWT_SECRET_FILE`, `JWT_PUBLIC_KEY_FILE`, `JWT_PRIVATE_KEY_FILE`,
//! `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_TTL_SECS`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::authenticator::{Authenticator, AuthenticatorBuilder};
use crate::claims::{Audience, Claims};
use crate::verify::Key;

/// A key configuration that cannot work, naming its field (`secret_file`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfigError {
    /// The field, as named in [`KeyConfig`].
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl KeyConfigError {
    fn new(field: &'static str, message: impl fmt::Display) -> Self {
        Self { field, message: message.to_string() }
    }
}

impl fmt::Display for KeyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for KeyConfigError {}

/// How tokens are signed and verified. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    /// `HS256` with `secret_file` (the default then), or an asymmetric algorithm
    /// (`EdDSA`, `ES256`, `RS256`, …) with key files.
    pub algorithm: Option<String>,
    /// A file holding the shared HS256 secret, at least 32 bytes.
    pub secret_file: Option<PathBuf>,
    /// The public key, PEM: all a verifier needs.
    pub public_key_file: Option<PathBuf>,
    /// The private key, PEM: only the issuer has it.
    pub private_key_file: Option<PathBuf>,
    /// The `iss` tokens carry, and verifiers require.
    pub issuer: Option<String>,
    /// The `aud` tokens carry, and verifiers require.
    pub audience: Option<String>,
    /// How long issued tokens live; verifiers refuse longer-lived ones.
    pub token_ttl_secs: u64,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            algorithm: None,
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
            issuer: None,
            audience: None,
            token_ttl_secs: 15 * 60,
        }
    }
}

/// A secret from a file (a Docker secret, say), without the trailing newline
/// editors and `echo` add.
pub fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)?;
    secret.truncate(secret.trim_ascii_end().len());
    Ok(secret)
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, KeyConfigError> {
    read_secret_file(path).map_err(|e| KeyConfigError::new(field, format!("{}: {e}", path.display())))
}

impl KeyConfig {
    /// Overrides fields from the `JWT_*` environment variables named in the
    /// [module docs](self); empty values are ignored.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), KeyConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(v) = env("JWT_ALGORITHM") {
            self.algorithm = Some(v);
        }
        if let Some(v) = env("JWT_SECRET_FILE") {
            self.secret_file = Some(v.into());
        }
        if let Some(v) = env("JWT_PUBLIC_KEY_FILE") {
            self.public_key_file = Some(v.into());
        }
        if let Some(v) = env("JWT_PRIVATE_KEY_FILE") {
            self.private_key_file = Some(v.into());
        }
        if let Some(v) = env("JWT_ISSUER") {
            self.issuer = Some(v);
        }
        if let Some(v) = env("JWT_AUDIENCE") {
            self.audience = Some(v);
        }
        if let Some(v) = env("JWT_TTL_SECS") {
            self.token_ttl_secs = v.parse().map_err(|e| KeyConfigError::new("token_ttl_secs", e))?;
        }
        Ok(())
    }

    /// Whether any key is configured.
    pub fn is_set(&self) -> bool {
        self.secret_file.is_some() || self.public_key_file.is_some() || self.private_key_file.is_some()
    }

    fn algorithm(&self) -> Result<Algorithm, KeyConfigError> {
        match (&self.algorithm, &self.secret_file) {
            (None, Some(_)) => Ok(Algorithm::HS256),
            (None, None) => Err(KeyConfigError::new("algorithm", "required with key files (EdDSA, ES256, RS256…)")),
            (Some(name), _) => name.parse().map_err(|e| KeyConfigError::new("algorithm", format!("{name:?}: {e}"))),
        }
    }

    fn ttl(&self) -> Result<Duration, KeyConfigError> {
        if self.token_ttl_secs == 0 {
            return Err(KeyConfigError::new("token_ttl_secs", "must be positive"));
        }
        Ok(Duration::from_secs(self.token_ttl_secs))
    }

    /// The algorithm, the field holding its key and that key's bytes: the shared
    /// secret for HMAC, else the key file at `field` (the public or the private one).
    fn key_file(
        &self,
        field: &'static str,
        path: Option<&Path>,
    ) -> Result<(Algorithm, &'static str, Vec<u8>), KeyConfigError> {
        let algorithm = self.algorithm()?;
        let (field, path) = if algorithm.family() == AlgorithmFamily::Hmac {
            ("secret_file", self.secret_file.as_deref())
        } else if self.secret_file.is_some() {
            return Err(KeyConfigError::new("secret_file", format!("{algorithm:?} uses key files, not a secret")));
        } else {
            (field, path)
        };
        let path = path.ok_or_else(|| KeyConfigError::new(field, format!("{algorithm:?} needs {field}")))?;
        Ok((algorithm, field, read(field, path)?))
    }

    /// The key that verifies tokens: the shared secret, or the public key.
    pub fn verifying_key(&self) -> Result<Key, KeyConfigError> {
        let (algorithm, field, key) = self.key_file("public_key_file", self.public_key_file.as_deref())?;
        let key = if algorithm.family() == AlgorithmFamily::Hmac {
            Key::hmac(algorithm, &key)
        } else {
            Key::public_pem(algorithm, &key)
        };
        key.map_err(|e| KeyConfigError::new(field, e))
    }

    /// An authenticator builder accepting exactly the tokens this configuration
    /// issues: its key, `iss` and `aud` when set, and at most its token lifetime.
    pub fn authenticator(&self) -> Result<AuthenticatorBuilder, KeyConfigError> {
        let mut builder = Authenticator::builder(self.verifying_key()?).max_lifetime(self.ttl()?);
        if let Some(issuer) = &self.issuer {
            builder = builder.issuer(issuer.clone());
        }
        if let Some(audience) = &self.audience {
            builder = builder.audience(audience.clone());
        }
        Ok(builder)
    }

    /// What signs tokens: the shared secret, or the private key.
    pub fn token_issuer(&self) -> Result<TokenIssuer, KeyConfigError> {
        let (algorithm, field, key) = self.key_file("private_key_file", self.private_key_file.as_deref())?;
        let issuer = if algorithm.family() == AlgorithmFamily::Hmac {
            TokenIssuer::hmac(algorithm, &key).map_err(|e| KeyConfigError::new(field, e))?
        } else {
            TokenIssuer::private_pem(algorithm, &key).map_err(|e| KeyConfigError::new(field, e))?
        };
        self.apply_to(issuer)
    }

    /// `issuer` (whose key came from elsewhere, e.g. made in memory) issuing this
    /// configuration's `iss`, `aud` and lifetime.
    pub fn apply_to(&self, mut issuer: TokenIssuer) -> Result<TokenIssuer, KeyConfigError> {
        issuer.ttl = self.ttl()?;
        issuer.issuer.clone_from(&self.issuer);
        issuer.audience.clone_from(&self.audience);
        Ok(issuer)
    }
}

/// Why a token could not be signed or a signing key read.
#[derive(Debug)]
pub struct SigningError(jsonwebtoken::errors::Error);

impl fmt::Display for SigningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot sign: {}", self.0)
    }
}

impl std::error::Error for SigningError {}

/// Signs tokens that an [`Authenticator`] built from the same configuration accepts:
/// `sub`, `email`, `roles`, a random `jti`, `iat`, `exp`, and `iss`/`aud` when set.
#[derive(Clone)]
pub struct TokenIssuer {
    header: Header,
    signing: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    ttl: Duration,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("algorithm", &self.header.alg)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Signs with a shared HMAC secret (at least 32 bytes); 15 minute tokens.
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<Self, crate::ConfigError> {
        // The same rules as the verifying side.
        Key::hmac(algorithm, secret)?;
        Ok(Self::new(algorithm, EncodingKey::from_secret(secret)))
    }

    /// Signs with a private key in PEM form (`RS*`, `PS*`, `ES*`, `EdDSA`); 15 minute tokens.
    pub fn private_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, SigningError> {
        let signing = match algorithm.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into()),
        }
        .map_err(SigningError)?;
        Ok(Self::new(algorithm, signing))
    }

    fn new(algorithm: Algorithm, signing: EncodingKey) -> Self {
        crate::crypto::install_default_crypto();
        Self { header: Header::new(algorithm), signing, issuer: None, audience: None, ttl: Duration::from_secs(900) }
    }

    /// Tokens carry this `iss`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Tokens carry this `aud`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long tokens live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Tokens carry this key id (`kid`), by which verifiers pick the key from a
    /// published set (a JWKS).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.header.kid = Some(kid.into());
        self
    }

    /// The key id tokens carry, if any.
    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// How long tokens live.
    pub fn token_ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed token for `subject`.
    pub fn issue(&self, subject: &str, email: Option<&str>, roles: &[String]) -> Result<String, SigningError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut claims = Claims::new(subject, now + self.ttl.as_secs());
        claims.iat = Some(now);
        claims.jti = Some(uuid::Uuid::new_v4().simple().to_string());
        claims.iss.clone_from(&self.issuer);
        claims.aud = self.audience.clone().map(Audience::One);
        claims.email = email.map(str::to_owned);
        claims.roles = roles.to_vec();
        jsonwebtoken::encode(&self.header, &claims, &self.signing).map_err(SigningError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_lose_only_trailing_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"  a secret with inner spaces \r\n\n").unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), b"  a secret with inner spaces");
    }

    #[tokio::test]
    async fn what_the_issuer_signs_the_authenticator_accepts_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a shared secret of at least 32 bytes\n").unwrap();
        let config = KeyConfig {
            secret_file: Some(secret),
            issuer: Some("users".into()),
            audience: Some("gateway".into()),
            ..KeyConfig::default()
        };
        let token = config.token_issuer().unwrap().issue("7", Some("a@example.com"), &["admin".into()]).unwrap();
        let who = config.authenticator().unwrap().build().unwrap().authenticate(&token).await.unwrap();
        assert_eq!((who.sub.as_str(), who.roles.as_slice()), ("7", ["admin".to_owned()].as_slice()));

        let other = KeyConfig { audience: Some("elsewhere".into()), ..config.clone() };
        let foreign = other.token_issuer().unwrap().issue("7", None, &[]).unwrap();
        let auth = config.authenticator().unwrap().build().unwrap();
        assert_eq!(auth.authenticate(&foreign).await.unwrap_err(), crate::Rejection::ClaimsRejected);

        let long = KeyConfig { token_ttl_secs: 3600, ..config.clone() };
        let long_lived = long.token_issuer().unwrap().issue("7", None, &[]).unwrap();
        assert_eq!(auth.authenticate(&long_lived).await.unwrap_err(), crate::Rejection::ClaimsRejected);
    }

    #[test]
    fn errors_name_the_field() {
        let missing = KeyConfig { algorithm: Some("EdDSA".into()), ..KeyConfig::default() };
        assert_eq!(missing.verifying_key().unwrap_err().field, "public_key_file");
        assert_eq!(missing.token_issuer().unwrap_err().field, "private_key_file");
        let mixed = KeyConfig { secret_file: Some("s".into()), ..missing.clone() };
        assert_eq!(mixed.verifying_key().unwrap_err().field, "secret_file");
        assert_eq!(mixed.token_issuer().unwrap_err().field, "secret_file");
        let bad = KeyConfig { algorithm: Some("ROT13".into()), ..KeyConfig::default() };
        assert_eq!(bad.verifying_key().unwrap_err().field, "algorithm");
        let nothing = KeyConfig::default();
        assert_eq!(nothing.verifying_key().unwrap_err().field, "algorithm");
        let mut env = KeyConfig::default();
        let err = env.apply_env(|n| (n == "JWT_TTL_SECS").then(|| "soon".to_owned())).unwrap_err();
        assert_eq!(err.field, "token_ttl_secs");
    }
}

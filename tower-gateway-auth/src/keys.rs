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
//!
//! A verifier can take its keys from the issuer instead — no key file at all, and
//! rotations followed (see [`RemoteKeys`]):
//!
//! ```toml
//! issuer = "https://sso.example.com/realms/shop"
//! discovery_url = "https://sso.example.com/realms/shop/.well-known/openid-configuration"
//! # or: jwks_url = "https://sso.example.com/realms/shop/protocol/openid-connect/certs"
//! audience = "orders"
//! roles_claim = "realm_access.roles"      # default "roles"
//! scopes_claim = "scope"                  # default "scope", then "scp"
//! ca_file = "/run/secrets/sso-ca.pem"     # default: the Mozilla roots
//! keys_max_stale_secs = 86400             # serve the last set this long while the issuer is down
//! forward_claims = { "x-user-roles" = "roles" }
//!
//! [[issuers]]                             # more issuers, each with its own keys and audience
//! issuer = "https://shop.eu.auth0.com/"
//! discovery_url = "https://shop.eu.auth0.com/.well-known/openid-configuration"
//! audience = "https://api.shop.example"
//! ```
//!
//! The same fields come from the environment with [`KeyConfig::apply_env`]:
//! `JWT_ALGORITHM`, `JWT_SECRET_FILE`, `JWT_PUBLIC_KEY_FILE`, `JWT_PRIVATE_KEY_FILE`,
//! `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_TTL_SECS`, `JWT_JWKS_URL`, `JWT_DISCOVERY_URL`,
//! `JWT_CA_FILE`, `JWT_ROLES_CLAIM`, `JWT_SCOPES_CLAIM`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::authenticator::{Authenticator, AuthenticatorBuilder};
use crate::claims::{Audience, Claims};
use crate::issuer::{Issuer, KeySource};
use crate::jwks::RemoteKeys;
use crate::key::Key;

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
    /// Verify with the keys published at this JWKS URL, refreshed and rotated.
    pub jwks_url: Option<String>,
    /// Verify with the keys found by OpenID discovery at this URL
    /// (`{issuer}/.well-known/openid-configuration`), whose `issuer` must be `issuer`.
    pub discovery_url: Option<String>,
    /// The CA certificates (PEM) that `https://` key URLs are verified with,
    /// instead of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// How long the last fetched key set serves while its issuer cannot be
    /// reached (then tokens are answered 503).
    pub keys_max_stale_secs: u64,
    /// Where tokens carry roles: a claim name or dotted path (default `roles`).
    pub roles_claim: Option<String>,
    /// Where tokens carry scopes (default `scope`, then `scp`).
    pub scopes_claim: Option<String>,
    /// Claims sent to the service behind as headers: header name to claim name or path.
    pub forward_claims: std::collections::BTreeMap<String, String>,
    /// More issuers whose tokens are accepted, each with its own keys (files, a
    /// JWKS URL, discovery), audience and claims; each needs its `issuer`.
    pub issuers: Vec<KeyConfig>,
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
            jwks_url: None,
            discovery_url: None,
            ca_file: None,
            keys_max_stale_secs: 24 * 60 * 60,
            roles_claim: None,
            scopes_claim: None,
            forward_claims: std::collections::BTreeMap::new(),
            issuers: Vec::new(),
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
        if let Some(v) = env("JWT_JWKS_URL") {
            self.jwks_url = Some(v);
        }
        if let Some(v) = env("JWT_DISCOVERY_URL") {
            self.discovery_url = Some(v);
        }
        if let Some(v) = env("JWT_CA_FILE") {
            self.ca_file = Some(v.into());
        }
        if let Some(v) = env("JWT_ROLES_CLAIM") {
            self.roles_claim = Some(v);
        }
        if let Some(v) = env("JWT_SCOPES_CLAIM") {
            self.scopes_claim = Some(v);
        }
        Ok(())
    }

    /// Whether any key, or a place to fetch keys from, is configured.
    pub fn is_set(&self) -> bool {
        self.secret_file.is_some()
            || self.public_key_file.is_some()
            || self.private_key_file.is_some()
            || self.is_remote()
    }

    /// Whether keys are fetched from the issuer (a JWKS URL or discovery).
    pub fn is_remote(&self) -> bool {
        self.jwks_url.is_some() || self.discovery_url.is_some()
    }

    /// The issuer this configuration trusts: its keys (from files, or fetched),
    /// `iss`, audience and claim paths.
    fn trusted_issuer(&self) -> Result<Issuer, KeyConfigError> {
        let keys: KeySource = match (&self.jwks_url, &self.discovery_url) {
            (None, None) => self.verifying_key()?.into(),
            (Some(_), Some(_)) => {
                return Err(KeyConfigError::new("discovery_url", "give jwks_url or discovery_url, not both"));
            }
            (jwks, discovery) => {
                for (field, set) in
                    [("secret_file", self.secret_file.is_some()), ("public_key_file", self.public_key_file.is_some())]
                {
                    if set {
                        return Err(KeyConfigError::new(field, "keys come from the issuer's URL: no key file"));
                    }
                }
                let builder = match (jwks, discovery) {
                    (Some(url), _) => RemoteKeys::jwks(url),
                    (_, Some(url)) => {
                        let issuer = self.issuer.as_deref().ok_or_else(|| {
                            KeyConfigError::new("issuer", "discovery needs the issuer its document must name")
                        })?;
                        RemoteKeys::discovery_at(issuer, url)
                    }
                    (None, None) => unreachable!("matched above"),
                };
                let field = if jwks.is_some() { "jwks_url" } else { "discovery_url" };
                let mut builder = builder.max_stale(Duration::from_secs(self.keys_max_stale_secs));
                if let Some(ca_file) = &self.ca_file {
                    builder = builder.tls_config(client_tls(ca_file)?);
                }
                builder.build().map_err(|e| KeyConfigError::new(field, e))?.into()
            }
        };
        let mut issuer = match &self.issuer {
            Some(iss) => Issuer::new(iss.clone(), keys),
            None => Issuer::any(keys),
        };
        if let Some(audience) = &self.audience {
            issuer = issuer.audience(audience.clone());
        }
        if let Some(algorithm) = &self.algorithm {
            let algorithm =
                algorithm.parse().map_err(|e| KeyConfigError::new("algorithm", format!("{algorithm:?}: {e}")))?;
            issuer = issuer.algorithms([algorithm]);
        }
        if let Some(path) = &self.roles_claim {
            issuer = issuer.roles_claim(path.clone());
        }
        if let Some(path) = &self.scopes_claim {
            issuer = issuer.scopes_claim(path.clone());
        }
        for (header, claim) in &self.forward_claims {
            if http::HeaderName::try_from(header.as_str()).is_err() {
                return Err(KeyConfigError::new("forward_claims", format!("{header:?} is not a header name")));
            }
            issuer = issuer.forward_claim(claim.clone(), header.clone());
        }
        Ok(issuer)
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
    ///
    /// With [`issuers`](Self::issuers), their tokens too, each issuer with its own
    /// keys; the longest lifetime accepted is then the longest of all.
    pub fn authenticator(&self) -> Result<AuthenticatorBuilder, KeyConfigError> {
        let mut builder = Authenticator::builder_for(self.trusted_issuer()?);
        let mut ttl = self.ttl()?;
        for (i, more) in self.issuers.iter().enumerate() {
            let named = |e: KeyConfigError| KeyConfigError { field: issuers_field(i, e.field), message: e.message };
            if more.issuer.is_none() {
                return Err(named(KeyConfigError::new("issuer", "each of several issuers needs its issuer")));
            }
            if !more.issuers.is_empty() {
                return Err(named(KeyConfigError::new("issuers", "issuers do not nest")));
            }
            builder = builder.trust(more.trusted_issuer().map_err(named)?);
            ttl = ttl.max(more.ttl().map_err(named)?);
        }
        if !self.issuers.is_empty() && self.issuer.is_none() {
            return Err(KeyConfigError::new("issuer", "each of several issuers needs its issuer"));
        }
        Ok(builder.max_lifetime(ttl))
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

/// `issuers[i].field`, leaked once per configuration error (a handful at start-up).
fn issuers_field(i: usize, field: &'static str) -> &'static str {
    Box::leak(format!("issuers[{i}].{field}").into_boxed_str())
}

/// A TLS client configuration trusting the CA certificates in `ca_file`.
fn client_tls(ca_file: &Path) -> Result<rustls::ClientConfig, KeyConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let fail = |e: &dyn fmt::Display| KeyConfigError::new("ca_file", format!("{}: {e}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| fail(&e))? {
        roots.add(cert.map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
    }
    if roots.is_empty() {
        return Err(fail(&"no certificate"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
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

    #[test]
    fn remote_key_errors_name_the_field() {
        let field = |config: KeyConfig| config.authenticator().unwrap_err().field;
        let jwks = KeyConfig { jwks_url: Some("https://idp.example/jwks".into()), ..KeyConfig::default() };
        assert!(jwks.is_set() && jwks.is_remote());
        assert!(jwks.authenticator().is_ok(), "a JWKS URL alone will do");
        let both = KeyConfig {
            discovery_url: Some("https://idp.example/.well-known/openid-configuration".into()),
            ..jwks.clone()
        };
        assert_eq!(field(both), "discovery_url");
        let discovery =
            KeyConfig { jwks_url: None, discovery_url: Some("https://idp.example/d".into()), ..KeyConfig::default() };
        assert_eq!(field(discovery.clone()), "issuer", "discovery checks the issuer the document names");
        assert_eq!(
            field(KeyConfig { jwks_url: Some("ftp://idp.example/jwks".into()), ..KeyConfig::default() }),
            "jwks_url"
        );
        assert_eq!(field(KeyConfig { secret_file: Some("s".into()), ..jwks.clone() }), "secret_file");
        assert_eq!(field(KeyConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..jwks.clone() }), "ca_file");
        let header = KeyConfig { forward_claims: [("bad header".into(), "sub".into())].into(), ..jwks.clone() };
        assert_eq!(field(header), "forward_claims");
        let unnamed = KeyConfig { issuer: Some("a".into()), issuers: vec![jwks.clone()], ..jwks.clone() };
        assert_eq!(field(unnamed), "issuers[0].issuer");
        let named = KeyConfig { issuer: Some("b".into()), ..jwks.clone() };
        let two = KeyConfig { issuer: Some("a".into()), issuers: vec![named], ..jwks.clone() };
        assert!(two.authenticator().unwrap().build().is_ok());
    }
}

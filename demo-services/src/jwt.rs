//! The signing side of JWTs, for the user service's login, and the matching
//! verification key for the gateway and for logout.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tower_gateway_auth::{AuthenticatorBuilder, Claims, Key};

/// How tokens are signed and checked, read once at start-up.
#[derive(Clone)]
pub struct JwtSettings {
    header: Header,
    signing: EncodingKey,
    verifying: Key,
    issuer: Option<String>,
    audience: Option<String>,
    ttl: Duration,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("algorithm", &self.header.alg)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl JwtSettings {
    /// HS256 with a shared secret (at least 32 bytes), 15 minute tokens.
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        Ok(Self {
            header: Header::new(Algorithm::HS256),
            signing: EncodingKey::from_secret(secret),
            verifying: Key::hs256(secret).map_err(|e| e.to_string())?,
            issuer: None,
            audience: None,
            ttl: Duration::from_secs(15 * 60),
        })
    }

    /// An asymmetric algorithm (`RS256`, `ES256`, `EdDSA`…) with a private key to
    /// sign and its public key to verify, both PEM.
    pub fn asymmetric(algorithm: Algorithm, private_pem: &[u8], public_pem: &[u8]) -> Result<Self, String> {
        let signing = match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(private_pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private_pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem),
            _ => return Err(format!("{algorithm:?} is not an asymmetric algorithm")),
        }
        .map_err(|e| format!("JWT private key: {e}"))?;
        Ok(Self {
            header: Header::new(algorithm),
            signing,
            verifying: Key::public_pem(algorithm, public_pem).map_err(|e| format!("JWT public key: {e}"))?,
            issuer: None,
            audience: None,
            ttl: Duration::from_secs(15 * 60),
        })
    }

    /// From the environment: `JWT_SECRET_FILE` (or `JWT_SECRET`) for HS256, or
    /// `JWT_ALGORITHM` with `JWT_PRIVATE_KEY_FILE` and `JWT_PUBLIC_KEY_FILE`;
    /// `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_TTL_SECS` (default 900). `None` when no
    /// key is configured.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let read = |name: &str, path: String| std::fs::read(&path).map_err(|e| format!("{name} {path}: {e}"));
        let settings = if let Some(path) = var("JWT_SECRET_FILE") {
            let secret =
                read_secret_file(std::path::Path::new(&path)).map_err(|e| format!("JWT_SECRET_FILE {path}: {e}"))?;
            Self::hs256(&secret)?
        } else if let Some(secret) = var("JWT_SECRET") {
            Self::hs256(secret.as_bytes())?
        } else if let Some(path) = var("JWT_PRIVATE_KEY_FILE") {
            let algorithm: Algorithm = var("JWT_ALGORITHM")
                .ok_or("JWT_ALGORITHM is required with JWT_PRIVATE_KEY_FILE")?
                .parse()
                .map_err(|e| format!("JWT_ALGORITHM: {e}"))?;
            let public =
                var("JWT_PUBLIC_KEY_FILE").ok_or("JWT_PUBLIC_KEY_FILE is required with JWT_PRIVATE_KEY_FILE")?;
            Self::asymmetric(algorithm, &read("JWT_PRIVATE_KEY_FILE", path)?, &read("JWT_PUBLIC_KEY_FILE", public)?)?
        } else {
            return Ok(None);
        };
        let ttl = match var("JWT_TTL_SECS") {
            Some(secs) => Duration::from_secs(secs.parse().map_err(|e| format!("JWT_TTL_SECS: {e}"))?),
            None => settings.ttl,
        };
        let mut settings = settings.ttl(ttl);
        settings.issuer = var("JWT_ISSUER");
        settings.audience = var("JWT_AUDIENCE");
        Ok(Some(settings))
    }

    /// Tokens carry this `iss`, and the verifier requires it.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Tokens carry this `aud`, and the verifier requires it.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long issued tokens live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// An authenticator builder that accepts exactly the tokens these settings issue.
    pub fn authenticator(&self) -> AuthenticatorBuilder {
        let mut builder = tower_gateway_auth::Authenticator::builder(self.verifying.clone())
            .max_lifetime(self.ttl.max(Duration::from_secs(1)));
        if let Some(issuer) = &self.issuer {
            builder = builder.issuer(issuer.clone());
        }
        if let Some(audience) = &self.audience {
            builder = builder.audience(audience.clone());
        }
        builder
    }

    /// A signed token for user `id` with `email`: `sub`, `email`, a random `jti`,
    /// `iat`, `exp`, and `iss`/`aud` when configured.
    pub fn issue(&self, id: i64, email: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: id.to_string(),
            exp: now + self.ttl.as_secs(),
            iat: Some(now),
            nbf: None,
            jti: Some(uuid::Uuid::new_v4().to_string()),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(tower_gateway_auth::Audience::One),
            email: Some(email.to_owned()),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.signing)
    }
}

/// A shared secret from a file (a Docker secret, say), without the trailing
/// newline editors and `echo` add.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)?;
    secret.truncate(secret.trim_ascii_end().len());
    Ok(secret)
}

impl JwtSettings {
    /// How long issued tokens live, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_lose_only_trailing_whitespace() {
        let dir = std::env::temp_dir().join(format!("jwt-secret-{}", std::process::id()));
        std::fs::write(&dir, b"  a secret with inner spaces \r\n\n").unwrap();
        let secret = read_secret_file(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(secret, b"  a secret with inner spaces");
    }
}

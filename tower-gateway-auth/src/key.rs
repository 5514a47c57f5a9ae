//! A verification key, pinned to one algorithm.

use std::fmt;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::error::ConfigError;

/// A verification key, pinned to one algorithm, with an optional key id.
///
/// Pinning the algorithm to the key is what makes "algorithm confusion" attacks
/// impossible: a token signed with HS256 using an RSA public key as the secret is
/// refused, because the RSA key only ever verifies RS256.
#[derive(Clone)]
pub struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: Algorithm,
    pub(crate) decoding: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

fn config_error(what: &'static str, err: impl fmt::Display) -> ConfigError {
    ConfigError::InvalidKey { what, reason: err.to_string() }
}

impl Key {
    /// An HMAC key (`HS256`, `HS384`, `HS512`); the secret must be at least 32 bytes.
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<Self, ConfigError> {
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(ConfigError::NotHmac(algorithm));
        }
        if secret.len() < 32 {
            return Err(ConfigError::SecretTooShort);
        }
        Ok(Self { kid: None, algorithm, decoding: DecodingKey::from_secret(secret) })
    }

    /// An `HS256` key: the seed's shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, ConfigError> {
        Self::hmac(Algorithm::HS256, secret)
    }

    /// A public key in PEM form for `RS*`, `PS*`, `ES*` or `EdDSA`: the gateway
    /// never needs the signing key.
    pub fn public_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, ConfigError> {
        let decoding = match algorithm.family() {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => return Err(ConfigError::HmacNeedsSecret),
        }
        .map_err(|e| config_error("invalid public key", e))?;
        Ok(Self { kid: None, algorithm, decoding })
    }

    /// This key, used only for tokens whose `kid` header is exactly `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key id, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub(crate) fn from_decoding(algorithm: Algorithm, decoding: DecodingKey) -> Self {
        Self { kid: None, algorithm, decoding }
    }
}

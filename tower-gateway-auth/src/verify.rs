//! Local token validation: keys pinned to algorithms, and checks stricter than
//! `jsonwebtoken`'s defaults.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::claims::Claims;
use crate::error::{ConfigError, Rejection};

/// A verification key, pinned to one algorithm, with an optional key id.
///
/// Pinning the algorithm to the key is what makes "algorithm confusion" attacks
/// impossible: a token signed with HS256 using an RSA public key as the secret is
/// refused, because the RSA key only ever verifies RS256.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    decoding: DecodingKey,
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
}

/// Accepts a JSON object only if no key appears twice in it.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Unique;
        impl<'de> Visitor<'de> for Unique {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object without duplicate keys")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut seen = HashSet::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if !seen.insert(key) {
                        return Err(de::Error::custom("duplicate key"));
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(UniqueKeys)
            }
        }
        deserializer.deserialize_map(Unique)
    }
}

#[derive(Deserialize)]
struct RawHeader {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

struct Verifying {
    key: Key,
    validation: Validation,
}

/// Validates tokens locally. See [`AuthenticatorBuilder`](crate::AuthenticatorBuilder)
/// for the rules.
pub(crate) struct Verifier {
    keys: Vec<Verifying>,
    leeway: u64,
    max_lifetime: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.iter().map(|k| &k.key).collect::<Vec<_>>())
            .field("leeway", &self.leeway)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// Rules for claims, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) leeway: u64,
    pub(crate) max_lifetime: u64,
}

impl Verifier {
    pub(crate) fn new(keys: Vec<Key>, rules: &Rules) -> Result<Self, ConfigError> {
        crate::crypto::install_default_crypto();
        if keys.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        if keys.iter().filter(|k| k.kid.is_none()).count() > 1 {
            return Err(ConfigError::SeveralKeysWithoutKid);
        }
        let keys = keys
            .into_iter()
            .map(|key| {
                let mut validation = Validation::new(key.algorithm);
                let mut required = vec!["exp", "sub"];
                required.extend(rules.issuer.as_ref().map(|_| "iss"));
                required.extend(rules.audience.as_ref().map(|_| "aud"));
                validation.set_required_spec_claims(&required);
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.leeway = rules.leeway;
                match &rules.audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                if let Some(iss) = &rules.issuer {
                    validation.set_issuer(&[iss]);
                }
                Verifying { key, validation }
            })
            .collect();
        Ok(Self { keys, leeway: rules.leeway, max_lifetime: rules.max_lifetime })
    }

    fn key_for(&self, kid: Option<&str>) -> Option<&Verifying> {
        self.keys.iter().find(|k| k.key.kid.as_deref() == kid)
    }

    /// Validates `token` at `now` (seconds since the Unix epoch).
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Claims, Rejection> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::MalformedToken);
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(Rejection::InvalidToken);
        }
        let header_json = URL_SAFE_NO_PAD.decode(header).map_err(|_| Rejection::InvalidToken)?;
        let payload_json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Rejection::InvalidToken)?;
        serde_json::from_slice::<UniqueKeys>(&header_json).map_err(|_| Rejection::InvalidToken)?;
        serde_json::from_slice::<UniqueKeys>(&payload_json).map_err(|_| Rejection::InvalidToken)?;
        let raw: RawHeader = serde_json::from_slice(&header_json).map_err(|_| Rejection::InvalidToken)?;
        if raw.crit.is_some() {
            // We understand no extension, so RFC 7515 §4.1.11 says refuse.
            return Err(Rejection::InvalidToken);
        }
        let verifying = self.key_for(raw.kid.as_deref()).ok_or(Rejection::InvalidToken)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &verifying.key.decoding, &verifying.validation).map_err(|err| {
                match err.kind() {
                    ErrorKind::ExpiredSignature => Rejection::Expired,
                    ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::InvalidSubject => {
                        Rejection::ClaimsRejected
                    }
                    _ => Rejection::InvalidToken,
                }
            })?;
        let claims = data.claims;
        if claims.exp > now.saturating_add(self.max_lifetime).saturating_add(self.leeway) {
            return Err(Rejection::ClaimsRejected);
        }
        if let Some(iat) = claims.iat {
            if iat > now.saturating_add(self.leeway) {
                return Err(Rejection::NotYetValid);
            }
            if claims.exp.saturating_sub(iat) > self.max_lifetime {
                return Err(Rejection::ClaimsRejected);
            }
        }
        Ok(claims)
    }
}

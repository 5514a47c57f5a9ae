//! Local token validation: keys pinned to algorithms, and checks stricter than
//! `jsonwebtoken`'s defaults.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::claims::{ClaimPaths, Claims};
use crate::error::{ConfigError, Rejection};
use crate::issuer::{Issuer, Source};
use crate::jwks::RemoteKeys;
use crate::key::Key;

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
    alg: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// The issuer a token names, read before any key is tried.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    iss: Option<serde_json::Value>,
}

/// Which key of a set verifies a token.
#[derive(Debug)]
enum Find<'a> {
    Key(&'a Key),
    /// A key of that `kid` exists, for another algorithm (or a `kid`-less token
    /// fits several keys): the token is refused, nothing is fetched.
    WrongAlgorithm,
    /// No key of that `kid`: a remote set may have rotated.
    Unknown,
}

/// The key for a token's `kid` and `alg`: the key of exactly that `kid` (a
/// `kid`-less token: the `kid`-less key, or else the only key of its
/// algorithm), and only if it was published for that algorithm.
fn find<'a>(keys: &'a [Key], kid: Option<&str>, alg: Algorithm) -> Find<'a> {
    let mut named = keys.iter().filter(|k| k.kid.as_deref() == kid).peekable();
    if named.peek().is_some() {
        return named.find(|k| k.algorithm == alg).map_or(Find::WrongAlgorithm, Find::Key);
    }
    if kid.is_some() {
        return Find::Unknown;
    }
    let mut fitting = keys.iter().filter(|k| k.algorithm == alg);
    match (fitting.next(), fitting.next()) {
        (Some(key), None) => Find::Key(key),
        (Some(_), Some(_)) => Find::WrongAlgorithm,
        (None, _) => Find::Unknown,
    }
}

/// The asymmetric algorithms: what a remote set may verify.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One trusted issuer, ready to verify.
struct Trusted {
    iss: Option<String>,
    keys: Source,
    validations: Vec<(Algorithm, Validation)>,
    pub(crate) paths: ClaimPaths,
    pub(crate) forward: Vec<(String, HeaderName)>,
}

impl fmt::Debug for Trusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trusted")
            .field("iss", &self.iss)
            .field("keys", &self.keys)
            .field("algorithms", &self.validations.iter().map(|(a, _)| a).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Validates tokens locally. See [`AuthenticatorBuilder`](crate::AuthenticatorBuilder)
/// for the rules.
#[derive(Debug)]
pub(crate) struct Verifier {
    issuers: Vec<Trusted>,
    leeway: u64,
    max_lifetime: u64,
}

/// Rules for claims, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) leeway: u64,
    pub(crate) max_lifetime: u64,
}

/// What verifying a token came to.
// Returned once and taken apart at once: boxing the claims would cost an
// allocation per verified token for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Valid: its claims, and the index of its issuer.
    Valid(Claims, usize),
    Reject(Rejection),
    /// Its key may be in a fresher set: fetch, then verify again.
    Fetch(RemoteKeys),
}

impl Verifier {
    pub(crate) fn new(issuers: Vec<Issuer>, rules: &Rules) -> Result<Self, ConfigError> {
        crate::crypto::install_default_crypto();
        if issuers.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        let unnamed = issuers.iter().filter(|i| i.iss.is_none()).count();
        if unnamed > 0 && issuers.len() > 1 {
            return Err(ConfigError::IssuerRequired);
        }
        let mut seen = HashSet::new();
        if let Some(dup) = issuers.iter().filter_map(|i| i.iss.as_deref()).find(|iss| !seen.insert(*iss)) {
            return Err(ConfigError::DuplicateIssuer(dup.to_owned()));
        }
        let issuers = issuers.into_iter().map(|issuer| Self::trust(issuer, rules)).collect::<Result<_, _>>()?;
        Ok(Self { issuers, leeway: rules.leeway, max_lifetime: rules.max_lifetime })
    }

    fn trust(issuer: Issuer, rules: &Rules) -> Result<Trusted, ConfigError> {
        let mut algorithms: Vec<Algorithm> = match &issuer.keys.0 {
            Source::Static(keys) => {
                if keys.is_empty() {
                    return Err(ConfigError::NoKeys);
                }
                if keys.iter().filter(|k| k.kid.is_none()).count() > 1 {
                    return Err(ConfigError::SeveralKeysWithoutKid);
                }
                keys.iter().map(|k| k.algorithm).collect()
            }
            Source::Remote(_) => ASYMMETRIC.to_vec(),
        };
        if !issuer.algorithms.is_empty() {
            algorithms.retain(|a| issuer.algorithms.contains(a));
            if algorithms.is_empty() {
                return Err(ConfigError::NoUsableAlgorithm);
            }
        }
        algorithms.sort_by_key(|a| format!("{a:?}"));
        algorithms.dedup();
        let validations = algorithms
            .into_iter()
            .map(|alg| {
                let mut validation = Validation::new(alg);
                let mut required = vec!["exp", "sub"];
                required.extend(issuer.iss.as_ref().map(|_| "iss"));
                required.extend((!issuer.audiences.is_empty()).then_some("aud"));
                validation.set_required_spec_claims(&required);
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.leeway = rules.leeway;
                if issuer.audiences.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&issuer.audiences);
                }
                if let Some(iss) = &issuer.iss {
                    validation.set_issuer(&[iss]);
                }
                (alg, validation)
            })
            .collect();
        let forward = issuer
            .forward
            .into_iter()
            .map(|(claim, header)| {
                HeaderName::try_from(header.as_str())
                    .map(|h| (claim, h))
                    .map_err(|_| ConfigError::InvalidHeaderName(header))
            })
            .collect::<Result<_, _>>()?;
        Ok(Trusted { iss: issuer.iss, keys: issuer.keys.0, validations, paths: issuer.paths, forward })
    }

    /// The headers the issuer at `index` forwards, by claim.
    pub(crate) fn forwarded(&self, index: usize) -> &[(String, HeaderName)] {
        &self.issuers[index].forward
    }

    /// Every header any issuer forwards.
    pub(crate) fn forwarded_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.issuers.iter().flat_map(|i| i.forward.iter().map(|(_, h)| h))
    }

    /// Every remote key source, with its issuer.
    pub(crate) fn remote_sources(&self) -> impl Iterator<Item = (Option<&str>, &RemoteKeys)> {
        self.issuers.iter().filter_map(|i| match &i.keys {
            Source::Remote(keys) => Some((i.iss.as_deref(), keys)),
            Source::Static(_) => None,
        })
    }

    /// The issuer named `iss`: exactly, or the one that checks no issuer.
    fn issuer_for(&self, iss: Option<&str>) -> Option<(usize, &Trusted)> {
        let exact = iss.and_then(|iss| self.issuers.iter().position(|i| i.iss.as_deref() == Some(iss)));
        let index = exact.or_else(|| self.issuers.iter().position(|i| i.iss.is_none()))?;
        Some((index, &self.issuers[index]))
    }

    /// Validates `token` at `now` (seconds since the Unix epoch). With
    /// `may_fetch`, a key the remote set lacks (or no set) asks for a fetch;
    /// without, it is refused.
    pub(crate) fn verify(&self, token: &str, now: u64, may_fetch: bool) -> Verdict {
        match self.try_verify(token, now, may_fetch) {
            Ok((claims, index)) => Verdict::Valid(claims, index),
            Err(Err(keys)) => Verdict::Fetch(keys),
            Err(Ok(rejection)) => Verdict::Reject(rejection),
        }
    }

    fn try_verify(
        &self,
        token: &str,
        now: u64,
        may_fetch: bool,
    ) -> Result<(Claims, usize), Result<Rejection, RemoteKeys>> {
        let invalid = || Ok(Rejection::InvalidToken);
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Ok(Rejection::MalformedToken));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(invalid());
        }
        let header_json = URL_SAFE_NO_PAD.decode(header).map_err(|_| invalid())?;
        let payload_json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        serde_json::from_slice::<UniqueKeys>(&header_json).map_err(|_| invalid())?;
        serde_json::from_slice::<UniqueKeys>(&payload_json).map_err(|_| invalid())?;
        let raw: RawHeader = serde_json::from_slice(&header_json).map_err(|_| invalid())?;
        if raw.crit.is_some() {
            // We understand no extension, so RFC 7515 §4.1.11 says refuse.
            return Err(invalid());
        }
        let alg: Algorithm = raw.alg.as_deref().and_then(|a| a.parse().ok()).ok_or_else(invalid)?;
        let peek: Peek = serde_json::from_slice(&payload_json).map_err(|_| invalid())?;
        let iss = match &peek.iss {
            None => None,
            Some(serde_json::Value::String(iss)) => Some(iss.as_str()),
            Some(_) => return Err(invalid()),
        };
        let (index, trusted) = self.issuer_for(iss).ok_or(Ok(Rejection::ClaimsRejected))?;
        let validation = trusted.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v).ok_or_else(invalid)?;
        let snapshot;
        let keys: &[Key] = match &trusted.keys {
            Source::Static(keys) => keys,
            Source::Remote(remote) => match remote.current() {
                Some(current) => {
                    snapshot = current;
                    &snapshot.keys
                }
                None if may_fetch => return Err(Err(remote.clone())),
                None => return Err(Ok(Rejection::KeySourceUnavailable)),
            },
        };
        let key = match (find(keys, raw.kid.as_deref(), alg), &trusted.keys) {
            (Find::Key(key), _) => key,
            (Find::Unknown, Source::Remote(remote)) if may_fetch => return Err(Err(remote.clone())),
            _ => return Err(invalid()),
        };
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, validation)
            .map_err(|err| {
                Ok(match err.kind() {
                    ErrorKind::ExpiredSignature => Rejection::Expired,
                    ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::InvalidSubject => {
                        Rejection::ClaimsRejected
                    }
                    _ => Rejection::InvalidToken,
                })
            })?;
        let claims = Claims::from_map(data.claims, &trusted.paths).map_err(|_| invalid())?;
        if claims.exp > now.saturating_add(self.max_lifetime).saturating_add(self.leeway) {
            return Err(Ok(Rejection::ClaimsRejected));
        }
        if let Some(iat) = claims.iat {
            if iat > now.saturating_add(self.leeway) {
                return Err(Ok(Rejection::NotYetValid));
            }
            if claims.exp.saturating_sub(iat) > self.max_lifetime {
                return Err(Ok(Rejection::ClaimsRejected));
            }
        }
        Ok((claims, index))
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::DecodingKey;

    use super::*;

    fn key(kid: Option<&str>, alg: Algorithm) -> Key {
        let key = Key::from_decoding(alg, DecodingKey::from_ed_der(&[0; 32]));
        match kid {
            Some(kid) => key.with_kid(kid),
            None => key,
        }
    }

    #[test]
    fn a_key_is_found_by_kid_and_only_for_its_algorithm() {
        let keys =
            [key(Some("a"), Algorithm::RS256), key(Some("a"), Algorithm::PS256), key(Some("b"), Algorithm::EdDSA)];
        assert!(matches!(find(&keys, Some("a"), Algorithm::PS256), Find::Key(k) if k.algorithm == Algorithm::PS256));
        assert!(matches!(find(&keys, Some("a"), Algorithm::HS256), Find::WrongAlgorithm), "no confusion, no fetch");
        assert!(matches!(find(&keys, Some("c"), Algorithm::EdDSA), Find::Unknown));
        assert!(
            matches!(find(&keys, None, Algorithm::EdDSA), Find::Key(k) if k.kid() == Some("b")),
            "the only EdDSA key"
        );
        assert!(matches!(find(&keys, None, Algorithm::ES256), Find::Unknown));
        let ambiguous = [key(Some("a"), Algorithm::EdDSA), key(Some("b"), Algorithm::EdDSA)];
        assert!(matches!(find(&ambiguous, None, Algorithm::EdDSA), Find::WrongAlgorithm), "two fit: refused");
        let kidless = [key(None, Algorithm::EdDSA), key(Some("b"), Algorithm::EdDSA)];
        assert!(matches!(find(&kidless, None, Algorithm::EdDSA), Find::Key(k) if k.kid().is_none()));
        assert!(matches!(find(&kidless, None, Algorithm::RS256), Find::WrongAlgorithm));
    }
}

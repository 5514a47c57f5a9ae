//! A JWKS document (RFC 7517) read into verification keys: each member that can
//! verify a signature becomes a [`Key`] pinned to the algorithm it was published
//! for; each that cannot is skipped and counted, never fatal to the set.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use crate::key::Key;

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;

/// The algorithms an RSA key published without `alg` may verify.
const RSA_ALGORITHMS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// Why a member of the set was skipped: a metric label, and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// A `kty` other than `RSA`, `EC` and `OKP` (`oct` among them: no shared
    /// secret is ever taken from a published set).
    KeyType,
    /// `use` other than `sig`, or `key_ops` without `verify`.
    NotForSignatures,
    /// An `alg` this crate does not verify, or one that disagrees with the key's
    /// type or curve.
    Algorithm,
    /// An RSA modulus under 2048 bits.
    WeakKey,
    /// A member missing, or of the wrong form or length.
    Malformed,
}

impl Skip {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::KeyType => "key_type",
            Self::NotForSignatures => "not_for_signatures",
            Self::Algorithm => "algorithm",
            Self::WeakKey => "weak_key",
            Self::Malformed => "malformed",
        }
    }
}

/// The usable keys of a document, and the members skipped.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) keys: Vec<Key>,
    pub(crate) skipped: Vec<(Option<String>, Skip)>,
}

/// Why a whole document was refused (the last good set is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DocumentError {
    /// Not a JSON object with a `keys` array.
    NotAKeySet,
    /// A set in which no member can verify a signature.
    NoUsableKey,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAKeySet => f.write_str("not a JWK set: a JSON object with a \"keys\" array was expected"),
            Self::NoUsableKey => f.write_str("no member of the JWK set can verify a signature"),
        }
    }
}

/// Reads a JWKS document.
pub(crate) fn parse(document: &[u8]) -> Result<Parsed, DocumentError> {
    let value: Value = serde_json::from_slice(document).map_err(|_| DocumentError::NotAKeySet)?;
    let members = value.get("keys").and_then(Value::as_array).ok_or(DocumentError::NotAKeySet)?;
    let mut parsed = Parsed { keys: Vec::new(), skipped: Vec::new() };
    for member in members {
        let kid = member.get("kid").and_then(Value::as_str).map(str::to_owned);
        match keys_of(member) {
            Ok(keys) => parsed.keys.extend(keys.into_iter().map(|key| match &kid {
                Some(kid) => key.with_kid(kid.clone()),
                None => key,
            })),
            Err(skip) => parsed.skipped.push((kid, skip)),
        }
    }
    if parsed.keys.is_empty() {
        return Err(DocumentError::NoUsableKey);
    }
    Ok(parsed)
}

fn string<'a>(member: &'a Value, name: &str) -> Result<Option<&'a str>, Skip> {
    match member.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Skip::Malformed),
    }
}

fn bytes(member: &Value, name: &str) -> Result<Vec<u8>, Skip> {
    let text = string(member, name)?.ok_or(Skip::Malformed)?;
    URL_SAFE_NO_PAD.decode(text).map_err(|_| Skip::Malformed)
}

/// The keys one member gives: one, pinned to its `alg` (or its curve's), or for
/// an RSA key published without `alg`, one per RSA algorithm.
fn keys_of(member: &Value) -> Result<Vec<Key>, Skip> {
    if !member.is_object() {
        return Err(Skip::Malformed);
    }
    if string(member, "kid").is_err() {
        return Err(Skip::Malformed);
    }
    match string(member, "use")? {
        None | Some("sig") => {}
        Some(_) => return Err(Skip::NotForSignatures),
    }
    if let Some(ops) = member.get("key_ops") {
        let ops = ops.as_array().ok_or(Skip::Malformed)?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Err(Skip::NotForSignatures);
        }
    }
    let alg = match string(member, "alg")? {
        None => None,
        Some(name) => Some(name.parse::<Algorithm>().map_err(|_| Skip::Algorithm)?),
    };
    let pinned = |family: AlgorithmFamily, implied: Option<Algorithm>| -> Result<Option<Algorithm>, Skip> {
        match (alg, implied) {
            (Some(alg), _) if alg.family() != family => Err(Skip::Algorithm),
            (Some(alg), Some(implied)) if alg != implied => Err(Skip::Algorithm),
            (Some(alg), _) => Ok(Some(alg)),
            (None, implied) => Ok(implied),
        }
    };
    match string(member, "kty")? {
        Some("RSA") => {
            let alg = pinned(AlgorithmFamily::Rsa, None)?;
            let n = bytes(member, "n")?;
            let e = bytes(member, "e")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if e.is_empty() || e.len() > 8 {
                return Err(Skip::Malformed);
            }
            if significant < MIN_RSA_BYTES {
                return Err(Skip::WeakKey);
            }
            let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
            let algorithms = match alg {
                Some(alg) => vec![alg],
                None => RSA_ALGORITHMS.to_vec(),
            };
            Ok(algorithms.into_iter().map(|alg| Key::from_decoding(alg, decoding.clone())).collect())
        }
        Some("EC") => {
            let (implied, size) = match string(member, "crv")? {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                Some(_) => return Err(Skip::Algorithm),
                None => return Err(Skip::Malformed),
            };
            let alg = pinned(AlgorithmFamily::Ec, Some(implied))?.unwrap_or(implied);
            let (x, y) = (bytes(member, "x")?, bytes(member, "y")?);
            if x.len() != size || y.len() != size {
                return Err(Skip::Malformed);
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(vec![Key::from_decoding(alg, DecodingKey::from_ec_der(&point))])
        }
        Some("OKP") => {
            match string(member, "crv")? {
                Some("Ed25519") => {}
                Some(_) => return Err(Skip::Algorithm),
                None => return Err(Skip::Malformed),
            }
            let alg = pinned(AlgorithmFamily::Ed, Some(Algorithm::EdDSA))?.unwrap_or(Algorithm::EdDSA);
            let x = bytes(member, "x")?;
            if x.len() != 32 {
                return Err(Skip::Malformed);
            }
            Ok(vec![Key::from_decoding(alg, DecodingKey::from_ed_der(&x))])
        }
        Some(_) => Err(Skip::KeyType),
        None => Err(Skip::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(kid: &str, bits: usize) -> Value {
        let mut n = vec![0xc5; bits / 8];
        n[0] = 0xd1;
        json!({ "kty": "RSA", "kid": kid, "n": b64(&n), "e": "AQAB" })
    }

    fn skipped(document: &Value) -> Vec<Skip> {
        let parsed = parse(document.to_string().as_bytes()).unwrap();
        parsed.skipped.into_iter().map(|(_, skip)| skip).collect()
    }

    #[test]
    fn each_usable_member_is_a_key_pinned_to_its_algorithm() {
        let ec = json!({ "kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]) });
        let ed = json!({ "kty": "OKP", "kid": "d", "crv": "Ed25519", "x": b64(&[3; 32]), "use": "sig" });
        let mut pinned = rsa("r", 2048);
        pinned["alg"] = json!("PS384");
        let parsed = parse(json!({ "keys": [rsa("any", 2048), pinned, ec, ed] }).to_string().as_bytes()).unwrap();
        let keys: Vec<(Option<&str>, Algorithm)> = parsed.keys.iter().map(|k| (k.kid(), k.algorithm())).collect();
        assert_eq!(
            keys.iter().filter(|(kid, _)| *kid == Some("any")).count(),
            6,
            "RSA without alg: each RSA algorithm"
        );
        assert!(keys.contains(&(Some("r"), Algorithm::PS384)));
        assert!(!keys.contains(&(Some("r"), Algorithm::RS256)), "a key verifies only what it was published for");
        assert!(keys.contains(&(Some("e"), Algorithm::ES256)));
        assert!(keys.contains(&(Some("d"), Algorithm::EdDSA)));
        assert!(parsed.skipped.is_empty());
    }

    #[test]
    fn unusable_members_are_skipped_with_their_reason_and_the_rest_kept() {
        let mut hs =
            json!({ "kty": "oct", "kid": "h", "k": b64(b"a shared secret of at least 32 bytes"), "alg": "HS256" });
        let mut enc = rsa("enc", 2048);
        enc["use"] = json!("enc");
        let mut wrong_alg = rsa("wa", 2048);
        wrong_alg["alg"] = json!("ES256");
        let mut hs_on_rsa = rsa("hr", 2048);
        hs_on_rsa["alg"] = json!("HS256");
        let ec_mismatch =
            json!({ "kty": "EC", "kid": "em", "crv": "P-384", "alg": "ES256", "x": b64(&[1; 48]), "y": b64(&[2; 48]) });
        let short_ec = json!({ "kty": "EC", "kid": "es", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[2; 32]) });
        let not_b64 = json!({ "kty": "OKP", "kid": "nb", "crv": "Ed25519", "x": "!!" });
        let ops = json!({ "kty": "OKP", "kid": "op", "crv": "Ed25519", "x": b64(&[3; 32]), "key_ops": ["encrypt"] });
        let unknown_alg = json!({ "kty": "OKP", "kid": "ua", "crv": "Ed25519", "x": b64(&[3; 32]), "alg": "Ed448" });
        hs["extra"] = json!(1);
        let document = json!({ "keys": [
            hs, enc, wrong_alg, hs_on_rsa, ec_mismatch, short_ec, not_b64, ops, unknown_alg,
            rsa("weak", 1024), json!("not an object"), json!({ "kid": "no-kty" }), json!({ "kty": "RSA", "kid": 7 }),
            rsa("good", 2048),
        ]});
        use Skip::*;
        assert_eq!(
            skipped(&document),
            [
                KeyType,
                NotForSignatures,
                Algorithm,
                Algorithm,
                Algorithm,
                Malformed,
                Malformed,
                NotForSignatures,
                Algorithm,
                WeakKey,
                Malformed,
                Malformed,
                Malformed
            ]
        );
        let parsed = parse(document.to_string().as_bytes()).unwrap();
        assert!(parsed.keys.iter().all(|k| k.kid() == Some("good")), "only the good member's keys");
        assert!(parsed.keys.iter().all(|k| k.algorithm().family() == AlgorithmFamily::Rsa));
    }

    #[test]
    fn a_set_with_nothing_usable_or_no_keys_array_is_refused_whole() {
        assert_eq!(parse(b"[]").unwrap_err(), DocumentError::NotAKeySet);
        assert_eq!(parse(b"{\"keys\":{}}").unwrap_err(), DocumentError::NotAKeySet);
        assert_eq!(parse(b"not json").unwrap_err(), DocumentError::NotAKeySet);
        let weak = json!({ "keys": [rsa("weak", 1024)] });
        assert_eq!(parse(weak.to_string().as_bytes()).unwrap_err(), DocumentError::NoUsableKey);
    }
}

//! Why a request was refused, and store failures.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Why a request was refused. It is in the extensions of the 401 or 503 response
/// (for metrics), and its [`code`](Self::code) in the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// The header is not a well-formed bearer token, or is over the size cap.
    MalformedToken,
    /// Bad signature, disallowed algorithm, unknown key, `crit` header, duplicate
    /// or malformed claims.
    InvalidToken,
    /// `exp` has passed.
    Expired,
    /// `nbf` is still ahead.
    NotYetValid,
    /// Wrong `iss` or `aud`, or a lifetime over the configured maximum.
    ClaimsRejected,
    /// The token, or every token of its subject issued before it, was revoked.
    Revoked,
    /// The token store could not be reached (fail closed).
    StoreUnavailable,
    /// The token is valid but lacks a role or scope the route requires.
    Forbidden,
    /// The issuer's keys could not be fetched, or the last set fetched is older
    /// than its bound: the token can be neither accepted nor refused.
    KeySourceUnavailable,
}

impl Rejection {
    /// A stable name, for JSON bodies and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedToken => "malformed_token",
            Self::InvalidToken => "invalid_token",
            Self::Expired => "expired_token",
            Self::NotYetValid => "token_not_yet_valid",
            Self::ClaimsRejected => "claims_rejected",
            Self::Revoked => "revoked_token",
            Self::StoreUnavailable => "auth_unavailable",
            Self::Forbidden => "forbidden",
            Self::KeySourceUnavailable => "key_source_unavailable",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::MissingToken => "an Authorization: Bearer token is required",
            Self::MalformedToken => "the Authorization header is not a valid bearer token",
            Self::InvalidToken => "the token is not valid",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::ClaimsRejected => "the token was not issued for this service",
            Self::Revoked => "the token has been revoked",
            Self::StoreUnavailable => "authentication is temporarily unavailable",
            Self::Forbidden => "the token does not carry a role or scope this route requires",
            Self::KeySourceUnavailable => "the token issuer's keys are unavailable; try again later",
        }
    }

    /// The response for this rejection: 401 with `WWW-Authenticate` (RFC 6750
    /// §3: no error code when no token was sent), 403 with `error="insufficient_scope"`
    /// for a missing role or scope, or 503 with `Retry-After` when the store or
    /// the issuer's keys are out of reach (the token may well be good). The body
    /// is `{"error":{"code","message"}}`.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let (status, challenge) = match self {
            Self::StoreUnavailable | Self::KeySourceUnavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            Self::MissingToken => (StatusCode::UNAUTHORIZED, Some("Bearer")),
            Self::Forbidden => (StatusCode::FORBIDDEN, Some("Bearer error=\"insufficient_scope\"")),
            _ => (StatusCode::UNAUTHORIZED, Some("Bearer error=\"invalid_token\"")),
        };
        // The one JSON envelope, with its `Refusal` for layers that answer
        // otherwise (gRPC's status).
        let mut response: Response<B> = tower_gateway::error::json_error(status, self.code(), self.message());
        let headers = response.headers_mut();
        match challenge {
            Some(challenge) => headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge)),
            None if self == Self::KeySourceUnavailable => {
                // Tokens may ask for a fetch once per cooldown (default 10 s).
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("10"))
            }
            None => headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1")),
        };
        response.extensions_mut().insert(self);
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Rejection {}

/// The token store could not answer: why ([`kind`](Self::kind)), and the
/// store's own error as the [`source`](std::error::Error::source) (a
/// `redis::RedisError` for [`RedisStore`](crate::RedisStore)), to downcast.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Why a [`StoreError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store's configuration is unusable (a malformed Redis URL).
    Config,
    /// The store could not be reached, or its command failed.
    Unavailable,
    /// The store did not answer within its time bound.
    Timeout,
}

impl StoreError {
    /// The store failed with `cause`.
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { kind: StoreErrorKind::Unavailable, source: Some(cause.into()) }
    }

    /// A store error of `kind`, caused by `cause`.
    pub fn with_kind(kind: StoreErrorKind, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { kind, source: Some(cause.into()) }
    }

    /// The store did not answer in time.
    pub fn timeout() -> Self {
        Self { kind: StoreErrorKind::Timeout, source: None }
    }

    /// Why it failed.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.source) {
            (StoreErrorKind::Timeout, _) => f.write_str("token store unavailable: no answer in time"),
            (StoreErrorKind::Config, Some(source)) => write!(f, "token store misconfigured: {source}"),
            (_, Some(source)) => write!(f, "token store unavailable: {source}"),
            (_, None) => f.write_str("token store unavailable"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The configuration given to [`AuthenticatorBuilder`](crate::AuthenticatorBuilder),
/// a [`Key`](crate::Key) or a [`TokenIssuer`](crate::TokenIssuer) cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key could not be read: what it was, and why.
    InvalidKey {
        /// Which key (`"RSA public key"`, ...).
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// An HMAC constructor was given a non-HMAC algorithm.
    NotHmac(jsonwebtoken::Algorithm),
    /// An HMAC algorithm was given to a public-key constructor.
    HmacNeedsSecret,
    /// An HMAC secret shorter than 32 bytes.
    SecretTooShort,
    /// No verification key.
    NoKeys,
    /// More than one key without a `kid`.
    SeveralKeysWithoutKid,
    /// A leeway over [`MAX_LEEWAY`](crate::MAX_LEEWAY).
    LeewayTooLong,
    /// A zero maximum token lifetime.
    ZeroMaxLifetime,
    /// An identity header name that is not a valid header name.
    InvalidHeaderName(String),
    /// Several issuers, one of them without an `iss` to tell its tokens apart.
    IssuerRequired,
    /// Two issuers with the same `iss`.
    DuplicateIssuer(String),
    /// An issuer's allowed algorithms and its keys have none in common.
    NoUsableAlgorithm,
    /// A remote key source that cannot work (its URL, its bounds).
    InvalidKeySource(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidKey { what, reason } => write!(f, "{what}: {reason}"),
            Self::NotHmac(algorithm) => write!(f, "{algorithm:?} is not an HMAC algorithm"),
            Self::HmacNeedsSecret => f.write_str("use Key::hmac for HMAC algorithms"),
            Self::SecretTooShort => f.write_str("an HMAC secret must be at least 32 bytes"),
            Self::NoKeys => f.write_str("at least one verification key is required"),
            Self::SeveralKeysWithoutKid => f.write_str("only one key may be without a kid"),
            Self::LeewayTooLong => write!(f, "leeway must be at most {:?}", crate::MAX_LEEWAY),
            Self::ZeroMaxLifetime => f.write_str("max_lifetime must be positive"),
            Self::InvalidHeaderName(name) => write!(f, "header {name:?} is not a valid header name"),
            Self::IssuerRequired => f.write_str("with several issuers, each needs its iss"),
            Self::DuplicateIssuer(iss) => write!(f, "the issuer {iss:?} is trusted twice"),
            Self::NoUsableAlgorithm => f.write_str("none of the allowed algorithms fits the issuer's keys"),
            Self::InvalidKeySource(reason) => write!(f, "key source: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

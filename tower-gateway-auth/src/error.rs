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
    /// The token is valid but carries none of the roles the route requires.
    Forbidden,
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
            Self::Forbidden => "the token does not carry a role this route requires",
        }
    }

    /// The response for this rejection: 401 with `WWW-Authenticate` (RFC 6750
    /// §3: no error code when no token was sent), 403 with `error="insufficient_scope"`
    /// for a missing role, or 503 with `Retry-After` when the store is down. The body
    /// is `{"error":{"code","message"}}`.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let (status, challenge) = match self {
            Self::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            Self::MissingToken => (StatusCode::UNAUTHORIZED, Some("Bearer")),
            Self::Forbidden => (StatusCode::FORBIDDEN, Some("Bearer error=\"insufficient_scope\"")),
            _ => (StatusCode::UNAUTHORIZED, Some("Bearer error=\"invalid_token\"")),
        };
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.message() } });
        let mut response = Response::new(B::from(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match challenge {
            Some(challenge) => headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge)),
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

/// The token store could not answer.
#[derive(Debug)]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// A store error saying `message`.
    pub fn new(message: impl fmt::Display) -> Self {
        Self { message: message.to_string() }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token store unavailable: {}", self.message)
    }
}

impl std::error::Error for StoreError {}

/// The configuration given to [`AuthenticatorBuilder`](crate::AuthenticatorBuilder) cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

//! Errors shared by the layers, and the JSON error responses they answer with.
//!
//! Layers that speak HTTP answer failures with a response whose body is
//! `{"error":{"code":"...","message":"..."}}`. When the failure happened on the way
//! to an upstream, the response also carries an [`UpstreamError`] in its
//! extensions, so that layers further out (retry, balancing, metrics) can tell a
//! refused connection from a timeout without parsing bodies.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// A boxed error, as tower uses them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong between the gateway and an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// No connection could be made: nothing of the request was sent, so any
    /// request may safely be sent again elsewhere.
    Connect,
    /// The connection failed after the request may have been sent (reset,
    /// closed early, malformed response).
    Reset,
    /// The upstream did not answer in time.
    Timeout,
    /// There was no endpoint to send the request to.
    NoEndpoint,
    /// The request had no usable destination (no scheme or authority).
    NoDestination,
    /// The client's request body could not be read (malformed chunking, cut
    /// short): the client's fault, answered `400`.
    RequestBody,
    /// The TLS handshake with an `https://` upstream failed: a certificate not
    /// trusted or not for that name, no protocol in common. Nothing was sent.
    Tls,
    /// The upstream answered `101 Switching Protocols` to something other than
    /// the WebSocket handshake it was sent (another protocol, a wrong
    /// `Sec-WebSocket-Accept`, or no upgrade asked): nothing is spliced.
    Upgrade,
}

impl UpstreamErrorKind {
    /// The status a client sees for this kind of failure.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Connect | Self::Reset | Self::NoDestination | Self::Tls | Self::Upgrade => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            Self::RequestBody => StatusCode::BAD_REQUEST,
        }
    }

    /// The stable, machine-readable code used in JSON bodies and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Connect => "upstream_connect_failed",
            Self::Reset => "upstream_reset",
            Self::Timeout => "upstream_timeout",
            Self::NoEndpoint => "no_endpoint",
            Self::NoDestination => "no_destination",
            Self::RequestBody => "bad_request_body",
            Self::Tls => "upstream_tls_failed",
            Self::Upgrade => "upstream_bad_upgrade",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Connect => "the upstream service could not be reached",
            Self::Reset => "the upstream connection failed before a complete response",
            Self::Timeout => "the upstream service did not answer in time",
            Self::NoEndpoint => "no upstream endpoint is available",
            Self::NoDestination => "the request has no upstream destination",
            Self::RequestBody => "the request body could not be read",
            Self::Tls => "the upstream's TLS certificate or handshake was refused",
            Self::Upgrade => "the upstream switched to a protocol that was not asked for",
        }
    }
}

/// A failure on the way to an upstream, found in the extensions of the 502, 503
/// or 504 response that reports it.
///
/// ```
/// # use http::Response;
/// # use tower_gateway::error::{UpstreamError, UpstreamErrorKind};
/// # let response: Response<()> = Response::new(());
/// if let Some(err) = response.extensions().get::<UpstreamError>() {
///     if err.kind() == UpstreamErrorKind::Connect {
///         // safe to send again: nothing reached the upstream
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamError {
    kind: UpstreamErrorKind,
}

impl UpstreamError {
    /// An error of this kind.
    pub fn new(kind: UpstreamErrorKind) -> Self {
        Self { kind }
    }

    /// What went wrong.
    pub fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// The JSON error response for this failure, with `self` in its extensions.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let mut response = json_error(self.kind.status(), self.kind.code(), self.kind.message());
        response.extensions_mut().insert(self);
        response
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.message())
    }
}

impl std::error::Error for UpstreamError {}

/// A refusal's code and message, in the extensions of each [`json_error`]
/// response: for layers further out that answer in another form (gRPC's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    code: Box<str>,
    message: Box<str>,
}

impl Refusal {
    /// A refusal with `code` and `message`, for an error response made
    /// otherwise than by [`json_error`].
    pub fn new(code: &str, message: &str) -> Self {
        Self { code: code.into(), message: message.into() }
    }

    /// The machine-readable code (`missing_token`, `upstream_timeout`, …).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A response with `status` and the body `{"error":{"code":code,"message":message}}`,
/// and a [`Refusal`] in its extensions.
pub fn json_error<B: From<Bytes>>(status: StatusCode, code: &str, message: &str) -> Response<B> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(B::from(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.extensions_mut().insert(Refusal::new(code, message));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_escapes_and_sets_content_type() {
        let response: Response<Bytes> = json_error(StatusCode::BAD_REQUEST, "bad_path", "a \"quoted\" path");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "bad_path");
        assert_eq!(body["error"]["message"], "a \"quoted\" path");
    }

    #[test]
    fn upstream_error_travels_in_extensions() {
        let response: Response<Bytes> = UpstreamError::new(UpstreamErrorKind::Timeout).into_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            response.extensions().get::<UpstreamError>().map(UpstreamError::kind),
            Some(UpstreamErrorKind::Timeout)
        );
    }
}

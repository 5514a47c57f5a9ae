//! Strip a base path from requests before they reach the inner service.
//!
//! [`StripPrefixLayer::new("/api/products")`](StripPrefixLayer::new) turns
//! `/api/products/item?x=1` into `/item?x=1` and `/api/products` into `/`. The prefix
//! only matches on a segment boundary: `/api/productsX` is **not** a match and is
//! passed to the inner service untouched. The stripped prefix is sent on in the
//! `X-Forwarded-Prefix` header (any client-sent value is replaced), so a backend can
//! still build absolute links.
//!
//! # Path policy: refuse, never guess
//!
//! A gateway that rewrites paths must be sure the path it matched is the path the
//! backend will act on. Rather than normalising hostile spellings (and risking a
//! disagreement with the backend about what they mean), every path is checked, and
//! one that is not already canonical is refused with `400 Bad Request` and a JSON
//! body `{"error":{"code":"invalid_path",...}}` — the inner service is never called.
//! Refused anywhere in the path:
//!
//! - dot segments `.` and `..`, also percent-encoded (`%2e`, `%2E%2e`) or followed by
//!   `;` parameters (`..;`);
//! - empty segments (`//`), except the trailing slash;
//! - backslashes, raw or encoded (`%5C`), and encoded slashes (`%2F`);
//! - encoded control characters (`%00`–`%1F`, `%7F`) and double-encoded dots,
//!   slashes or backslashes (`%252e`);
//! - malformed percent-encoding (`%`, `%zz`);
//! - `;` path parameters, raw or encoded (`/admin;x=1`, `/admin%3Bx`): servlet
//!   containers and some frameworks drop them before routing, so `/api;x/admin`
//!   could mean `/api/admin` to a backend while looking like another path here
//!   (Spring Security's `StrictHttpFirewall` refuses them for the same reason).
//!
//! Everything else passes, in its [canonical](canonicalize) form: percent-encoded
//! unreserved characters are decoded (`/api/%70roducts` is `/api/products`, as
//! RFC 3986 §6.2.2.2 says they are the same), and other escapes upper-cased. The
//! prefix is then compared byte for byte and is case-sensitive. An asterisk-form
//! path (`OPTIONS *`) passes untouched.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::{Body, StripPrefixLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(StripPrefixLayer::new("/api/products"))
//!     .service_fn(|req: Request<()>| async move {
//!         Ok::<_, Infallible>(Response::new(Body::from(req.uri().to_string())))
//!     });
//!
//! let req = Request::get("/api/products/item?x=1").body(()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK); // the inner service saw "/item?x=1"
//!
//! let req = Request::get("/api/products/../checkout").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::BAD_REQUEST); // never reached the inner service
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::json_error;
use crate::future::AnswerOrCall;

static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Why a path was refused. See the [module docs](self) for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `.` or `..` segment, however spelled.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A backslash, raw or percent-encoded.
    Backslash,
    /// A percent-encoded `/`.
    EncodedSlash,
    /// A percent-encoded control character, NUL included.
    ControlCharacter,
    /// A double-encoded dot, slash or backslash (`%252e`).
    DoubleEncoded,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A `;` path parameter, raw or percent-encoded.
    Parameter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the path must start with '/'",
            Self::DotSegment => "the path must not contain '.' or '..' segments",
            Self::EmptySegment => "the path must not contain empty segments ('//')",
            Self::Backslash => "the path must not contain backslashes",
            Self::EncodedSlash => "the path must not contain encoded slashes ('%2F')",
            Self::ControlCharacter => "the path must not contain control characters",
            Self::DoubleEncoded => "the path must not contain double-encoded separators",
            Self::BadPercentEncoding => "the path contains malformed percent-encoding",
            Self::Parameter => "the path must not contain ';' parameters",
        })
    }
}

impl std::error::Error for PathError {}

/// The prefix given to [`StripPrefixLayer::try_new`] is not a canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPrefix {
    prefix: String,
    reason: &'static str,
}

impl fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid path prefix {:?}: {}", self.prefix, self.reason)
    }
}

impl std::error::Error for InvalidPrefix {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the `%XY` escape starting at `bytes[i]`.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadPercentEncoding),
    }
}

/// Is `segment` (without its `;` parameters) `.` or `..`, with dots possibly
/// percent-encoded?
fn is_dot_segment(segment: &[u8]) -> bool {
    let name = segment.split(|&b| b == b';').next().unwrap_or_default();
    let mut dots = 0;
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'.' {
            i += 1;
        } else if name[i..].len() >= 3 && name[i] == b'%' && name[i + 1] == b'2' && name[i + 2] | 0x20 == b'e' {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Checks that `path` is canonical: see the [module docs](self) for what is refused.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'%' => match escape_at(bytes, i)? {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                b'%' if escape_at(bytes, i + 2).is_ok() => return Err(PathError::DoubleEncoded),
                _ => {}
            },
            _ => {}
        }
    }
    let mut segments = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
        if is_dot_segment(segment) {
            return Err(PathError::DotSegment);
        }
        if segment.contains(&b';') || segment.windows(3).any(|w| w[0] == b'%' && w[1] == b'3' && w[2] | 0x20 == b'b') {
            return Err(PathError::Parameter);
        }
    }
    Ok(())
}

/// The canonical form of `path`, or why it has none: [`check_path`]'s rules, then
/// percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded and the
/// remaining escapes upper-cased. Borrowed when `path` is already canonical.
/// Two spellings that a backend decodes to the same path have the same canonical
/// form, so matching on it cannot be fooled by encoding.
///
/// ```
/// use tower_gateway::strip_prefix::{canonicalize, PathError};
///
/// assert_eq!(canonicalize("/api/users/%61dmin/x%2d1").unwrap(), "/api/users/admin/x-1");
/// assert_eq!(canonicalize("/a%20b%3a").unwrap(), "/a%20b%3A");
/// assert_eq!(canonicalize("/api/users/admin;x=1"), Err(PathError::Parameter));
/// ```
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    check_path(path)?;
    let bytes = path.as_bytes();
    let needs_work = |i: usize| {
        bytes[i] == b'%'
            && escape_at(bytes, i)
                .is_ok_and(|b| is_unreserved(b) || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase))
    };
    let Some(first) = (0..bytes.len()).find(|&i| needs_work(i)) else {
        return Ok(Cow::Borrowed(path));
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let decoded = escape_at(bytes, i)?;
            if is_unreserved(decoded) {
                out.push(decoded);
            } else {
                out.push(b'%');
                out.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII was replaced by ASCII, so the bytes are as UTF-8 as the input was.
    Ok(Cow::Owned(String::from_utf8(out).expect("ASCII replaced by ASCII")))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Strips `prefix` (canonical, without a trailing `/`; empty for the root) from
/// `path` on a segment boundary.
///
/// Returns `Ok(Some(rest))` on a match, where `rest` is the rest of the
/// [canonical](canonicalize) path, empty or starting with `/`; `Ok(None)` when the
/// path does not start with the prefix; and an error when the path is refused
/// (whether or not it matches).
///
/// ```
/// use tower_gateway::strip_prefix::{strip, PathError};
///
/// assert_eq!(strip("/api/products", "/api/products/item").unwrap().as_deref(), Some("/item"));
/// assert_eq!(strip("/api/products", "/api/%70roducts/%69tem").unwrap().as_deref(), Some("/item"));
/// assert_eq!(strip("/api/products", "/api/products").unwrap().as_deref(), Some(""));
/// assert_eq!(strip("/api/products", "/api/productsX").unwrap(), None);
/// assert_eq!(strip("/api/products", "/api/products/%2e%2e/checkout"), Err(PathError::DotSegment));
/// ```
pub fn strip<'a>(prefix: &str, path: &'a str) -> Result<Option<Cow<'a, str>>, PathError> {
    let matches = |path: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    Ok(match canonicalize(path)? {
        Cow::Borrowed(path) if matches(path) => Some(Cow::Borrowed(&path[prefix.len()..])),
        Cow::Owned(path) if matches(&path) => Some(Cow::Owned(path[prefix.len()..].to_owned())),
        _ => None,
    })
}

/// What takes the matched prefix's place.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replacement {
    /// This path in place of the prefix (empty: the prefix is stripped).
    Prefix(Arc<str>),
    /// This path in place of the whole path.
    FullPath(Arc<str>),
}

/// The path and query of `uri` with `prefix` stripped from its path.
/// `Ok(None)`: the path does not match and the URI is left as it is.
#[cfg(test)]
fn stripped(prefix: &str, uri: &Uri) -> Result<Option<PathAndQuery>, PathError> {
    rewritten(prefix, &Replacement::Prefix("".into()), uri)
}

/// The path and query of `uri` with `prefix` replaced in its path.
fn rewritten(prefix: &str, replacement: &Replacement, uri: &Uri) -> Result<Option<PathAndQuery>, PathError> {
    let path = uri.path();
    if path == "*" {
        return Ok(None);
    }
    let Some(rest) = strip(prefix, path)? else {
        return Ok(None);
    };
    let (head, rest) = match replacement {
        Replacement::Prefix(with) => (&**with, &*rest),
        Replacement::FullPath(path) => (&**path, ""),
    };
    let rest = if head.is_empty() && rest.is_empty() { "/" } else { rest };
    let mut path_and_query = String::with_capacity(head.len() + rest.len() + uri.query().map_or(0, |q| q.len() + 1));
    path_and_query.push_str(head);
    path_and_query.push_str(rest);
    if let Some(query) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    // A canonical path (or one checked like a prefix) with the query it came
    // with is always valid.
    Ok(PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)).ok())
}

/// `uri` with `path_and_query` in place of its own. Taken, not cloned: a clone
/// of a freshly parsed URI's bytes allocates.
fn with_path(uri: Uri, path_and_query: PathAndQuery) -> Uri {
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).expect("a valid URI with another valid path is valid")
}

/// Rewrites `uri` with `prefix` stripped from its path, keeping the query.
#[cfg(test)]
fn strip_uri(prefix: &str, uri: &Uri) -> Result<Option<Uri>, PathError> {
    Ok(stripped(prefix, uri)?.map(|path_and_query| with_path(uri.clone(), path_and_query)))
}

/// Strips a base path from each request. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct StripPrefixLayer {
    prefix: Arc<str>,
    header: HeaderValue,
    replacement: Replacement,
}

impl StripPrefixLayer {
    /// A layer stripping `prefix` (e.g. `"/api/products"`; a trailing `/` is ignored).
    ///
    /// # Panics
    ///
    /// If `prefix` is not a canonical absolute path without query: use
    /// [`try_new`](Self::try_new) for prefixes that come from configuration.
    #[track_caller]
    pub fn new(prefix: &str) -> Self {
        match Self::try_new(prefix) {
            Ok(layer) => layer,
            Err(err) => panic!("{err}"),
        }
    }

    /// A layer stripping `prefix`, or why `prefix` cannot be one.
    pub fn try_new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let (trimmed, header) = checked_prefix(prefix)?;
        Ok(Self { prefix: trimmed.into(), header, replacement: Replacement::Prefix("".into()) })
    }

    /// Puts `with` in the matched prefix's place instead of stripping it (the
    /// Gateway API's `ReplacePrefixMatch`): with `/v2`, `/api/products/item`
    /// becomes `/v2/item`. `X-Forwarded-Prefix` is sent only when the prefix is
    /// stripped (`with` is `/`): a backend rebuilding links from it would
    /// otherwise build them wrong.
    ///
    /// ```
    /// # use tower_gateway::StripPrefixLayer;
    /// let layer = StripPrefixLayer::new("/api/products").replace_prefix_with("/v2").unwrap();
    /// assert!(StripPrefixLayer::new("/a").replace_prefix_with("/b/../c").is_err());
    /// ```
    pub fn replace_prefix_with(mut self, with: &str) -> Result<Self, InvalidPrefix> {
        let (trimmed, _) = checked_prefix(with)?;
        self.replacement = Replacement::Prefix(trimmed.into());
        Ok(self)
    }

    /// Puts `path` in place of the whole path of a matching request (the
    /// Gateway API's `ReplaceFullPath`), keeping the query: with `/status`,
    /// `/api/health/deep?v=1` becomes `/status?v=1`.
    pub fn replace_full_path(mut self, path: &str) -> Result<Self, InvalidPrefix> {
        let (trimmed, _) = checked_prefix(path)?;
        let path = if trimmed.is_empty() { "/" } else { trimmed };
        self.replacement = Replacement::FullPath(path.into());
        Ok(self)
    }
}

/// `prefix` without its trailing `/`, and as a header value; or why it is no
/// canonical path.
fn checked_prefix(prefix: &str) -> Result<(&str, HeaderValue), InvalidPrefix> {
    let invalid = |reason| InvalidPrefix { prefix: prefix.to_owned(), reason };
    if prefix.bytes().any(|b| matches!(b, b'?' | b'#' | b'%' | b';')) {
        return Err(invalid("it must not contain '?', '#', '%' or ';'"));
    }
    check_path(prefix).map_err(|e| {
        invalid(match e {
            PathError::NotAbsolute => "it must start with '/'",
            PathError::DotSegment => "it must not contain '.' or '..' segments",
            PathError::EmptySegment => "it must not contain '//'",
            _ => "it must be a plain path",
        })
    })?;
    let trimmed = prefix.trim_end_matches('/');
    let shown = if trimmed.is_empty() { "/" } else { trimmed };
    PathAndQuery::try_from(shown).map_err(|_| invalid("it contains characters not allowed in a path"))?;
    let header = HeaderValue::from_str(shown).map_err(|_| invalid("it contains characters not allowed in a header"))?;
    Ok((trimmed, header))
}

impl StripPrefixLayer {
    /// The prefix this layer strips, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl<S> Layer<S> for StripPrefixLayer {
    type Service = StripPrefix<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StripPrefix { inner, layer: self.clone() }
    }
}

/// Strips a base path from each request. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct StripPrefix<S> {
    inner: S,
    layer: StripPrefixLayer,
}

impl<S> StripPrefix<S> {
    /// Wraps `inner`, stripping `prefix`; panics like [`StripPrefixLayer::new`].
    #[track_caller]
    pub fn new(inner: S, prefix: &str) -> Self {
        StripPrefixLayer::new(prefix).layer(inner)
    }

    /// A [`StripPrefixLayer`] for `prefix`.
    #[track_caller]
    pub fn layer(prefix: &str) -> StripPrefixLayer {
        StripPrefixLayer::new(prefix)
    }

    crate::inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StripPrefix<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        // Under axum's `nest_service` the router has already taken its mount
        // off the path: rewrite the path the client sent instead, so the
        // prefix is neither stripped twice nor missed.
        let sent = nested_original(&req);
        match rewritten(&layer.prefix, &layer.replacement, sent.unwrap_or(req.uri())) {
            Ok(Some(path_and_query)) => {
                let uri = std::mem::take(req.uri_mut());
                *req.uri_mut() = with_path(uri, path_and_query);
                if matches!(&layer.replacement, Replacement::Prefix(with) if with.is_empty()) {
                    req.headers_mut().insert(X_FORWARDED_PREFIX.clone(), layer.header.clone());
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(path = req.uri().path(), %err, "refused a non-canonical path");
                let response = json_error(StatusCode::BAD_REQUEST, "invalid_path", &err.to_string());
                return future::ResponseFuture { inner: AnswerOrCall::answer(response) };
            }
        }
        future::ResponseFuture { inner: AnswerOrCall::call(self.inner.call(req)) }
    }
}

/// The URI the client sent, when axum's `nest_service` has taken its mount off
/// the request's path.
#[cfg(feature = "axum")]
fn nested_original<B>(req: &Request<B>) -> Option<&Uri> {
    req.extensions().get::<axum::extract::NestedPath>()?;
    req.extensions().get::<axum::extract::OriginalUri>().map(|original| &original.0)
}

#[cfg(not(feature = "axum"))]
fn nested_original<B>(_: &Request<B>) -> Option<&Uri> {
    None
}

pub mod future {
    //! The future of [`StripPrefix`](super::StripPrefix).

    pub use crate::future::ResponseFuture;
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    const PREFIX: &str = "/api/products";

    #[test]
    fn strips_on_segment_boundary() {
        let cases = [
            ("/api/products/item?x=1", Some("/item?x=1")),
            ("/api/products/item", Some("/item")),
            ("/api/products", Some("/")),
            ("/api/products/", Some("/")),
            ("/api/products?x=1&y=%2F", Some("/?x=1&y=%2F")),
            ("/api/products/a/b/c", Some("/a/b/c")),
            ("/api/products/item/", Some("/item/")),
            ("/api/products/a%20b", Some("/a%20b")),
            ("/api/products/...", Some("/...")),
            ("/api/products/.well-known", Some("/.well-known")),
            ("/api/productsX", None),
            ("/api/products-x/item", None),
            ("/API/products/item", None),
            ("/api/%70roducts/%69tem", Some("/item")),
            ("/api/products/a%2db%7e%5F", Some("/a-b~_")),
            ("/api/products/caf%c3%a9", Some("/caf%C3%A9")),
            ("/api", None),
            ("/", None),
        ];
        for (input, expected) in cases {
            let uri: Uri = input.parse().unwrap();
            let got = strip_uri(PREFIX, &uri).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.map(|u| u.to_string()).as_deref(), expected, "{input}");
        }
    }

    #[test]
    fn absolute_form_keeps_scheme_and_authority() {
        let uri: Uri = "http://gw.example/api/products/item?q".parse().unwrap();
        let got = strip_uri(PREFIX, &uri).unwrap().unwrap();
        assert_eq!(got, "http://gw.example/item?q");
    }

    #[test]
    fn root_prefix_strips_nothing() {
        let layer = StripPrefixLayer::new("/");
        assert_eq!(layer.prefix(), "");
        let uri: Uri = "/a/b?c".parse().unwrap();
        assert_eq!(strip_uri(layer.prefix(), &uri).unwrap().unwrap(), "/a/b?c");
    }

    /// Hostile paths: each is refused, so no spelling of it can leave the prefix.
    #[test]
    fn hostile_paths_are_refused() {
        use PathError::*;
        let cases = [
            ("/api/products/../checkout", DotSegment),
            ("/api/products/./item", DotSegment),
            ("/api/products/..", DotSegment),
            ("/api/products/.", DotSegment),
            ("/api/products/%2e%2e/checkout", DotSegment),
            ("/api/products/%2E%2E/checkout", DotSegment),
            ("/api/products/.%2e/checkout", DotSegment),
            ("/api/products/%2e./checkout", DotSegment),
            ("/api/products/%2e/item", DotSegment),
            ("/api/products/..;/checkout", DotSegment),
            ("/api/products/..;jsessionid=x/checkout", DotSegment),
            ("/api/products/%2e%2e;x/checkout", DotSegment),
            ("/api/products%2F..%2Fcheckout", EncodedSlash),
            ("/api/products/%2f", EncodedSlash),
            ("/api/products/..%2fcheckout", EncodedSlash),
            ("/api/products/..%5ccheckout", Backslash),
            ("/api/products/%5C..%5Ccheckout", Backslash),
            ("/api/products//item", EmptySegment),
            ("//api/products/item", EmptySegment),
            ("/api//products", EmptySegment),
            ("/api/products/item%00.json", ControlCharacter),
            ("/api/products/%0d%0aSet-Cookie:x", ControlCharacter),
            ("/api/products/%7f", ControlCharacter),
            ("/api/products/%252e%252e/checkout", DoubleEncoded),
            ("/api/products/%252f", DoubleEncoded),
            ("/api/products/%255c", DoubleEncoded),
            ("/api/products/%", BadPercentEncoding),
            ("/api/products/%2", BadPercentEncoding),
            ("/api/products/%zz", BadPercentEncoding),
            ("/../api/products/item", DotSegment),
            ("/api/products/a/../../checkout", DotSegment),
            ("/api/products/%2e%2e%2fcheckout", EncodedSlash),
            ("/api/products;v=1/item", Parameter),
            ("/api/products/item;jsessionid=1", Parameter),
            ("/api/products/item%3bx", Parameter),
            ("/api/products/%2561", DoubleEncoded),
        ];
        assert!(cases.len() >= 25);
        for (input, expected) in cases {
            let uri: Uri = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(strip_uri(PREFIX, &uri), Err(expected), "{input}");
        }
        // Checked on the raw path, before the URI type could have accepted them.
        assert_eq!(check_path("/api/products\\..\\checkout"), Err(Backslash));
        assert_eq!(check_path("/api/products/\0"), Err(ControlCharacter));
        assert_eq!(check_path("api/products"), Err(NotAbsolute));
    }

    #[test]
    fn prefixes_are_validated() {
        assert_eq!(StripPrefixLayer::try_new("/api/products/").unwrap().prefix(), "/api/products");
        for bad in ["api", "/api/../x", "/api//x", "/a?b", "/a%2f", "/a;b", ""] {
            assert!(StripPrefixLayer::try_new(bad).is_err(), "{bad:?}");
        }
    }

    async fn seen_uri(path: &str) -> (StatusCode, String, Option<String>) {
        let svc =
            ServiceBuilder::new().layer(StripPrefixLayer::new(PREFIX)).service_fn(|req: Request<()>| async move {
                let prefix = req.headers().get("x-forwarded-prefix").map(|v| v.to_str().unwrap().to_owned());
                let mut res = Response::new(Bytes::from(req.uri().to_string()));
                res.extensions_mut().insert(prefix);
                Ok::<_, Infallible>(res)
            });
        let req = Request::get(path).header("x-forwarded-prefix", "/evil").body(()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let prefix = res.extensions().get::<Option<String>>().cloned().flatten();
        (res.status(), String::from_utf8(res.into_body().flat().to_vec()).unwrap(), prefix)
    }

    #[tokio::test]
    async fn service_rewrites_and_sets_forwarded_prefix() {
        let (status, uri, prefix) = seen_uri("/api/products/item?x=1").await;
        assert_eq!((status, uri.as_str(), prefix.as_deref()), (StatusCode::OK, "/item?x=1", Some(PREFIX)));
        // No match: untouched, and the client's header is not ours to replace.
        let (status, uri, prefix) = seen_uri("/api/productsX").await;
        assert_eq!((status, uri.as_str(), prefix.as_deref()), (StatusCode::OK, "/api/productsX", Some("/evil")));
    }

    #[tokio::test]
    async fn service_refuses_with_json_and_never_calls_inner() {
        let svc = ServiceBuilder::new().layer(StripPrefixLayer::new(PREFIX)).service_fn(|_: Request<()>| async {
            panic!("the inner service must not be called") as Result<Response<Bytes>, Infallible>
        });
        let req = Request::get("/api/products/%2e%2e/checkout").body(()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_slice(&res.into_body().flat()).unwrap();
        assert_eq!(body["error"]["code"], "invalid_path");
    }
}

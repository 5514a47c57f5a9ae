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

mod path;

pub use self::path::{PathError, canonicalize, check_path, strip};

static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

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

    /// The prefix this layer strips, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
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
#[path = "strip_prefix_tests.rs"]
mod tests;

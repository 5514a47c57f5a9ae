//! Set, add and remove headers on requests or responses, as the Gateway API's
//! `RequestHeaderModifier` and `ResponseHeaderModifier` filters do.
//!
//! A [`HeaderModifier`] is a list of changes made in one pass: `remove` first,
//! then `set` (replacing every value the header had), then `add` (appending a
//! value beside those there). [`ModifyRequestHeadersLayer`] applies one to each
//! request before the inner service sees it; [`ModifyResponseHeadersLayer`] to
//! each response head the inner service answers.
//!
//! Headers that frame the message or belong to one connection (`Connection`,
//! `Content-Length`, `Transfer-Encoding`, `Upgrade`, `TE`, `Trailer`,
//! `Keep-Alive`, `Proxy-Connection`, `Host`) cannot be modified: a modifier
//! naming one is refused when the layer is made ([`ProtectedHeader`]). A
//! gateway protects its own headers the same way with
//! [`HeaderModifier::touching`]: the headers it derives from the client's
//! address or token must not be settable by configuration either.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{HeaderName, HeaderValue, Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::modify_headers::{HeaderModifier, ModifyRequestHeadersLayer, ModifyResponseHeadersLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let request = HeaderModifier::new()
//!     .set(HeaderName::from_static("x-canary"), HeaderValue::from_static("false"))
//!     .remove(HeaderName::from_static("x-debug"));
//! let response = HeaderModifier::new().add(HeaderName::from_static("x-served-by"), HeaderValue::from_static("edge"));
//! let svc = ServiceBuilder::new()
//!     .layer(ModifyResponseHeadersLayer::new(response).unwrap())
//!     .layer(ModifyRequestHeadersLayer::new(request).unwrap())
//!     .service_fn(|req: Request<()>| async move {
//!         assert_eq!(req.headers()["x-canary"], "false");
//!         assert!(!req.headers().contains_key("x-debug"));
//!         Ok::<_, Infallible>(Response::new(()))
//!     });
//!
//! let req = Request::get("/").header("x-canary", "true").header("x-debug", "1").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-served-by"], "edge");
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

/// Headers no modifier may name: they frame the message or belong to one hop.
const FRAMING: [HeaderName; 7] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::HOST,
];
const HOP_BY_HOP: [&str; 2] = ["keep-alive", "proxy-connection"];

/// Changes to a header map: removed, set, added. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// Changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing whatever values it had.
    pub fn set(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.set.push((name, value));
        self
    }

    /// Adds `value` to `name`, beside the values it has.
    pub fn add(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.add.push((name, value));
        self
    }

    /// Removes every value of `name`.
    pub fn remove(mut self, name: HeaderName) -> Self {
        self.remove.push(name);
        self
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// The first of `names` this modifier would set, add or remove, if any: a
    /// gateway refuses a modifier touching the headers it owns.
    pub fn touching<'a>(&self, names: impl IntoIterator<Item = &'a HeaderName>) -> Option<&'a HeaderName> {
        names.into_iter().find(|name| self.names().any(|n| n == *name))
    }

    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.set.iter().map(|(n, _)| n).chain(self.add.iter().map(|(n, _)| n)).chain(&self.remove)
    }

    /// Makes the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    fn checked(self) -> Result<Arc<Self>, ProtectedHeader> {
        let protected = |n: &&HeaderName| FRAMING.contains(n) || HOP_BY_HOP.contains(&n.as_str());
        if let Some(name) = self.names().find(protected) {
            return Err(ProtectedHeader(name.clone()));
        }
        Ok(Arc::new(self))
    }
}

/// A modifier named a header that frames the message or belongs to one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedHeader(pub HeaderName);

impl fmt::Display for ProtectedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} frames the message or belongs to one connection: it cannot be modified", self.0)
    }
}

impl std::error::Error for ProtectedHeader {}

/// Modifies each request's headers. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct ModifyRequestHeadersLayer {
    modifier: Arc<HeaderModifier>,
}

impl ModifyRequestHeadersLayer {
    /// A layer making `modifier`'s changes to each request, or why it cannot.
    pub fn new(modifier: HeaderModifier) -> Result<Self, ProtectedHeader> {
        Ok(Self { modifier: modifier.checked()? })
    }
}

impl<S> Layer<S> for ModifyRequestHeadersLayer {
    type Service = ModifyRequestHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ModifyRequestHeaders { inner, modifier: self.modifier.clone() }
    }
}

/// Modifies each request's headers. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct ModifyRequestHeaders<S> {
    inner: S,
    modifier: Arc<HeaderModifier>,
}

impl<S> ModifyRequestHeaders<S> {
    crate::inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for ModifyRequestHeaders<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        self.modifier.apply(req.headers_mut());
        self.inner.call(req)
    }
}

/// Modifies each response's headers. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct ModifyResponseHeadersLayer {
    modifier: Arc<HeaderModifier>,
}

impl ModifyResponseHeadersLayer {
    /// A layer making `modifier`'s changes to each response, or why it cannot.
    pub fn new(modifier: HeaderModifier) -> Result<Self, ProtectedHeader> {
        Ok(Self { modifier: modifier.checked()? })
    }
}

impl<S> Layer<S> for ModifyResponseHeadersLayer {
    type Service = ModifyResponseHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ModifyResponseHeaders { inner, modifier: self.modifier.clone() }
    }
}

/// Modifies each response's headers. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct ModifyResponseHeaders<S> {
    inner: S,
    modifier: Arc<HeaderModifier>,
}

impl<S> ModifyResponseHeaders<S> {
    crate::inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ModifyResponseHeaders<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        future::ResponseFuture { future: self.inner.call(req), modifier: self.modifier.clone() }
    }
}

pub mod future {
    //! The future of [`ModifyResponseHeaders`](super::ModifyResponseHeaders).

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use http::Response;
    use pin_project_lite::pin_project;

    use super::HeaderModifier;

    pin_project! {
        /// The response future of [`ModifyResponseHeaders`](super::ModifyResponseHeaders).
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            pub(super) future: F,
            pub(super) modifier: Arc<HeaderModifier>,
        }
    }

    impl<F, B, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<B>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let mut response = std::task::ready!(this.future.poll(cx))?;
            this.modifier.apply(response.headers_mut());
            Poll::Ready(Ok(response))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    fn name(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    fn value(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn removes_then_sets_then_adds() {
        let modifier = HeaderModifier::new()
            .set(name("x-set"), value("new"))
            .add(name("x-add"), value("second"))
            .remove(name("x-gone"))
            .add(name("x-set"), value("also"));
        let mut headers = HeaderMap::new();
        headers.append("x-set", value("old1"));
        headers.append("x-set", value("old2"));
        headers.append("x-add", value("first"));
        headers.append("x-gone", value("a"));
        headers.append("x-gone", value("b"));
        headers.append("x-kept", value("k"));
        modifier.apply(&mut headers);
        let all = |n: &str| headers.get_all(n).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(all("x-set"), ["new", "also"]);
        assert_eq!(all("x-add"), ["first", "second"]);
        assert!(all("x-gone").is_empty());
        assert_eq!(all("x-kept"), ["k"]);
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_refused_and_touching_names_the_first_owned_one() {
        for refused in ["content-length", "transfer-encoding", "connection", "host", "keep-alive", "upgrade", "te"] {
            let modifier = HeaderModifier::new().remove(HeaderName::from_bytes(refused.as_bytes()).unwrap());
            let err = ModifyRequestHeadersLayer::new(modifier.clone()).unwrap_err();
            assert_eq!(err.0, refused);
            assert!(ModifyResponseHeadersLayer::new(modifier).is_err(), "{refused}");
        }
        let owned = [name("x-forwarded-for"), name("x-user-id")];
        let modifier = HeaderModifier::new().set(name("x-a"), value("1")).add(name("x-user-id"), value("7"));
        assert_eq!(modifier.touching(&owned), Some(&owned[1]));
        assert_eq!(HeaderModifier::new().set(name("x-a"), value("1")).touching(&owned), None);
    }

    #[tokio::test]
    async fn the_inner_service_sees_the_request_changed_and_the_client_the_response() {
        let svc = ServiceBuilder::new()
            .layer(ModifyResponseHeadersLayer::new(HeaderModifier::new().remove(name("server"))).unwrap())
            .layer(ModifyRequestHeadersLayer::new(HeaderModifier::new().set(name("x-env"), value("prod"))).unwrap())
            .service_fn(|req: Request<()>| async move {
                let seen = req.headers().get_all("x-env").iter().count();
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("server", "backend/1.0")
                        .header("x-seen", seen.to_string())
                        .header("x-env", req.headers()["x-env"].clone())
                        .body(())
                        .unwrap(),
                )
            });
        let req = Request::get("/").header("x-env", "dev").header("x-env", "test").body(()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-seen"], "1", "a set header replaces every value the client sent");
        assert_eq!(res.headers()["x-env"], "prod");
        assert!(!res.headers().contains_key("server"));
    }
}

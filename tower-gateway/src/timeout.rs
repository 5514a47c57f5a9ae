//! Bound the wait for a response: the one timeout of this crate.
//!
//! [`TimeoutLayer`] answers a request whose inner service has not produced a
//! response head in time with `504` and a JSON body (`upstream_timeout`), and an
//! [`UpstreamError`] of kind [`Timeout`](UpstreamErrorKind::Timeout) in the
//! response's extensions. The inner future is dropped, which for [`Proxy`]
//! closes the upstream connection.
//!
//! Where it goes decides what it bounds. Just above [`Proxy`], under
//! [`RoundRobinLayer`](crate::RoundRobinLayer) and [`RetryLayer`](crate::RetryLayer),
//! it bounds **each attempt**: the balancer counts the 504 against the endpoint
//! (ejecting one that keeps timing out), and the retry layer retries it like any
//! 504 (idempotent requests only).
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_gateway::balance::Endpoints;
//! use tower_gateway::{Body, Proxy, RetryLayer, RetryPolicy, RoundRobinLayer, TimeoutLayer};
//!
//! let endpoints = Endpoints::new(["http://127.0.0.1:3001"]).unwrap();
//! let route = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::new()))
//!     .layer(RoundRobinLayer::new(endpoints))
//!     .layer(TimeoutLayer::new(Duration::from_secs(5))) // per attempt
//!     .service(Proxy::new());
//! # fn check<S: tower::Service<http::Request<Body>>>(_: &S) {}
//! # check(&route);
//! ```
//!
//! A request may carry its own bound: an [`AttemptTimeout`] in its extensions,
//! put there by a layer above (a route with a timeout of its own), is used
//! instead of the layer's.
//!
//! [`Proxy`]: crate::Proxy

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::{UpstreamError, UpstreamErrorKind};

/// A request's own timeout, used by [`Timeout`] instead of its own (a
/// per-route timeout over an upstream's stack shared by several routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeout(pub Duration);

/// Answers `504` when the inner service takes longer than a duration. See the
/// [module docs](self).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Answers `504` after `timeout` without a response head.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::new(inner, self.timeout)
    }
}

/// Answers `504` when `inner` takes longer than a duration. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    crate::inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Timeout<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let timeout = req.extensions().get::<AttemptTimeout>().map_or(self.timeout, |t| t.0);
        future::ResponseFuture { future: self.inner.call(req), sleep: tokio::time::sleep(timeout) }
    }
}

pub mod future {
    //! The future of [`Timeout`](super::Timeout).

    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::Response;
    use pin_project_lite::pin_project;
    use tokio::time::Sleep;

    use super::{UpstreamError, UpstreamErrorKind};
    use crate::body::ResponseBody;

    pin_project! {
        /// The response future of [`Timeout`](super::Timeout).
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            pub(super) future: F,
            #[pin]
            pub(super) sleep: Sleep,
        }
    }

    impl<F, B, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<ResponseBody<B>>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            if let Poll::Ready(result) = this.future.poll(cx) {
                return Poll::Ready(result.map(|response| response.map(ResponseBody::new)));
            }
            std::task::ready!(this.sleep.poll(cx));
            tracing::debug!("no response within the timeout");
            Poll::Ready(Ok(UpstreamError::new(UpstreamErrorKind::Timeout).into_response()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_is_a_504_and_a_quick_one_passes() {
        let svc = TimeoutLayer::new(Duration::from_secs(2)).layer(tower::service_fn(|req: Request<u64>| async move {
            tokio::time::sleep(Duration::from_secs(*req.body())).await;
            Ok::<_, Infallible>(Response::new(Bytes::from_static(b"done")))
        }));

        let quick = svc.clone().oneshot(Request::new(1)).await.unwrap();
        assert_eq!(quick.status(), http::StatusCode::OK);
        assert_eq!(quick.into_body().flat(), "done");

        let started = tokio::time::Instant::now();
        let slow = svc.oneshot(Request::new(60)).await.unwrap();
        assert_eq!(slow.status(), http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(slow.extensions().get::<UpstreamError>().unwrap().kind(), UpstreamErrorKind::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(String::from_utf8_lossy(&slow.into_body().flat()).contains("upstream_timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_with_its_own_timeout_is_bounded_by_it() {
        let svc = TimeoutLayer::new(Duration::from_secs(2)).layer(tower::service_fn(|req: Request<u64>| async move {
            tokio::time::sleep(Duration::from_secs(*req.body())).await;
            Ok::<_, Infallible>(Response::new(Bytes::from_static(b"done")))
        }));
        let with = |secs: u64, own: u64| {
            let mut req = Request::new(secs);
            req.extensions_mut().insert(AttemptTimeout(Duration::from_secs(own)));
            req
        };
        let started = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(with(5, 10)).await.unwrap().status(), http::StatusCode::OK, "a longer bound");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        assert_eq!(svc.oneshot(with(5, 1)).await.unwrap().status(), http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}

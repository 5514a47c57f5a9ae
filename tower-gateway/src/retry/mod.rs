//! Retries with exponential backoff, jitter and a budget, built on [`tower::retry`].
//!
//! [`RetryLayer`] sends a failed request again according to a [`RetryPolicy`]
//! (see there for what is retried and when). Placed above
//! [`RoundRobinLayer`](crate::balance::RoundRobinLayer), each retry goes to the
//! next endpoint.
//!
//! **Bodies.** A request body whose size is known and at most
//! [`max_replay_body`](RetryLayer::max_replay_body) (default 64 KiB) is read into
//! memory first so that it can be sent again byte for byte; a larger body, or one
//! of unknown length, is streamed through once and its request is never retried.
//! A body that breaks off while being read is answered `400` (`invalid_body`).
//! A gRPC call the policy may retry ([`RetryPolicy::retry_grpc`]) is read whole
//! whatever its length says (gRPC sends none), and past the bound is refused
//! `413` (`body_too_large`, RESOURCE_EXHAUSTED to a gRPC client).
//!
//! **Per-try timeout.** Put a [`TimeoutLayer`](crate::TimeoutLayer) under this
//! layer: every attempt passes through it, so each is bounded, and its `504` is
//! retried like any other (idempotent requests only).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower::retry::budget::TpsBudget;
//! use tower_gateway::retry::{RetryLayer, RetryPolicy};
//! use tower_gateway::{Body, Proxy, TimeoutLayer};
//!
//! let policy = RetryPolicy::new()
//!     .max_attempts(3)
//!     .backoff(Duration::from_millis(100), Duration::from_secs(1), 0.5)
//!     .unwrap()
//!     .budget(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(policy))
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)))
//!     .service(Proxy::new());
//! # fn check<S: tower::Service<http::Request<Body>>>(_: &S) {}
//! # check(&svc);
//! ```

mod body;
mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Limited};
use pin_project_lite::pin_project;
use tower::retry::Policy;
use tower_layer::Layer;
use tower_service::Service;

pub use self::body::ReplayBody;
use self::policy::GrpcRetry;
pub use self::policy::{Attempts, IDEMPOTENCY_KEY, RetryPolicy};
use crate::body::ResponseBody;
use crate::error::{BoxError, json_error};

/// Retries failed requests. See the [module docs](self).
///
/// Generic over the policy, as `tower::retry` is: [`RetryPolicy`] by default, or
/// any `tower::retry::Policy` over `Request<ReplayBody<B>>` (this layer still
/// buffers bodies so that the policy can clone requests).
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayer<P = RetryPolicy> {
    policy: P,
    max_replay_body: usize,
    /// The gRPC calls a [`RetryPolicy`] may retry, whose bodies are read whole.
    grpc: Option<Arc<GrpcRetry>>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new(RetryPolicy::default())
    }
}

impl<P: 'static> RetryLayer<P> {
    /// Retries according to `policy`, with a 64 KiB replay buffer.
    pub fn new(policy: P) -> Self {
        let grpc = (&policy as &dyn std::any::Any).downcast_ref::<RetryPolicy>().and_then(|p| p.grpc().cloned());
        Self { policy, max_replay_body: 64 * 1024, grpc }
    }
}

impl<P> RetryLayer<P> {
    /// Buffers request bodies up to `bytes` so they can be replayed.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.max_replay_body = bytes;
        self
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner: tower::retry::Retry::new(self.policy.clone(), inner),
            max_replay_body: self.max_replay_body,
            grpc: self.grpc.clone(),
        }
    }
}

/// Retries failed requests. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct Retry<S, P = RetryPolicy> {
    inner: tower::retry::Retry<P, S>,
    max_replay_body: usize,
    grpc: Option<Arc<GrpcRetry>>,
}

impl<S, P: Clone + 'static> Retry<S, P> {
    /// Wraps `inner`, retrying according to `policy`.
    pub fn new(inner: S, policy: P) -> Self {
        RetryLayer::new(policy).layer(inner)
    }

    /// A [`RetryLayer`] with `policy`.
    pub fn layer(policy: P) -> RetryLayer<P> {
        RetryLayer::new(policy)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

type TowerRetry<S, P> = tower::retry::Retry<P, S>;
type TowerFuture<S, B, P> = tower::retry::future::ResponseFuture<P, S, Request<ReplayBody<B>>>;

impl<S, P, B, RB> Service<Request<B>> for Retry<S, P>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    P: Policy<Request<ReplayBody<B>>, Response<RB>, S::Error> + Clone,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S, B, RB, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        if body.is_end_stream() {
            let req = Request::from_parts(parts, ReplayBody::buffered(Bytes::new()));
            return future::ResponseFuture::calling(self.inner.call(req));
        }
        // A gRPC call the policy may retry is read whole whatever its length
        // says (gRPC sends none): up to the bound, past which it is refused.
        let grpc =
            self.grpc.as_ref().is_some_and(|g| crate::grpc::is_grpc(&parts.headers) && g.takes(parts.uri.path()));
        let fits = grpc || body.size_hint().upper().is_some_and(|n| n <= self.max_replay_body as u64);
        if !fits {
            let req = Request::from_parts(parts, ReplayBody::streamed(body));
            return future::ResponseFuture::calling(self.inner.call(req));
        }
        // The ready service goes into the future; a fresh clone stays behind.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        future::ResponseFuture {
            state: future::State::Collecting {
                collect: Limited::new(body, self.max_replay_body).collect(),
                parts: Some(parts),
                service: Some(service),
            },
        }
    }
}

pub mod future {
    //! The response future of [`Retry`].

    #[allow(clippy::wildcard_imports)]
    use super::*;

    pin_project! {
        /// The response future of [`Retry`].
        pub struct ResponseFuture<S, B, RB, P = RetryPolicy>
        where
            S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
            P: Policy<Request<ReplayBody<B>>, Response<RB>, S::Error>,
            B: HttpBody,
            B::Error: Into<BoxError>,
            {
            #[pin]
            pub(super) state: State<S, B, RB, P>,
        }
    }

    pin_project! {
        #[project = StateProj]
        pub(super) enum State<S, B, RB, P>
        where
            S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
            P: Policy<Request<ReplayBody<B>>, Response<RB>, S::Error>,
            B: HttpBody,
            B::Error: Into<BoxError>,
            {
            Collecting {
                #[pin]
                collect: Collect<Limited<B>>,
                parts: Option<Parts>,
                service: Option<TowerRetry<S, P>>,
            },
            Calling { #[pin] future: TowerFuture<S, B, P> },
        }
    }

    impl<S, B, RB, P> ResponseFuture<S, B, RB, P>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
        P: Policy<Request<ReplayBody<B>>, Response<RB>, S::Error>,
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        pub(super) fn calling(future: TowerFuture<S, B, P>) -> Self {
            Self { state: State::Calling { future } }
        }
    }

    impl<S, B, RB, P> std::fmt::Debug for ResponseFuture<S, B, RB, P>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
        P: Policy<Request<ReplayBody<B>>, Response<RB>, S::Error>,
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ResponseFuture").finish_non_exhaustive()
        }
    }

    impl<S, B, RB, P> Future for ResponseFuture<S, B, RB, P>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
        P: Policy<Request<ReplayBody<B>>, Response<RB>, S::Error> + Clone,
        B: HttpBody<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        type Output = Result<Response<ResponseBody<RB>>, S::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut this = self.project();
            loop {
                match this.state.as_mut().project() {
                    StateProj::Collecting { collect, parts, service } => {
                        let body = match ready!(collect.poll(cx)) {
                            Ok(collected) => collected.to_bytes(),
                            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                                let message = "the request body is larger than the replay buffer of a retried call";
                                return Poll::Ready(Ok(json_error(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "body_too_large",
                                    message,
                                )));
                            }
                            Err(err) => {
                                tracing::debug!(%err, "request body could not be read");
                                let message = "the request body could not be read";
                                return Poll::Ready(Ok(json_error(StatusCode::BAD_REQUEST, "invalid_body", message)));
                            }
                        };
                        let req =
                            Request::from_parts(parts.take().expect("parts taken once"), ReplayBody::buffered(body));
                        let future = service.as_mut().expect("service taken once").call(req);
                        this.state.set(State::Calling { future });
                    }
                    StateProj::Calling { future } => {
                        return future.poll(cx).map(|result| result.map(|response| response.map(ResponseBody::new)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Per-key rate limits (GCRA), in this process or shared through Redis.
//!
//! A [`RateLimitLayer`] counts each request under a key (see [`key`]) against a
//! [`Limiter`]: a named [`Quota`] — a rate and a burst — decided by the generic
//! cell rate algorithm, which keeps one timestamp per key and refuses without
//! consuming anything. Requests over the limit never reach the inner service;
//! they get
//!
//! - `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up, never
//!   0) and `{"error":{"code":"rate_limited",..}}`, and a [`RateLimited`] in the
//!   response's extensions;
//!
//! and every response through the layer, admitted or not, carries the IETF
//! fields (draft-ietf-httpapi-ratelimit-headers), one member per limit it passed:
//! `RateLimit-Policy: "name";q=<burst>;w=<seconds for a full burst to return>`
//! and `RateLimit: "name";r=<remaining>;t=<seconds until all of it is back>`.
//!
//! **Where the state lives.** By default in this process ([`MemoryStore`]:
//! sharded, bounded, idle keys dropped first). With a shared [`Store`] —
//! `RedisStore` with the `redis` feature — every process using the same limit
//! name draws on one quota, decided atomically in the store on the store's clock.
//! A key this process already knows to be spent is refused without a round trip.
//! If the store fails or is slow past the store timeout, the limiter either
//! decides locally from the state it mirrored from the store's answers
//! ([`OnStoreError::FailOpen`], the default) or answers `503`
//! ([`OnStoreError::FailClosed`]), and leaves the store alone for a second before
//! asking again, so an outage costs requests no waiting.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::post};
//! use tower::ServiceBuilder;
//! use tower_gateway::ClientAddrLayer;
//! use tower_gateway::rate_limit::key::{ClientIp, JsonField};
//! use tower_gateway::rate_limit::{Limiter, Quota, RateLimitLayer, ReadJsonLayer};
//!
//! let per_address = Limiter::new("login-ip", Quota::per_minute(20));
//! let per_account = Limiter::new("login-account", Quota::per_minute(5));
//! let app: Router = Router::new().route(
//!     "/login",
//!     post(|| async { "welcome" }).layer(
//!         ServiceBuilder::new()
//!             .layer(RateLimitLayer::new(per_address, ClientIp::new()))
//!             .layer(ReadJsonLayer::new(["email"]))
//!             .layer(RateLimitLayer::new(per_account, JsonField::new("email"))),
//!     ),
//! );
//! // Serve it with `into_make_service_with_connect_info::<SocketAddr>()` and put a
//! // `PeerAddr` (and `ClientAddrLayer` for trusted proxies) in front, so
//! // `ClientIp` knows the client.
//! # let _ = (app, ClientAddrLayer::new());
//! ```
//!
//! Layers stack: each limit is decided in turn, and a request refused by an inner
//! limit has already counted against the outer ones — put the limit that should
//! not be spent by refused requests innermost.
#![cfg_attr(feature = "redis", doc = "\n\nWith the `redis` feature: [`RedisStore`].")]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::{BoxError, json_error};

mod gcra;
mod json;
pub mod key;
mod limiter;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use self::gcra::{Decision, InvalidQuota, Quota};
pub use self::json::{JsonFields, ReadJson, ReadJsonLayer};
pub use self::key::KeyExtractor;
pub use self::limiter::{Check, InvalidName, LimitStats, Limiter, LimiterBuilder, OnStoreError, Verdict};
pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};

/// A boxed future, as the [`Store`] trait returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A shared place to keep limits: one GCRA decision per call, made atomically
/// where the state lives (see [`Quota::decide`]).
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// Decides one request for `key` (already prefixed with the limit's name).
    fn decide<'a>(&'a self, key: &'a str, quota: &'a Quota) -> BoxFuture<'a, Result<Decision, StoreError>>;
}

/// A store that could not decide.
#[derive(Debug)]
pub struct StoreError(BoxError);

impl StoreError {
    /// Wraps the cause.
    pub fn new(cause: impl Into<BoxError>) -> Self {
        Self(cause.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate-limit store: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// In the extensions of a response the layer refused: which limit, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// The limit's name.
    pub limit: Arc<str>,
    /// `true` for a `429`, `false` for a `503` because the store failed closed.
    pub over_limit: bool,
}

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The key of requests for which the extractor finds none: they share one bucket.
const NO_KEY: &str = "-";

/// Limits requests per key. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimitLayer<K> {
    limiter: Limiter,
    key: K,
}

impl<K> RateLimitLayer<K> {
    /// Counts each request under the key `key` finds, against `limiter`.
    pub fn new(limiter: Limiter, key: K) -> Self {
        Self { limiter, key }
    }
}

impl<S, K: Clone> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, limiter: self.limiter.clone(), key: self.key.clone() }
    }
}

/// Limits requests per key. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct RateLimit<S, K> {
    inner: S,
    limiter: Limiter,
    key: K,
}

impl<S, K> RateLimit<S, K> {
    /// Wraps `inner`.
    pub fn new(inner: S, limiter: Limiter, key: K) -> Self {
        Self { inner, limiter, key }
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    crate::inner_service_accessors!();
}

/// The `RateLimit` member for a decision.
fn state_field(limiter: &Limiter, decision: &Decision) -> HeaderValue {
    let value = format!("\"{}\";r={};t={}", limiter.name(), decision.remaining, decision.reset_secs());
    HeaderValue::try_from(value).expect("names are checked to be header-safe")
}

/// The `RateLimit-Policy` and `RateLimit` members an admitted response carries.
fn fields(limiter: &Limiter, decision: &Decision) -> (HeaderValue, HeaderValue) {
    (limiter.policy().clone(), state_field(limiter, decision))
}

fn refused<B: From<Bytes>>(limiter: &Limiter, verdict: Verdict) -> Response<B> {
    let (mut response, over_limit) = match verdict {
        Verdict::Limited(decision) => {
            let secs = decision.retry_after_secs();
            let message = format!("too many requests; try again in {secs} s");
            let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", &message);
            let headers = response.headers_mut();
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            headers.append(RATELIMIT_POLICY.clone(), limiter.policy().clone());
            headers.append(RATELIMIT.clone(), state_field(limiter, &decision));
            (response, true)
        }
        _ => {
            let message = "the rate limit cannot be checked right now; try again";
            let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable", message);
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            (response, false)
        }
    };
    response.extensions_mut().insert(RateLimited { limit: limiter.name().clone(), over_limit });
    response
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor<ReqBody>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S, Request<ReqBody>, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let key = self.key.extract(&req);
        // The decision's span (see `crate::telemetry`): ended before the request goes on.
        let span = tracing::debug_span!(
            target: "tower_gateway::rate_limit",
            "rate limit",
            otel.name = "rate limit",
            otel.kind = "internal",
            ratelimit.limit = &**self.limiter.name(),
            ratelimit.store = tracing::field::Empty,
            ratelimit.outcome = tracing::field::Empty,
        );
        let check = span.in_scope(|| self.limiter.check(key.as_deref().unwrap_or(NO_KEY)));
        let state = match check.into_ready() {
            Ok(verdict) => {
                span.record("ratelimit.store", "local");
                record(&span, &verdict);
                match verdict {
                    Verdict::Allowed(decision) => future::State::Calling {
                        future: self.inner.call(req),
                        fields: Some(fields(&self.limiter, &decision)),
                    },
                    verdict => future::State::Refused { response: Some(refused(&self.limiter, verdict)) },
                }
            }
            Err(check) => {
                span.record("ratelimit.store", "asked");
                // The ready service goes into the future; a fresh clone stays behind.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let limiter = self.limiter.clone();
                future::State::Deciding { check, request: Some(req), inner: Some(inner), limiter, span }
            }
        };
        future::ResponseFuture { state }
    }
}

/// Records a decision on its span.
fn record(span: &tracing::Span, verdict: &Verdict) {
    let outcome = match verdict {
        Verdict::Allowed(_) => "allowed",
        Verdict::Limited(_) => "limited",
        Verdict::Unavailable => "unavailable",
    };
    span.record("ratelimit.outcome", outcome);
}

pub mod future {
    //! The response futures of [`RateLimit`] and [`ReadJson`].

    pub use super::json::ResponseFuture as ReadJsonFuture;

    #[allow(clippy::wildcard_imports)]
    use super::*;

    pin_project! {
        /// The response future of [`RateLimit`].
        pub struct ResponseFuture<S, Req, B>
        where
            S: Service<Req>,
        {
            #[pin]
            pub(super) state: State<S, Req, B>,
        }
    }

    pin_project! {
        #[project = StateProj]
        pub(super) enum State<S, Req, B>
        where
            S: Service<Req>,
        {
            Deciding {
                check: BoxFuture<'static, Verdict>,
                request: Option<Req>,
                inner: Option<S>,
                limiter: Limiter,
                span: tracing::Span,
            },
            Calling {
                #[pin]
                future: S::Future,
                fields: Option<(HeaderValue, HeaderValue)>,
            },
            Refused { response: Option<Response<ResponseBody<B>>> },
        }
    }

    impl<S: Service<Req>, Req, B> fmt::Debug for ResponseFuture<S, Req, B> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ResponseFuture").finish_non_exhaustive()
        }
    }

    impl<S, ReqBody, ResBody> Future for ResponseFuture<S, Request<ReqBody>, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut this = self.project();
            loop {
                match this.state.as_mut().project() {
                    StateProj::Deciding { check, request, inner, limiter, span } => {
                        let verdict = ready!(span.in_scope(|| check.as_mut().poll(cx)));
                        record(span, &verdict);
                        let next = match verdict {
                            Verdict::Allowed(decision) => {
                                let req = request.take().expect("request taken once");
                                let future = inner.as_mut().expect("service taken once").call(req);
                                State::Calling { future, fields: Some(fields(limiter, &decision)) }
                            }
                            refusal => State::Refused { response: Some(refused(limiter, refusal)) },
                        };
                        this.state.set(next);
                    }
                    StateProj::Calling { future, fields } => {
                        let mut response = ready!(future.poll(cx))?;
                        if let Some((policy, state)) = fields.take() {
                            response.headers_mut().append(RATELIMIT_POLICY.clone(), policy);
                            response.headers_mut().append(RATELIMIT.clone(), state);
                        }
                        return Poll::Ready(Ok(response.map(ResponseBody::new)));
                    }
                    StateProj::Refused { response } => {
                        return Poll::Ready(Ok(response.take().expect("polled after completion")));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

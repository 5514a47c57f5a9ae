//! Round-robin balancing over a shared, replaceable set of endpoints, with passive
//! health checks.
//!
//! [`RoundRobin`] sets each request's destination (scheme and authority; the path
//! and query are kept) to the next endpoint of an [`Endpoints`] set. Picking is
//! lock-free — one atomic increment — and fair: `N` requests over `k` healthy
//! endpoints give each `N/k` requests, give or take one.
//!
//! **Passive health.** When the inner service answers with an
//! [`UpstreamError`] of kind [`Connect`](UpstreamErrorKind::Connect) (as
//! [`Proxy`](crate::Proxy) does when a connection is refused), the endpoint's
//! consecutive-failure count goes up; at [`eject_after`](RoundRobinLayer::eject_after)
//! failures (default 1) it is skipped for [`cool_down`](RoundRobinLayer::cool_down)
//! (default 10 s) and then comes back by itself. An endpoint that accepts
//! connections but fails otherwise — a timeout, a reset (any [`UpstreamError`]),
//! or a `502`/`504` of its own — is ejected the same way after [`eject_after_gateway_failures`](RoundRobinLayer::eject_after_gateway_failures)
//! in a row (default 5, Envoy's `consecutive_gateway_failure`), but never so
//! many that more than [`max_ejected_percent`](RoundRobinLayer::max_ejected_percent)
//! (default 50) of the set is out. If every endpoint is ejected,
//! requests are still sent round robin over all of them: a gateway must never need
//! a restart to recover.
//!
//! A `503` the endpoint answers itself is the application's word (busy, a
//! dependency down for this request), not the endpoint's failure: it is not
//! counted, so a client that can make a replica answer `503` cannot eject it.
//!
//! An empty set answers `503` with the code `no_endpoint`. If the request has no
//! `Host` header but its URI has an authority (HTTP/2), that authority is kept as
//! the `Host` header before the URI is rewritten.
//!
//! The chosen endpoint is put in the response's extensions as [`ChosenEndpoint`],
//! for access logs and metrics.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::Request;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::balance::{Endpoints, RoundRobinLayer};
//! use tower_gateway::{Body, Proxy};
//!
//! let endpoints = Endpoints::new(["http://127.0.0.1:3001", "http://127.0.0.1:3003"]).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(RoundRobinLayer::new(endpoints.clone()).cool_down(Duration::from_secs(5)))
//!     .service(Proxy::<Body>::new());
//!
//! // Later, e.g. after a DNS lookup, while `svc` keeps serving:
//! endpoints.replace(["http://127.0.0.1:3003", "http://127.0.0.1:3007"]).unwrap();
//! # let _ = svc;
//! ```

pub mod dns;
mod endpoints;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use http::{HeaderValue, Request, Response, Uri, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

pub use self::endpoints::{Endpoint, Endpoints, InvalidEndpoint};
use crate::body::ResponseBody;
use crate::error::{UpstreamError, UpstreamErrorKind};

/// The endpoint a request was sent to, in the response's extensions.
#[derive(Debug, Clone)]
pub struct ChosenEndpoint(pub Arc<Endpoint>);

#[derive(Debug, Clone, Copy)]
struct Health {
    eject_after: u32,
    eject_after_gateway_failures: u32,
    max_ejected_percent: u8,
    cool_down: Duration,
}

/// Sends each request to the next endpoint of a shared set. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct RoundRobinLayer {
    endpoints: Endpoints,
    health: Health,
}

impl RoundRobinLayer {
    /// Balances over `endpoints` (a handle: keep a clone to replace the set later).
    pub fn new(endpoints: Endpoints) -> Self {
        let health = Health {
            eject_after: 1,
            eject_after_gateway_failures: 5,
            max_ejected_percent: 50,
            cool_down: Duration::from_secs(10),
        };
        Self { endpoints, health }
    }

    /// Consecutive connection failures before an endpoint is ejected (at least 1).
    pub fn eject_after(mut self, failures: u32) -> Self {
        self.health.eject_after = failures.max(1);
        self
    }

    /// Consecutive gateway failures (timeouts, resets, `502`/`504`) before
    /// an endpoint is ejected (at least 1; default 5).
    pub fn eject_after_gateway_failures(mut self, failures: u32) -> Self {
        self.health.eject_after_gateway_failures = failures.max(1);
        self
    }

    /// The most of the set, in percent, that gateway failures may eject at once
    /// (default 50: with two endpoints, one).
    pub fn max_ejected_percent(mut self, percent: u8) -> Self {
        self.health.max_ejected_percent = percent.min(100);
        self
    }

    /// How long an ejected endpoint is skipped.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.health.cool_down = cool_down;
        self
    }

    /// The endpoint set this layer balances over.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }
}

impl<S> Layer<S> for RoundRobinLayer {
    type Service = RoundRobin<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RoundRobin { inner, endpoints: self.endpoints.clone(), health: self.health }
    }
}

/// Sends each request to the next endpoint of a shared set. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct RoundRobin<S> {
    inner: S,
    endpoints: Endpoints,
    health: Health,
}

impl<S> RoundRobin<S> {
    /// Wraps `inner`, balancing over `endpoints` with the default health settings.
    pub fn new(inner: S, endpoints: Endpoints) -> Self {
        RoundRobinLayer::new(endpoints).layer(inner)
    }

    /// A [`RoundRobinLayer`] over `endpoints`.
    pub fn layer(endpoints: Endpoints) -> RoundRobinLayer {
        RoundRobinLayer::new(endpoints)
    }

    /// The endpoint set.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    crate::inner_service_accessors!();
}

/// The request's URI with its scheme and authority set to `endpoint`'s.
fn destination(uri: Uri, endpoint: &Endpoint) -> Uri {
    // Taken, not cloned: a clone of a freshly parsed URI's bytes allocates.
    let mut parts = uri.into_parts();
    parts.scheme = Some(endpoint.scheme().clone());
    parts.authority = Some(endpoint.authority().clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).expect("scheme, authority and path make a valid URI")
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RoundRobin<S>
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
        let Some(endpoint) = self.endpoints.next() else {
            let response = UpstreamError::new(UpstreamErrorKind::NoEndpoint).into_response();
            return future::ResponseFuture { state: future::State::NoEndpoint { response: Some(response) } };
        };
        if !req.headers().contains_key(header::HOST)
            && let Some(host) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let uri = std::mem::take(req.uri_mut());
        *req.uri_mut() = destination(uri, &endpoint);
        let future = self.inner.call(req);
        future::ResponseFuture {
            state: future::State::Called { future, endpoint, endpoints: self.endpoints.clone(), health: self.health },
        }
    }
}

pub mod future {
    //! The response future of [`RoundRobin`].

    #[allow(clippy::wildcard_imports)]
    use super::*;

    pin_project! {
        /// The response future of [`RoundRobin`].
        #[derive(Debug)]
        pub struct ResponseFuture<F, B> {
            #[pin]
            pub(super) state: State<F, B>,
        }
    }

    pin_project! {
        #[project = StateProj]
        #[derive(Debug)]
        pub(super) enum State<F, B> {
            Called {
                #[pin]
                future: F,
                endpoint: Arc<Endpoint>,
                endpoints: Endpoints,
                health: Health,
            },
            NoEndpoint { response: Option<Response<ResponseBody<B>>> },
        }
    }

    impl<F, B, E> Future for ResponseFuture<F, B>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<ResponseBody<B>>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project().state.project() {
                StateProj::Called { future, endpoint, endpoints, health } => {
                    let mut result = std::task::ready!(future.poll(cx));
                    if let Ok(response) = &mut result {
                        let kind = response.extensions().get::<UpstreamError>().map(UpstreamError::kind);
                        let gateway_failure = kind.is_some()
                            || matches!(response.status(), StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT);
                        if kind == Some(UpstreamErrorKind::Connect) {
                            if endpoints.record_failure(endpoint, health.eject_after, health.cool_down) {
                                tracing::warn!(endpoint = %endpoint, cool_down = ?health.cool_down, "endpoint ejected");
                            }
                        } else if gateway_failure {
                            let (after, share) = (health.eject_after_gateway_failures, health.max_ejected_percent);
                            if endpoints.record_gateway_failure(endpoint, after, share, health.cool_down) {
                                let status = response.status().as_u16();
                                tracing::warn!(endpoint = %endpoint, status, cool_down = ?health.cool_down, "endpoint ejected");
                            }
                        } else {
                            endpoints.record_success(endpoint);
                        }
                        response.extensions_mut().insert(ChosenEndpoint(endpoint.clone()));
                    }
                    Poll::Ready(result.map(|response| response.map(ResponseBody::new)))
                }
                StateProj::NoEndpoint { response } => {
                    Poll::Ready(Ok(response.take().expect("polled after completion")))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use bytes::Bytes;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    /// An inner service that answers with the URI it was sent, and refuses
    /// connections to the authorities in `down`.
    fn echo(
        down: &'static [&'static str],
    ) -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future: Send> + Clone + Send {
        tower::service_fn(move |req: Request<()>| async move {
            let authority = req.uri().authority().unwrap().to_string();
            if down.contains(&authority.as_str()) {
                return Ok(UpstreamError::new(UpstreamErrorKind::Connect).into_response());
            }
            Ok::<_, Infallible>(Response::new(Bytes::from(req.uri().to_string())))
        })
    }

    async fn send<S>(svc: &mut S, path: &str) -> Response<Bytes>
    where
        S: Service<Request<()>, Response = Response<ResponseBody<Bytes>>, Error = Infallible>,
    {
        let response = svc.ready().await.unwrap().call(Request::get(path).body(()).unwrap()).await.unwrap();
        response.map(|body| body.into_inner().unwrap_or_else(|answered| answered))
    }

    #[tokio::test]
    async fn rewrites_destination_and_keeps_path_and_query() {
        let endpoints = Endpoints::new(["http://a:1", "http://b:2"]).unwrap();
        let mut svc = ServiceBuilder::new().layer(RoundRobinLayer::new(endpoints)).service(echo(&[]));
        let first = send(&mut svc, "/item?x=1").await;
        assert_eq!(first.body(), "http://a:1/item?x=1");
        assert_eq!(first.extensions().get::<ChosenEndpoint>().unwrap().0.authority(), "a:1");
        assert_eq!(send(&mut svc, "/item?x=1").await.body(), "http://b:2/item?x=1");
    }

    #[tokio::test]
    async fn keeps_http2_authority_as_host() {
        let endpoints = Endpoints::new(["http://a:1"]).unwrap();
        let svc =
            ServiceBuilder::new().layer(RoundRobinLayer::new(endpoints)).service_fn(|req: Request<()>| async move {
                Ok::<_, Infallible>(Response::new(Bytes::from(
                    req.headers()[header::HOST].to_str().unwrap().to_owned(),
                )))
            });
        let req = Request::get("http://gateway.example/x").body(()).unwrap();
        assert_eq!(svc.oneshot(req).await.unwrap().into_body().flat(), "gateway.example");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fair_under_concurrent_calls() {
        let endpoints = Endpoints::new(["http://a:1", "http://b:1", "http://c:1"]).unwrap();
        let svc = ServiceBuilder::new().layer(RoundRobinLayer::new(endpoints)).service(echo(&[]));
        let n = 1_000;
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let res = svc.oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
                    res.extensions().get::<ChosenEndpoint>().unwrap().0.authority().to_string()
                })
            })
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for task in tasks {
            *counts.entry(task.await.unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        for (endpoint, count) in counts {
            assert!(count.abs_diff(n / 3) <= 1, "{endpoint} got {count} of {n}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_refusing_endpoint_and_takes_it_back_after_cool_down() {
        let endpoints = Endpoints::new(["http://a:1", "http://down:1", "http://c:1"]).unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(RoundRobinLayer::new(endpoints.clone()).cool_down(Duration::from_secs(5)))
            .service(echo(&["down:1"]));
        let mut seen = Vec::new();
        for _ in 0..7 {
            let res = send(&mut svc, "/").await;
            seen.push(res.extensions().get::<ChosenEndpoint>().unwrap().0.authority().to_string());
        }
        // One refusal, then skipped.
        assert_eq!(seen.iter().filter(|a| *a == "down:1").count(), 1, "{seen:?}");
        assert_eq!(endpoints.ejected(), 1);

        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(endpoints.ejected(), 1, "still cooling down");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(endpoints.ejected(), 0, "back by itself");
        let tried: Vec<_> = futures_collect(&mut svc, 3).await;
        assert!(tried.iter().any(|a| a == "down:1"), "{tried:?}");
    }

    async fn futures_collect<S>(svc: &mut S, n: usize) -> Vec<String>
    where
        S: Service<Request<()>, Response = Response<ResponseBody<Bytes>>, Error = Infallible>,
    {
        let mut out = Vec::new();
        for _ in 0..n {
            let res = send(svc, "/").await;
            out.push(res.extensions().get::<ChosenEndpoint>().unwrap().0.authority().to_string());
        }
        out
    }

    /// Answers like an endpoint that accepts connections but fails: `slow` ones
    /// time out (504), `broken` ones answer 502 themselves.
    fn failing(
        slow: &'static [&'static str],
        broken: &'static [&'static str],
    ) -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future: Send> + Clone + Send {
        tower::service_fn(move |req: Request<()>| async move {
            let authority = req.uri().authority().unwrap().to_string();
            if slow.contains(&authority.as_str()) {
                return Ok(UpstreamError::new(UpstreamErrorKind::Timeout).into_response());
            }
            let mut res = Response::new(Bytes::from(authority.clone()));
            if broken.contains(&authority.as_str()) {
                *res.status_mut() = StatusCode::BAD_GATEWAY;
            }
            Ok::<_, Infallible>(res)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_an_endpoint_that_times_out_or_fails_in_a_row() {
        let endpoints = Endpoints::new(["http://a:1", "http://slow:1", "http://c:1", "http://broken:1"]).unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(RoundRobinLayer::new(endpoints.clone()).eject_after_gateway_failures(3))
            .service(failing(&["slow:1"], &["broken:1"]));
        let tried = futures_collect(&mut svc, 40).await;
        for bad in ["slow:1", "broken:1"] {
            assert_eq!(tried.iter().filter(|a| *a == bad).count(), 3, "three in a row, then out: {tried:?}");
        }
        assert_eq!(endpoints.ejected(), 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(endpoints.ejected(), 0, "back after the cool-down");
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_failures_never_eject_more_than_the_share() {
        // Both endpoints failing: at most half of them (one) is ejected, so the
        // other keeps taking requests rather than the whole set going dark.
        let endpoints = Endpoints::new(["http://a:1", "http://b:1"]).unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(RoundRobinLayer::new(endpoints.clone()).eject_after_gateway_failures(2))
            .service(failing(&["a:1"], &["b:1"]));
        let tried = futures_collect(&mut svc, 20).await;
        assert_eq!(endpoints.ejected(), 1, "{tried:?}");
        // A success in between starts the count over.
        let endpoints = Endpoints::new(["http://a:1", "http://b:1", "http://c:1", "http://d:1"]).unwrap();
        let mut svc = ServiceBuilder::new()
            .layer(RoundRobinLayer::new(endpoints.clone()).eject_after_gateway_failures(2).max_ejected_percent(100))
            .service(failing(&[], &[]));
        futures_collect(&mut svc, 20).await;
        assert_eq!(endpoints.ejected(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_answering_its_own_503_is_not_ejected() {
        let endpoints = Endpoints::new(["http://a:1", "http://busy:1"]).unwrap();
        let busy = tower::service_fn(|req: Request<()>| async move {
            let mut res = Response::new(Bytes::new());
            if req.uri().authority().unwrap().as_str() == "busy:1" {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(res)
        });
        let mut svc = ServiceBuilder::new()
            .layer(RoundRobinLayer::new(endpoints.clone()).eject_after_gateway_failures(2))
            .service(busy);
        let tried = futures_collect(&mut svc, 20).await;
        assert_eq!(endpoints.ejected(), 0, "{tried:?}");
        assert_eq!(tried.iter().filter(|a| *a == "busy:1").count(), 10, "still in the rotation");
    }

    #[tokio::test]
    async fn all_ejected_still_reaches_an_endpoint() {
        let endpoints = Endpoints::new(["http://a:1", "http://b:1"]).unwrap();
        let mut svc =
            ServiceBuilder::new().layer(RoundRobinLayer::new(endpoints.clone())).service(echo(&["a:1", "b:1"]));
        for _ in 0..4 {
            let res = send(&mut svc, "/").await;
            assert_eq!(res.extensions().get::<UpstreamError>().unwrap().kind(), UpstreamErrorKind::Connect);
        }
        assert_eq!(endpoints.ejected(), 2);
    }

    #[tokio::test]
    async fn empty_set_answers_503_then_recovers_on_replace() {
        let endpoints = Endpoints::new(Vec::<&str>::new()).unwrap();
        let mut svc = ServiceBuilder::new().layer(RoundRobinLayer::new(endpoints.clone())).service(echo(&[]));
        let res = send(&mut svc, "/").await;
        assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["error"]["code"], "no_endpoint");
        endpoints.replace(["http://a:1"]).unwrap();
        assert_eq!(send(&mut svc, "/x").await.body(), "http://a:1/x");
    }

    #[tokio::test]
    async fn replaced_set_is_used_by_running_service() {
        let endpoints = Endpoints::new(["http://a:1"]).unwrap();
        let mut svc = ServiceBuilder::new().layer(RoundRobinLayer::new(endpoints.clone())).service(echo(&[]));
        assert_eq!(send(&mut svc, "/").await.body(), "http://a:1/");
        endpoints.replace(["http://b:1"]).unwrap();
        assert_eq!(send(&mut svc, "/").await.body(), "http://b:1/");
    }
}

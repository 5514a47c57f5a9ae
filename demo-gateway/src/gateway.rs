//! The gateway service: routes by longest prefix to one tower-gateway stack per
//! route, answers `/healthz`, `/readyz` and `/metrics`, and counts everything.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::util::{Either, Oneshot};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::balance::{ChosenEndpoint, Endpoints};
use tower_gateway::error::{UpstreamError, json_error};
use tower_gateway::retry::{Attempts, ReplayBody};
use tower_gateway::{
    Body, Proxy, Retry, RetryLayer, RetryPolicy, RoundRobin, RoundRobinLayer, StripPrefix, StripPrefixLayer,
};
use tower_gateway_auth::{Authenticator, JwtAuth, JwtAuthLayer, Rejection};

use crate::config::{Config, ConfigError, RouteConfig};
use crate::metrics::{Metrics, Observed, RouteMetrics};

/// The request body the gateway receives (after tower-http's body limit).
pub type GatewayBody = tower_http::body::Limited<hyper::body::Incoming>;

type Upstream<B> = Retry<RoundRobin<Proxy<ReplayBody<B>>>>;
type RouteService<B> = StripPrefix<Either<JwtAuth<Upstream<B>>, Upstream<B>>>;

/// The name of the route that answered, in the response's extensions (for access logs).
#[derive(Debug, Clone)]
pub struct RouteName(pub Arc<str>);

struct Route<B> {
    prefix: Arc<str>,
    svc: RouteService<B>,
    endpoints: Endpoints,
    auth: bool,
    metrics: RouteMetrics,
}

struct Inner<B> {
    routes: Vec<Route<B>>,
    limit: Arc<Semaphore>,
    metrics: Metrics,
    auth: Option<Authenticator>,
    background: Vec<tokio::task::AbortHandle>,
}

impl<B> Drop for Inner<B> {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

/// The gateway: every route's stack, behind one `Service`. Cheap to clone.
pub struct Gateway<B = GatewayBody> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Gateway<B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<B> std::fmt::Debug for Gateway<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.inner.routes.iter().map(|r| &r.prefix).collect::<Vec<_>>())
            .finish()
    }
}

/// Builds the authenticator routes with `auth = true` use, from the configuration.
pub fn authenticator(config: &Config) -> Result<Authenticator, ConfigError> {
    let jwt = &config.jwt;
    let key = if let Some(path) = &jwt.secret_file {
        let secret = demo_services::jwt::read_secret_file(path)
            .map_err(|e| ConfigError::new("jwt.secret_file", format!("{}: {e}", path.display())))?;
        tower_gateway_auth::Key::hs256(&secret).map_err(|e| ConfigError::new("jwt.secret_file", e))?
    } else if let Some(secret) = &jwt.secret {
        tower_gateway_auth::Key::hs256(secret.as_bytes()).map_err(|e| ConfigError::new("jwt.secret", e))?
    } else if let Some(path) = &jwt.public_key_file {
        let algorithm: tower_gateway_auth::Algorithm = jwt
            .algorithm
            .as_deref()
            .ok_or_else(|| ConfigError::new("jwt.algorithm", "required with jwt.public_key_file"))?
            .parse()
            .map_err(|e| ConfigError::new("jwt.algorithm", e))?;
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::new("jwt.public_key_file", format!("{}: {e}", path.display())))?;
        tower_gateway_auth::Key::public_pem(algorithm, &pem).map_err(|e| ConfigError::new("jwt.public_key_file", e))?
    } else {
        return Err(ConfigError::new("jwt.secret_file", "no JWT key is configured (set JWT_SECRET_FILE)"));
    };
    let store: Arc<dyn tower_gateway_auth::TokenStore> = match &config.redis_url {
        Some(url) => {
            Arc::new(tower_gateway_auth::RedisStore::new(url.clone()).map_err(|e| ConfigError::new("redis_url", e))?)
        }
        None => Arc::new(tower_gateway_auth::MemoryStore::new()),
    };
    let mut builder = Authenticator::builder(key)
        .store(store)
        .cache_bound(Duration::from_millis(jwt.cache_bound_ms))
        .fail_open(jwt.fail_open);
    if let Some(issuer) = &jwt.issuer {
        builder = builder.issuer(issuer.clone());
    }
    if let Some(audience) = &jwt.audience {
        builder = builder.audience(audience.clone());
    }
    builder.build().map_err(|e| ConfigError::new("jwt", e))
}

fn route_service<B>(
    route: &RouteConfig,
    endpoints: Endpoints,
    auth: Option<&Authenticator>,
) -> Result<RouteService<B>, ConfigError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_gateway::error::BoxError>,
{
    let retry = &route.retry;
    let policy = RetryPolicy::new()
        .max_attempts(retry.attempts)
        .backoff(Duration::from_millis(retry.backoff_ms), Duration::from_millis(retry.max_backoff_ms), retry.jitter)
        .map_err(|e| ConfigError::new("retry", e))?;
    let mut retry_layer = RetryLayer::new(policy).max_replay_body(retry.max_replay_body_bytes);
    if retry.per_try_timeout_ms > 0 {
        retry_layer = retry_layer.per_try_timeout(Duration::from_millis(retry.per_try_timeout_ms));
    }
    let proxy = Proxy::builder()
        .connect_timeout(Duration::from_millis(route.connect_timeout_ms))
        .timeout(Duration::from_millis(route.timeout_ms))
        .build();
    Ok(ServiceBuilder::new()
        .layer(StripPrefixLayer::try_new(&route.prefix).map_err(|e| ConfigError::new("prefix", e))?)
        .option_layer(if route.auth { auth.map(|a| JwtAuthLayer::new(a.clone())) } else { None })
        .layer(retry_layer)
        .layer(
            RoundRobinLayer::new(endpoints)
                .eject_after(route.eject_after)
                .cool_down(Duration::from_millis(route.cool_down_ms)),
        )
        .service(proxy))
}

impl<B> Gateway<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tower_gateway::error::BoxError>,
{
    /// Builds the gateway of `config`. Routes with `auth = true` use `auth`, or one
    /// built from the configuration. DNS routes start resolving in the background
    /// (and stop when the last clone of the gateway is dropped).
    pub async fn build(config: &Config, auth: Option<Authenticator>) -> Result<Self, ConfigError> {
        config.validate()?;
        let auth = match auth {
            Some(auth) => Some(auth),
            None if config.routes.iter().any(|r| r.auth) => Some(authenticator(config)?),
            None => None,
        };
        let metrics = Metrics::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut background = Vec::new();
        for (i, route) in config.routes.iter().enumerate() {
            let at = |e: ConfigError| ConfigError::new(format!("routes[{i}].{}", e.field), e.message);
            let endpoints = match &route.dns {
                Some(name) => {
                    let endpoints = Endpoints::new(Vec::<String>::new())
                        .map_err(|e| ConfigError::new(format!("routes[{i}].dns"), e))?;
                    if let Err(err) = tower_gateway::balance::dns::resolve(name, &endpoints).await {
                        tracing::warn!(%name, %err, "no endpoints from DNS yet");
                    }
                    let every = Duration::from_millis(route.dns_refresh_ms);
                    let task = tokio::spawn(tower_gateway::balance::dns::watch(name.clone(), endpoints.clone(), every));
                    background.push(task.abort_handle());
                    endpoints
                }
                None => Endpoints::new(&route.endpoints)
                    .map_err(|e| ConfigError::new(format!("routes[{i}].endpoints"), e))?,
            };
            let prefix: Arc<str> = route.prefix.trim_end_matches('/').into();
            routes.push(Route {
                svc: route_service(route, endpoints.clone(), auth.as_ref()).map_err(at)?,
                metrics: metrics.route(&prefix),
                prefix,
                endpoints,
                auth: route.auth,
            });
        }
        // Longest prefix first, so that `/api/users/admin` wins over `/api/users`.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self {
            inner: Arc::new(Inner {
                routes,
                limit: Arc::new(Semaphore::new(config.max_concurrent_requests)),
                metrics,
                auth,
                background,
            }),
        })
    }
}

impl<B> Gateway<B> {
    /// The endpoint set of the route with `prefix`.
    pub fn endpoints(&self, prefix: &str) -> Option<&Endpoints> {
        self.inner.routes.iter().find(|r| &*r.prefix == prefix).map(|r| &r.endpoints)
    }

    /// The authenticator of the routes with auth.
    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.inner.auth.as_ref()
    }

    /// Ready when every route has an endpoint and, if a route needs it, the token store answers.
    pub async fn ready(&self) -> Result<(), String> {
        if let Some(route) = self.inner.routes.iter().find(|r| r.endpoints.is_empty()) {
            return Err(format!("route {} has no endpoint", route.prefix));
        }
        if self.inner.routes.iter().any(|r| r.auth)
            && let Some(auth) = &self.inner.auth
        {
            auth.ready().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn route_for(&self, path: &str) -> Option<&Route<B>> {
        self.inner
            .routes
            .iter()
            .find(|r| path.strip_prefix(&*r.prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
    }

    fn metrics_text(&self) -> String {
        self.inner.metrics.encode(self.inner.routes.iter().map(|r| (&r.prefix, &r.endpoints)))
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl<B> Service<Request<B>> for Gateway<B>
where
    B: Send + 'static,
    RouteService<B>: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each request drives its own route's readiness (a `Oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ready = |response| ResponseFuture { state: State::Ready { response: Some(response) } };
        if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            return ready(json_error(StatusCode::BAD_REQUEST, "missing_host", "HTTP/1.1 requests need a Host header"));
        }
        let path = req.uri().path();
        if req.method() == Method::GET {
            match path {
                "/healthz" => return ready(json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))),
                "/metrics" => {
                    let mut response = Response::new(Body::from(self.metrics_text()));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                    );
                    return ready(response);
                }
                "/readyz" => {
                    let gateway = self.clone();
                    return ResponseFuture {
                        state: State::Boxed {
                            future: Box::pin(async move {
                                match gateway.ready().await {
                                    Ok(()) => json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
                                    Err(reason) => json(
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        &serde_json::json!({ "status": "not ready", "reason": reason }),
                                    ),
                                }
                            }),
                        },
                    };
                }
                _ => {}
            }
        }
        let Some(route) = self.route_for(path) else {
            self.inner.metrics.unrouted();
            return ready(json_error(StatusCode::NOT_FOUND, "no_route", "no service is routed at this path"));
        };
        let Ok(permit) = self.inner.limit.clone().try_acquire_owned() else {
            self.inner.metrics.overloaded();
            let mut response =
                json_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the gateway is at capacity; try again");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return ready(response);
        };
        ResponseFuture {
            state: State::Routed {
                future: route.svc.clone().oneshot(req),
                gateway: self.clone(),
                route: route.metrics.clone(),
                started: Instant::now(),
                _permit: permit,
            },
        }
    }
}

pin_project! {
    /// The response future of [`Gateway`].
    pub struct ResponseFuture<B>
    where
        RouteService<B>: Service<Request<B>>,
    {
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B>
    where
        RouteService<B>: Service<Request<B>>,
    {
        Routed {
            #[pin]
            future: Oneshot<RouteService<B>, Request<B>>,
            gateway: Gateway<B>,
            route: RouteMetrics,
            started: Instant,
            _permit: OwnedSemaphorePermit,
        },
        Ready { response: Option<Response<Body>> },
        Boxed { future: Pin<Box<dyn Future<Output = Response<Body>> + Send>> },
    }
}

impl<B> std::fmt::Debug for ResponseFuture<B>
where
    RouteService<B>: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> Future for ResponseFuture<B>
where
    RouteService<B>: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Routed { future, gateway, route, started, .. } => {
                let Ok(mut response) = std::task::ready!(future.poll(cx));
                let extensions = response.extensions();
                gateway.inner.metrics.record(
                    route,
                    Observed {
                        status: response.status().as_u16(),
                        latency: started.elapsed(),
                        attempts: extensions.get::<Attempts>().map_or(1, |a| a.0),
                        endpoint: extensions.get::<ChosenEndpoint>().map(|e| &e.0),
                        upstream_error: extensions.get::<UpstreamError>().map(|e| e.kind().code()),
                        auth_rejection: extensions.get::<Rejection>().map(|r| r.code()),
                    },
                );
                response.extensions_mut().insert(RouteName(route.name().clone()));
                Poll::Ready(Ok(response))
            }
            StateProj::Ready { response } => Poll::Ready(Ok(response.take().expect("polled after completion"))),
            StateProj::Boxed { future } => future.as_mut().poll(cx).map(Ok),
        }
    }
}

//! The route table: a request's host, canonical path, method, headers and query
//! pick the most specific route (the order is in [`matching`]), whose stack
//! (`StripPrefix → limits → JwtAuth per its policy → filters → the upstream's
//! Retry → RoundRobin → Proxy`) answers it. Recognising the route is a pure
//! function of the table ([`Table::recognize`]); the [`Routes`] service around it
//! only dispatches and counts.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body as AxumBody;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::Service;
use tower_gateway::balance::ChosenEndpoint;
use tower_gateway::balance::dns::Discovered;
use tower_gateway::error::{UpstreamError, json_error};
use tower_gateway::retry::{Attempts, ReplayBody};
use tower_gateway::strip_prefix::canonicalize;
use tower_gateway::upgrade::OnUpgrade;
use tower_gateway::{Body, Limiter, Proxy, Retry, RoundRobin, Timeout};
use tower_gateway_auth::{Authenticator, Rejection};

use crate::alive::Counted;
use crate::arc_service::ArcService;
use crate::config::Access;
use crate::metrics::{Metrics, Observed, RouteMetrics};
use crate::shared::Shared;

pub(crate) mod matching;
mod redirect;

pub(crate) use matching::{Conditions, Entry, Facts, HostMatch, Matcher, Recognized};
pub(crate) use redirect::{Redirect, RedirectPath};

/// The request body routes receive.
pub(crate) type RouteBody = AxumBody;

/// One upstream's stack, shared by every route that names it.
pub(crate) type UpstreamService = Retry<RoundRobin<Timeout<Proxy<ReplayBody<RouteBody>>>>>;
/// A piece of a route's stack: answers every request (errors are responses).
pub(crate) type Stack = ArcService<Request<RouteBody>, Response<Body>>;

/// A route's whole stack: `StripPrefix → limits → JwtAuth → limits → upstream`,
/// each part there only if the route has it.
pub(crate) type RouteService = Stack;

/// The name of the route that answered, in the response's extensions (for
/// the access log, the metrics and the request's span).
pub use tower_gateway::telemetry::RouteName;

pub(crate) struct Upstream {
    pub(crate) name: Arc<str>,
    /// Whether it speaks HTTP/2 (no WebSocket crosses it).
    pub(crate) http2: bool,
    /// Its endpoints, listed or from a DNS name watched for as long as it lives.
    pub(crate) discovered: Discovered,
    pub(crate) service: UpstreamService,
    pub(crate) _watching: Option<Counted>,
    pub(crate) _alive: Counted,
}

pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) matcher: Matcher,
    /// The hosts it takes (any when empty).
    pub(crate) hosts: Box<[HostMatch]>,
    /// Its methods, headers and query parameters.
    pub(crate) conditions: Conditions,
    pub(crate) access: Access,
    /// The names of the limits it counts against, in order.
    pub(crate) limits: Box<[Arc<str>]>,
    /// Whether WebSocket upgrades pass.
    pub(crate) websocket: bool,
    /// The WebSockets it opened, closed together if a reload removes it.
    pub(crate) tunnels: Option<tower_gateway::upgrade::TunnelGroup>,
    pub(crate) svc: RouteService,
    pub(crate) metrics: RouteMetrics,
    /// Requests this route may have in flight: its share of the gateway's capacity.
    pub(crate) share: Arc<Semaphore>,
}

impl Route {
    /// Its entries in the table: one per hostname, or one for any host.
    pub(crate) fn entries(&self, index: usize) -> Vec<Entry> {
        if self.hosts.is_empty() {
            return vec![Entry { route: index, host: None }];
        }
        self.hosts.iter().map(|h| Entry { route: index, host: Some(h.clone()) }).collect()
    }

    /// An entry's place in the order of precedence.
    pub(crate) fn rank(&self, entry: &Entry) -> matching::Rank {
        matching::rank(entry.host.as_ref(), &self.matcher, &self.conditions)
    }

    /// Whether some request would match both routes equally well.
    pub(crate) fn overlaps(&self, other: &Route) -> bool {
        let (a, b) = (&self.conditions, &other.conditions);
        let same_hosts =
            (self.hosts.is_empty() && other.hosts.is_empty()) || self.hosts.iter().any(|h| other.hosts.contains(h));
        same_hosts
            && self.matcher == other.matcher
            && a.headers.len() == b.headers.len()
            && a.headers.iter().all(|h| b.headers.contains(h))
            && a.query.len() == b.query.len()
            && a.query.iter().all(|q| b.query.contains(q))
            && match (&a.methods, &b.methods) {
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                (None, None) => true,
                _ => false,
            }
    }
}

impl matching::Matches for Route {
    fn path(&self) -> &Matcher {
        &self.matcher
    }

    fn conditions(&self) -> &Conditions {
        &self.conditions
    }
}

/// Every route and upstream of one generation of the plan: what a reload swaps.
/// A request is routed wholly by one table.
pub(crate) struct Table {
    pub(crate) routes: Vec<Route>,
    /// Every way each route matches, most specific first.
    pub(crate) entries: Box<[Entry]>,
    /// Whether any route names a host: if none, the host is not read.
    pub(crate) any_hosts: bool,
    /// Each shared with the generations before, while its configuration stays.
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    pub(crate) auth: Option<Authenticator>,
    /// Every rate limit, for metrics.
    pub(crate) limits: Vec<Limiter>,
    /// The state every generation shares: metrics, capacity, tunnels, drain.
    pub(crate) shared: Arc<Shared>,
    pub(crate) _alive: Counted,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<String> = self
            .entries
            .iter()
            .map(|e| &self.routes[e.route])
            .map(|r| format!("{} -> {} ({})", r.name, r.metrics.upstream(), r.access))
            .collect();
        f.debug_struct("Table").field("routes", &routes).finish_non_exhaustive()
    }
}

impl Table {
    /// The route for the request: the first entry, in order of precedence,
    /// that matches it whole.
    pub(crate) fn recognize(&self, req: &Facts<'_>) -> Recognized {
        matching::recognize(&self.entries, &self.routes, req)
    }

    /// The route for `method` on the canonical `path`, with no host, header
    /// or query.
    #[cfg(test)]
    pub(crate) fn recognize_path(&self, method: &Method, path: &str) -> Recognized {
        let headers = http::HeaderMap::new();
        self.recognize(&Facts { method, path, host: None, headers: &headers, query: None })
    }

    /// Ready when every upstream has an endpoint and, if a route needs a token,
    /// the token store answers.
    pub(crate) async fn ready(&self) -> Result<(), String> {
        if self.shared.drain.is_draining() {
            return Err("draining: shutting down".into());
        }
        if let Some(upstream) = self.upstreams.iter().find(|u| u.discovered.endpoints().is_empty()) {
            return Err(format!("upstream {} has no endpoint", upstream.name));
        }
        if let Some(auth) = &self.auth {
            auth.ready().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    pub(crate) fn metrics_text(&self) -> String {
        let shared = &self.shared;
        shared.metrics.encode(
            self.upstreams.iter().map(|u| (&u.name, u.discovered.endpoints())),
            &self.limits,
            &shared.tunnels,
            &shared.alive,
            &self.auth.as_ref().map(|auth| auth.key_sources()).unwrap_or_default(),
        )
    }
}

/// One well-formed `Host` (RFC 9112 §3.2: none is `400` on HTTP/1.1, and so are
/// several), agreeing with the authority of an absolute-form target, so that what
/// is forwarded as `X-Forwarded-Host` is the authority the request was routed
/// for.
fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("a request has one Host header");
    }
    // An authority, without userinfo (RFC 9110 §7.2: `uri-host [ ":" port ]`).
    let invalid = |h: &HeaderValue| {
        h.is_empty() || h.as_bytes().contains(&b'@') || http::uri::Authority::try_from(h.as_bytes()).is_err()
    };
    if host.is_some_and(invalid) {
        return Err("the Host header is not a host[:port]");
    }
    // Userinfo has no place in a request's authority (RFC 9110 §4.2.4), absolute
    // form or HTTP/2's `:authority`; passed on, it would reach the upstream in
    // `X-Forwarded-Host`.
    if req.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("the request target's authority has userinfo");
    }
    match (host, req.uri().authority()) {
        // RFC 9112 §3.2: an absolute-form target does not excuse a missing Host.
        (None, _) if req.version() == Version::HTTP_11 => Err("HTTP/1.1 requests need a Host header"),
        (Some(host), Some(authority)) if !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) => {
            Err("the Host header names another authority than the request target")
        }
        _ => Ok(()),
    }
}

/// The host a request is for, without its port: `Host`, or the target's
/// authority (HTTP/2's `:authority`), as `check_host` let it through.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let authority = match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    // `host[:port]`, or `[v6]:port`.
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    Some(host)
}

/// Dispatches each request to its route. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    pub(crate) table: Arc<Table>,
}

impl Routes {
    /// The places a request on `route` holds while it is forwarded, if all are free.
    fn permits(&self, route: &Route) -> Option<Permits> {
        let capacity = self.table.shared.capacity.clone().try_acquire_owned().ok()?;
        let share = route.share.clone().try_acquire_owned().ok()?;
        let anonymous = match route.access {
            Access::Public => Some(self.table.shared.anonymous.clone().try_acquire_owned().ok()?),
            Access::Token | Access::Roles(_) | Access::Scopes(_) => None,
        };
        Some((capacity, share, anonymous))
    }
}

/// A request's places: in the gateway's capacity, its route's share and, on a
/// public route, the anonymous share.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

impl Service<Request<RouteBody>> for Routes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each request drives its own route's readiness (a `Oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RouteBody>) -> Self::Future {
        let ready = |response| ResponseFuture { state: State::Ready { response: Some(response) } };
        if let Err(message) = check_host(&req) {
            let mut refused = json_error(StatusCode::BAD_REQUEST, "bad_request", message);
            // Whatever follows on this connection is not to be trusted either.
            refused.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return ready(refused);
        }
        // Methods are case-sensitive: `get` is not GET, and no backend should be
        // asked to guess. TRACE and CONNECT are not proxied.
        if !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::PATCH | Method::OPTIONS
        ) {
            let message = "the gateway forwards GET, HEAD, POST, PUT, DELETE, PATCH and OPTIONS";
            return ready(json_error(StatusCode::NOT_IMPLEMENTED, "method_not_implemented", message));
        }
        // Routed on the canonical path; the route's StripPrefix (whose prefix the
        // route's path always starts with) forwards that same canonical spelling.
        let path = match canonicalize(req.uri().path()) {
            Ok(path) => path,
            Err(err) => return ready(json_error(StatusCode::BAD_REQUEST, "invalid_path", &err.to_string())),
        };
        let host = if self.table.any_hosts { request_host(&req) } else { None };
        let facts = Facts { method: req.method(), path: &path, host, headers: req.headers(), query: req.uri().query() };
        let route = match self.table.recognize(&facts) {
            Recognized::Route(i) => &self.table.routes[i],
            Recognized::MethodNotAllowed => {
                self.table.shared.metrics.unrouted();
                let message = "this path does not take this method";
                return ready(json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message));
            }
            Recognized::NotFound => {
                self.table.shared.metrics.unrouted();
                return ready(json_error(StatusCode::NOT_FOUND, "no_route", "no service is routed at this path"));
            }
        };
        // A body on GET or HEAD means nothing (RFC 9110 §9.3.1) but lets a
        // client hold a place in flight for as long as it trickles one.
        if matches!(*req.method(), Method::GET | Method::HEAD) && !http_body::Body::is_end_stream(req.body()) {
            let message = "a GET or HEAD request carries no body";
            return ready(json_error(StatusCode::BAD_REQUEST, "body_not_allowed", message));
        }
        // Over the gateway's capacity, the route's share or, for a public
        // route, the anonymous share: refused at once (load shedding), as a
        // queue would only add latency to a backlog.
        let Some(permits) = self.permits(route) else {
            // Counted against the route like any answer it gives, and named in the access log.
            self.table.shared.metrics.overloaded();
            let mut response = overloaded();
            answered(&self.table.shared.metrics, &route.metrics, Duration::ZERO, &mut response);
            return ready(response);
        };
        // Without `websocket`, the proxy cannot take the client's connection
        // over, so it forwards an upgrade as a plain GET.
        if !route.websocket {
            req.extensions_mut().remove::<OnUpgrade>();
        }
        ResponseFuture {
            state: State::Routed {
                future: route.svc.run(req),
                table: self.table.clone(),
                route: route.metrics.clone(),
                started: Instant::now(),
                _permits: permits,
            },
        }
    }
}

pin_project! {
    /// The response future of [`Routes`].
    pub(crate) struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Routed {
            #[pin]
            future: BoxFuture<'static, Result<Response<Body>, Infallible>>,
            table: Arc<Table>,
            route: RouteMetrics,
            started: Instant,
            // Held until the response head is ready, as tower's concurrency limit does.
            _permits: Permits,
        },
        Ready { response: Option<Response<Body>> },
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Routed { future, table, route, started, .. } => {
                let Ok(mut response) = std::task::ready!(future.poll(cx));
                answered(&table.shared.metrics, route, started.elapsed(), &mut response);
                Poll::Ready(Ok(response))
            }
            StateProj::Ready { response } => Poll::Ready(Ok(response.take().expect("polled after completion"))),
        }
    }
}

/// Counts `response` as `route`'s answer, from what the layers below left in
/// its extensions, and names the route in it for the access log.
fn answered(metrics: &Metrics, route: &RouteMetrics, latency: Duration, response: &mut Response<Body>) {
    let extensions = response.extensions();
    metrics.record(
        route,
        Observed {
            status: response.status().as_u16(),
            latency,
            attempts: extensions.get::<Attempts>().map_or(1, |a| a.0),
            endpoint: extensions.get::<ChosenEndpoint>().map(|e| &e.0),
            upstream_error: extensions.get::<UpstreamError>().map(|e| e.kind().code()),
            auth_rejection: extensions.get::<Rejection>().map(|r| r.code()),
        },
    );
    response.extensions_mut().insert(RouteName(route.name().clone()));
}

/// The `503` for a request refused at the concurrency limit.
pub(crate) fn overloaded() -> Response<Body> {
    let mut response =
        json_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the gateway is at capacity; try again");
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

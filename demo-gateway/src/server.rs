//! The HTTP server around the route table: ops routes on an axum `Router`; the
//! client's address decided once; the request id and the access log; tower-http's
//! CORS, panic catching, global timeout and body limit; on hyper's HTTP/1.1
//! server (h2c and TLS: hyper-util's auto server) with a header read timeout, a
//! head size cap and a graceful shutdown, its connections served on worker
//! threads. A plain HTTP/1.1 connection waiting for its next request is parked:
//! hyper lets go of it and its buffers are freed until the client speaks again.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::Body;
use tower_gateway::error::{BoxError, json_error};
use tower_gateway::{ClientScheme, PeerAddr};
use tower_http::body::UnsyncBoxBody;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::access_log::AccessLogLayer;
use crate::admission::{Budget, PerClient, Places};
use crate::client_io::{ClientIo, IoState, Speaks, Transport};
use crate::idle_body::IdleBody;
use crate::plan::Plan;
use crate::request_id::RequestIdLayer;
use crate::routes::{self, Routes, Table};
use crate::workers::Workers;

/// The body of every response the server sends: what the stack answered, or a
/// JSON error put in place of a bare one.
pub(crate) type ResponseBody = Either<UnsyncBoxBody<Bytes, BoxError>, Full<Bytes>>;

/// tower-http answers a timeout with a bare status and an oversized body with
/// plain text; give those a JSON body like every other error. Upstream answers
/// pass untouched.
fn json_errors(response: Response<UnsyncBoxBody<Bytes, BoxError>>) -> Response<ResponseBody> {
    let bare = !response.headers().contains_key(header::CONTENT_TYPE);
    // RequestBodyLimit's own answer: text/plain "length limit exceeded" (21 bytes).
    let from_limit = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "text/plain; charset=utf-8")
        && http_body::Body::size_hint(response.body()).exact() == Some(21);
    let (code, message) = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE if bare || from_limit => ("body_too_large", "the request body is too large"),
        StatusCode::GATEWAY_TIMEOUT if bare => ("gateway_timeout", "the request took longer than the gateway allows"),
        _ => return response.map(Either::Left),
    };
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Either::Right(Full::new(Bytes::from(body))))
}

/// What the gateway removes from every request as it enters, before any
/// decision: hop-by-hop headers (and those `Connection` names, so no header can be
/// hidden from a decision and dropped later), forwarding headers only the
/// gateway may write (`X-Forwarded-For` is rewritten from the verified client),
/// identity headers in any spelling a backend might fold into them, and an
/// `X-Request-Id` that is not a sane token.
#[derive(Debug, Clone)]
struct Entry {
    identity: Arc<[String]>,
}

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl Entry {
    fn new(plan: &Plan) -> Self {
        let identity = match plan.authenticator() {
            Some(auth) => auth.identity_header_names().iter().map(|n| n.as_str().to_owned()).collect(),
            None => vec!["x-user-id".to_owned(), "x-user-email".to_owned()],
        };
        Self { identity: identity.into() }
    }

    /// Whether `name` is an identity header once `_` is read as `-`; compared in
    /// place, as this runs for every header of every request.
    fn is_identity(&self, name: &http::HeaderName) -> bool {
        let fold = |b: u8| if b == b'_' { b'-' } else { b };
        let name = name.as_str().as_bytes();
        self.identity.iter().any(|id| id.len() == name.len() && id.bytes().zip(name).all(|(i, &n)| i == fold(n)))
    }

    fn clean<B>(&self, req: &mut Request<B>) {
        // A WebSocket upgrade keeps the two headers that ask for it: the route
        // decides whether it happens.
        let upgrade = tower_gateway::upgrade::websocket_upgrade(req).is_some();
        let headers = req.headers_mut();
        tower_gateway::proxy::remove_hop_by_hop(headers);
        if upgrade {
            tower_gateway::upgrade::restore(headers);
        }
        for name in ["x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix", "forwarded", "x-real-ip"] {
            headers.remove(name);
        }
        if headers.keys().any(|n| self.is_identity(n)) {
            let folded: Vec<http::HeaderName> = headers.keys().filter(|n| self.is_identity(n)).cloned().collect();
            for name in folded {
                headers.remove(name);
            }
        }
        let sane = |v: &HeaderValue| {
            (1..=128).contains(&v.len())
                && v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        };
        if headers.get_all(&X_REQUEST_ID).iter().count() > 1 || headers.get(&X_REQUEST_ID).is_some_and(|v| !sane(v)) {
            headers.remove(&X_REQUEST_ID);
        }
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    tracing::error!("a request handler panicked");
    let body = serde_json::json!({ "error": { "code": "internal", "message": "internal error" } }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn readyz(table: Arc<Table>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match table.ready().await {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ready" }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "not ready", "reason": reason })),
        ),
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The paths the gateway answers itself; every other goes through the route table.
const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The gateway's own routes, `/healthz`, and `/readyz` and `/metrics` unless
/// an admin listener serves those.
fn ops_router(plan: &Plan) -> Router {
    let router = Router::new().route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }));
    // With an admin listener, readiness and metrics live there only.
    let router = if plan.settings.admin_listen.is_some() { router } else { router.merge(admin_router(plan)) };
    let routes = Routes { table: plan.table.clone() };
    router
        .method_not_allowed_fallback(|| async {
            json_error::<Body>(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path takes GET")
        })
        .fallback_service(routes)
}

/// The innermost service: a request for one of [`OPS_PATHS`] goes to the
/// [`ops_router`], every other straight to the route table (no second router
/// on the path every proxied request takes).
#[derive(Clone)]
struct Front {
    ops: Router,
    routes: Routes,
    /// `/readyz` and `/metrics` are served here (no admin listener), to
    /// clients on this machine only: a gateway listening on `0.0.0.0` with no
    /// other setting does not show its internals to the world.
    local_ops: bool,
}

impl Front {
    fn new(plan: &Plan) -> Self {
        Self {
            ops: ops_router(plan),
            routes: Routes { table: plan.table.clone() },
            local_ops: plan.settings.admin_listen.is_none(),
        }
    }

    /// Whether the gateway answers `req` itself.
    fn is_ops<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        if !OPS_PATHS.contains(&path) {
            return false;
        }
        path == "/healthz"
            || !self.local_ops
            || tower_gateway::PeerAddr::of(req.extensions()).is_some_and(|peer| peer.ip().to_canonical().is_loopback())
    }
}

type FrontFuture = futures_util::future::Either<
    axum::routing::future::RouteFuture<Infallible>,
    futures_util::future::Map<routes::ResponseFuture, ToAxum>,
>;

type ToAxum = fn(Result<Response<Body>, Infallible>) -> Result<Response<axum::body::Body>, Infallible>;

impl<B> Service<Request<B>> for Front
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = FrontFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        // Both are always ready: the router by axum's contract, the route table
        // because each request drives its own route's readiness.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        use futures_util::FutureExt;
        if self.is_ops(&req) {
            return futures_util::future::Either::Left(self.ops.call(req));
        }
        let to_axum: ToAxum = |response| response.map(|response| response.map(axum::body::Body::new));
        futures_util::future::Either::Right(self.routes.call(req.map(axum::body::Body::new)).map(to_axum))
    }
}

/// `GET /readyz` (every upstream has an endpoint; the token store answers) and
/// `GET /metrics`: internal addresses and a Redis round trip each, so served on
/// the admin listener when there is one.
fn admin_router(plan: &Plan) -> Router {
    let (table, metrics_table) = (plan.table.clone(), plan.table.clone());
    Router::new().route("/readyz", get(move || readyz(table.clone()))).route(
        "/metrics",
        get(move || std::future::ready(([(header::CONTENT_TYPE, OPENMETRICS)], metrics_table.metrics_text()))),
    )
}

/// The whole gateway of `plan` as one service: tower-http's layers around the
/// route table. This is what [`serve`] runs on each connection.
fn app(
    plan: &Plan,
) -> impl Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    let settings = &plan.settings;
    let entry = Entry::new(plan);
    let idle = settings.body_idle_timeout;
    ServiceBuilder::new()
        .map_response(json_errors)
        // Who the client is, decided once and before any header is removed
        // (the entry takes `Forwarded` out, and a `Connection` naming
        // `X-Forwarded-For` would take that): the access log, the rate limits
        // and X-Forwarded-For all use this answer.
        .layer(settings.client_addr.clone())
        .map_request(move |mut req: Request<Incoming>| {
            entry.clean(&mut req);
            req
        })
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(RequestIdLayer)
        .layer(AccessLogLayer)
        .option_layer(settings.cors.clone())
        .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
        .map_request(move |req: Request<_>| req.map(|body| IdleBody::new(idle, body)))
        .map_response(move |res: Response<_>| res.map(|body| axum::body::Body::new(IdleBody::new(idle, body))))
        .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, settings.request_timeout))
        .service(Front::new(plan))
}

/// Starts resolving the plan's DNS upstreams: once now, then in the background
/// for as long as the returned tasks live.
async fn watch_dns(plan: &Plan) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for upstream in &plan.table.upstreams {
        if let Some((name, every)) = &upstream.dns {
            if let Err(err) = tower_gateway::balance::dns::resolve(name, &upstream.endpoints).await {
                tracing::warn!(%name, %err, "no endpoints from DNS yet");
            }
            tasks.spawn(tower_gateway::balance::dns::watch(name.clone(), upstream.endpoints.clone(), *every));
        }
    }
    tasks
}

/// Aborts the task when dropped: the admin listener ends with `serve`.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one client connection is doing: requests in flight and when it was last
/// busy, for closing it when it idles.
struct Activity {
    /// Whose `draining` flag says to close HTTP/1.1 connections after each response.
    table: Arc<Table>,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when a request last began or ended.
    last: AtomicU64,
    /// Whether any request has arrived yet.
    started: AtomicBool,
    /// Signalled when the first request arrives.
    first_request: Notify,
    /// Whether a response has ended since the connection's task last looked.
    answered: AtomicBool,
    /// Whether the last request came with a body: hyper may still be reading
    /// it after the response, and the connection is not parked at once.
    had_body: AtomicBool,
    /// Whether the last request came within `HOT_GAP` of the response before.
    hot: AtomicBool,
    epoch: Instant,
}

impl Activity {
    fn new(table: Arc<Table>) -> Self {
        Self {
            table,
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            started: AtomicBool::new(false),
            first_request: Notify::new(),
            answered: AtomicBool::new(false),
            had_body: AtomicBool::new(false),
            hot: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since `epoch`.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// When the connection may be closed if nothing happens meanwhile: the
    /// header timeout after accept until a first request arrives, then the idle
    /// timeout after the last request ended.
    fn deadline(&self, header_timeout: Duration, idle_timeout: Duration) -> Instant {
        let limit = if self.started.load(Ordering::Relaxed) { idle_timeout } else { header_timeout };
        self.last_busy() + limit
    }

    /// When a request last began or ended (or the connection was accepted).
    fn last_busy(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Whether a response has ended since the last call, and none is in flight.
    fn answered_and_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.answered.swap(false, Ordering::Relaxed)
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed))))
    }
}

/// Counts a request in flight on its connection until its response body is
/// done: a long download is activity, not idleness.
struct Tracked<S> {
    /// The gateway's stack, one for all connections: a copy held by each would
    /// cost every idle connection its size (~0.5 KB).
    inner: Arc<S>,
    activity: Arc<Activity>,
    /// The client's address, given to each request as its `PeerAddr`.
    peer: SocketAddr,
    /// Whether the connection is TLS: its requests carry `ClientScheme(https)`
    /// (the upstream proxies send `X-Forwarded-Proto: http` without one).
    tls: bool,
    /// `Strict-Transport-Security`, on a TLS connection with HSTS set.
    hsts: Option<HeaderValue>,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.answered.store(true, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// hyper's side of a connection's service: each request gets a clone of the
/// gateway's stack, made ready and called once.
impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<tower::util::Oneshot<S, Request<Incoming>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        if self.tls {
            req.extensions_mut().insert(ClientScheme(Scheme::HTTPS));
        }
        let activity = &self.activity;
        let now = activity.now();
        if !activity.started.swap(true, Ordering::AcqRel) {
            activity.first_request.notify_one();
        } else if activity.in_flight.load(Ordering::Acquire) == 0 {
            let idle = Duration::from_millis(now.saturating_sub(activity.last.load(Ordering::Relaxed)));
            activity.hot.store(idle < HOT_GAP, Ordering::Relaxed);
        }
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.had_body.store(!http_body::Body::is_end_stream(req.body()), Ordering::Relaxed);
        activity.last.store(now, Ordering::Relaxed);
        let http1 = req.version() <= http::Version::HTTP_11;
        TrackedFuture {
            future: S::clone(&self.inner).oneshot(req),
            in_flight: Some(InFlight(self.activity.clone())),
            http1,
            hsts: self.hsts.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        future: F,
        in_flight: Option<InFlight>,
        http1: bool,
        hsts: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.future.poll(cx));
        // While draining, HTTP/1.1 clients are told to close after this response:
        // connections end between requests, not under one.
        let draining = this.in_flight.as_ref().is_some_and(|f| f.0.table.draining.load(Ordering::Relaxed));
        if let Ok(response) = &mut result
            && *this.http1
            && draining
        {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let (Ok(response), Some(hsts)) = (&mut result, this.hsts.take()) {
            response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        }
        // The count moves into the body, and ends when the body is done or dropped.
        let in_flight = this.in_flight.take();
        std::task::Poll::Ready(result.map(|res| res.map(|body| TrackedBody { body, _in_flight: in_flight })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight.
    struct TrackedBody<B> {
        #[pin]
        body: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves accepted connections, plain or TLS: what every connection task needs.
#[derive(Clone)]
struct Conns<S> {
    builders: Arc<Builders>,
    svc: Arc<S>,
    table: Arc<Table>,
    /// The listener's cap: a TLS connection takes its place there once its
    /// handshake is done, and idle connections hear its pressure.
    budget: Budget,
    stopping: tokio::sync::watch::Receiver<bool>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// `Strict-Transport-Security` for responses over TLS.
    hsts: Option<HeaderValue>,
}

/// hyper's servers, set up once.
struct Builders {
    /// HTTP/1.1 or HTTP/2, as the client's first bytes or ALPN say.
    auto: auto::Builder<TokioExecutor>,
    /// Plain HTTP/1.1, whose connections can be parked. Without hyper's header
    /// read timeout: the connection's task enforces it, parked or not, and
    /// hyper's would cost a boxed timer per request.
    http1: http1::Builder,
}

/// Whom a connection is with: nobody while parked (waiting for its client with
/// no buffer), else one of hyper's servers.
enum Serving<S: hyper::service::HttpService<Incoming>> {
    Parked(Box<(ClientIo, S)>),
    Http1(Pin<Box<http1::UpgradeableConnection<TokioIo<ClientIo>, S>>>),
    Auto(Pin<Box<auto::UpgradeableConnection<'static, TokioIo<ClientIo>, S, TokioExecutor>>>),
    Gone,
}

impl<S> Conns<S>
where
    S: Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// Serves one accepted connection on a worker, holding `places` until it
    /// ends; with `tls`, after its handshake, which holds a place in the
    /// handshake budget instead of the listener's.
    fn spawn(&self, workers: &Workers, stream: TcpStream, places: Places, peer: SocketAddr, tls: Option<Handshake>) {
        // The socket moves to the worker's runtime: out of this one's poller here,
        // into the worker's there.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => return tracing::debug!(%peer, %err, "an accepted connection could not be handed over"),
        };
        // Boxed: a connection's task is allocated at the size of its largest
        // state, and a copy of the whole service stack held by value there
        // would cost every idle connection its size again.
        let conns = Box::new(self.clone());
        workers.spawn(move || {
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, %err, "an accepted connection could not be served");
                    return None;
                }
            };
            Some(match tls {
                None => futures_util::future::Either::Left(Self::run(conns, Transport::Plain(stream), places, peer)),
                // Boxed: the task of a plain connection is not made the size of a TLS one.
                Some(handshake) => {
                    futures_util::future::Either::Right(Box::pin(Self::run_tls(conns, stream, handshake, places, peer)))
                }
            })
        });
    }

    /// Hands `io` to hyper's server for what its client speaks.
    fn serve(builders: &Builders, speaks: Speaks, io: ClientIo, svc: Tracked<S>) -> Serving<Tracked<S>> {
        let io = TokioIo::new(io);
        match speaks {
            Speaks::Http1 => Serving::Http1(Box::pin(builders.http1.serve_connection(io, svc).with_upgrades())),
            Speaks::Either => {
                Serving::Auto(Box::pin(builders.auto.serve_connection_with_upgrades(io, svc).into_owned()))
            }
        }
    }

    /// Serves a TLS connection after its handshake, once it has a place under
    /// the listener's cap. A handshake that has gone on for
    /// `SILENT_UNDER_PRESSURE` makes room when the handshake budget is full.
    async fn run_tls(conns: Box<Self>, stream: TcpStream, handshake: Handshake, places: Places, peer: SocketAddr) {
        let started = Instant::now();
        let pressure = handshake.budget.pressure().clone();
        let evicted = async {
            loop {
                pressure.notified().await;
                if started.elapsed() >= SILENT_UNDER_PRESSURE {
                    break;
                }
            }
        };
        let accepted = tokio::select! {
            accepted = tokio::time::timeout(handshake.timeout, handshake.acceptor.accept(stream)) => accepted,
            () = evicted => {
                tracing::debug!(%peer, "TLS handshake closed to make room");
                return conns.table.metrics.tls_handshake("evicted");
            }
        };
        match accepted {
            Ok(Ok(stream)) => {
                conns.table.metrics.tls_handshake("ok");
                let Places { listener: handshaking, client } = places;
                drop(handshaking);
                let Some(listener) = conns.budget.take() else {
                    conns.table.metrics.connection_refused();
                    return tracing::debug!(%peer, "TLS connection refused at max_connections");
                };
                // Boxed: awaited in place, it would be held twice here.
                Box::pin(Self::run(conns, Transport::Tls(Box::new(stream)), Places { listener, client }, peer)).await;
            }
            Ok(Err(err)) => {
                tracing::debug!(%peer, %err, "TLS handshake failed");
                conns.table.metrics.tls_handshake("failed");
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                conns.table.metrics.tls_handshake("timed_out");
            }
        }
    }

    /// Serves one connection until it ends. A plain one waits for its first
    /// bytes holding no buffer, and goes back to that between HTTP/1.1
    /// requests; a TLS one is hyper's for its whole life.
    async fn run(conns: Box<Self>, transport: Transport, places: Places, peer: SocketAddr) {
        // Set up in a block of its own: the service stack moves through these
        // locals into the connection, and locals that lived on past the first
        // `.await` would be kept in the task, costing every connection the
        // stack's size again.
        let (mut serving, activity, io_state, builders, table, pressure, mut stopping, header_timeout, idle_timeout) = {
            let Conns { builders, svc, table, budget, stopping, header_timeout, idle_timeout, hsts } = *conns;
            let pressure = budget.pressure().clone();
            let activity = Arc::new(Activity::new(table.clone()));
            let io_state = Arc::new(IoState::default());
            let io = ClientIo::new(transport, io_state.clone());
            let tls = !io.is_plain();
            let svc =
                Tracked { inner: svc, activity: activity.clone(), peer, tls, hsts: if tls { hsts } else { None } };
            // An upgraded connection leaves this task (and its slot) for the proxy's tunnel.
            let serving = if tls {
                Self::serve(&builders, Speaks::Either, io, svc)
            } else {
                table.metrics.connection_parked(true);
                Serving::Parked(Box::new((io, svc)))
            };
            (serving, activity, io_state, builders, table, pressure, stopping, header_timeout, idle_timeout)
        };
        let metrics = &table.metrics;
        let _places = places;
        metrics.connections().inc();
        // Asked to stop, and whether the connection was told to.
        let (mut stop_asked, mut stop_sent) = (false, false);
        // When to try parking again, after a try that found the last response
        // not yet written out.
        let mut park_retry: Option<Instant> = None;
        // One timer for the connection's life, moved only when a deadline comes
        // sooner than it: deadlines move later with every request, and the
        // timer is put right when it fires early, not reset per request.
        let timer = tokio::time::sleep(header_timeout);
        tokio::pin!(timer);
        // What the rest of the gateway says, heard through a gate: `Notify`s
        // shared by every connection lock their list each time they are polled,
        // and a connection's task wakes for each of its reads and writes.
        let gate = Gate::new();
        let stop_changed = stopping.changed();
        let room = pressure.notified();
        let first = activity.first_request.notified();
        tokio::pin!(stop_changed, room, first);
        loop {
            let started = activity.started.load(Ordering::Acquire);
            // A connection that has not sent its first request is not shut at
            // once: its request may be on the wire (hyper would close it
            // unread). It gets until its header timeout, and is told to stop
            // when that request begins (HTTP/1.1: `Connection: close`).
            if stop_asked && !stop_sent && started {
                match &mut serving {
                    // Between requests: nothing to finish.
                    Serving::Parked(_) => break,
                    Serving::Http1(conn) => conn.as_mut().graceful_shutdown(),
                    Serving::Auto(conn) => conn.as_mut().graceful_shutdown(),
                    Serving::Gone => {}
                }
                stop_sent = true;
            }
            // An idle HTTP/1.1 connection waits for its next request head for the
            // header timeout; HTTP/2 ones wait the idle timeout.
            let http1 = matches!(serving, Serving::Parked(_) | Serving::Http1(_));
            let limit = if http1 { header_timeout.min(idle_timeout) } else { idle_timeout };
            let parks = matches!(serving, Serving::Http1(_)) && !stop_sent;
            // Busy connections are looked at again later; idle ones at their
            // deadline, or when they may try parking again.
            let deadline = match activity.idle_for() {
                Some(_) => activity.deadline(header_timeout, limit),
                None => Instant::now() + limit,
            };
            let deadline = park_retry.map_or(deadline, |retry| deadline.min(retry));
            if tokio::time::Instant::from_std(deadline) < timer.deadline() {
                timer.as_mut().reset(deadline.into());
            }
            let mut park_now = false;
            tokio::select! {
                event = async {
                    match &mut serving {
                        Serving::Parked(parked) => Event::Client(std::future::poll_fn(|cx| parked.0.poll_client(cx, !started)).await),
                        // A connection whose response has just gone out and that
                        // waits for its next request is parked at once.
                        Serving::Http1(conn) => std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
                            Poll::Ready(ended) => Poll::Ready(Event::Ended(ended.map_err(Into::into))),
                            Poll::Pending if activity.answered_and_idle() => Poll::Ready(Event::Idle),
                            Poll::Pending => Poll::Pending,
                        })
                        .await,
                        Serving::Auto(conn) => Event::Ended(conn.as_mut().await),
                        Serving::Gone => Event::Ended(Ok(())),
                    }
                } => match event {
                    Event::Ended(ended) => {
                        if let Err(err) = ended {
                            tracing::debug!(%err, "connection ended with an error");
                        }
                        break;
                    }
                    // Later (once idle for `PARK_AFTER`) for a client that came
                    // back quickly last time, and after a request with a body
                    // (hyper may still be reading it: a response can end first).
                    Event::Idle if activity.hot.load(Ordering::Relaxed) || activity.had_body.load(Ordering::Relaxed) => {
                        park_retry = Some(Instant::now() + PARK_AFTER);
                    }
                    Event::Idle => park_now = parks,
                    Event::Client(Ok(Some(speaks))) => {
                        let Serving::Parked(parked) = std::mem::replace(&mut serving, Serving::Gone) else { break };
                        metrics.connection_parked(false);
                        park_retry = None;
                        let (io, svc) = *parked;
                        serving = Self::serve(&builders, speaks, io, svc);
                    }
                    Event::Client(Ok(None)) => break,
                    Event::Client(Err(err)) => {
                        tracing::debug!(%err, "connection ended with an error");
                        break;
                    }
                },
                () = &mut timer => {
                    // Put off until something comes due again.
                    timer.as_mut().reset((Instant::now() + limit).into());
                    if activity.idle_for().is_some() && Instant::now() >= activity.deadline(header_timeout, limit) {
                        metrics.connection_closed_idle();
                        break;
                    }
                    if park_retry.is_some_and(|retry| Instant::now() >= retry) {
                        park_retry = None;
                        park_now = parks && activity.idle_for().is_some();
                    }
                }
                signal = std::future::poll_fn(|cx| gate.poll(cx, |cx| {
                    if !stop_asked && stop_changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::Stop);
                    }
                    if room.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::MakeRoom);
                    }
                    if stop_asked && !stop_sent && first.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::FirstRequest);
                    }
                    Poll::Pending
                })) => {
                    // Every signal is looked at again at the next poll.
                    gate.open();
                    match signal {
                        Signal::Stop => stop_asked = true,
                        Signal::MakeRoom => {
                            room.set(pressure.notified());
                            let after = if activity.started.load(Ordering::Relaxed) {
                                IDLE_UNDER_PRESSURE
                            } else {
                                SILENT_UNDER_PRESSURE
                            };
                            if activity.idle_for().is_some_and(|idle| idle >= after) {
                                metrics.connection_closed_idle();
                                break;
                            }
                        }
                        Signal::FirstRequest => {}
                    }
                }
            }
            // Parking: hyper closes an idle connection at once when told to shut
            // down, and finishes one in the middle of a message first. Only the
            // first is taken back: done at its very next poll, with its "shutdown"
            // of the socket not passed on. One that is not done was busy after
            // all, and ends after its message like a connection shut on stop.
            let Serving::Http1(conn) = &mut serving else { continue };
            if !park_now {
                continue;
            }
            if io_state.write_pending.load(Ordering::Relaxed) {
                park_retry = Some(Instant::now() + PARK_AFTER);
                continue;
            }
            io_state.parking.store(true, Ordering::Relaxed);
            conn.as_mut().graceful_shutdown();
            let polled = poll_once(conn.as_mut()).await;
            io_state.parking.store(false, Ordering::Relaxed);
            match polled {
                Poll::Pending => stop_sent = true,
                Poll::Ready(Err(err)) => {
                    tracing::debug!(%err, "connection ended with an error");
                    break;
                }
                Poll::Ready(Ok(())) => {
                    let Serving::Http1(conn) = std::mem::replace(&mut serving, Serving::Gone) else { break };
                    // `None`: upgraded, and the tunnel owns the socket now.
                    let Some(parts) = Pin::into_inner(conn).into_parts() else { break };
                    let mut io = parts.io.into_inner();
                    io.unread(&parts.read_buf);
                    serving = Serving::Parked(Box::new((io, parts.service)));
                    metrics.connection_parked(true);
                }
            }
        }
        if let Serving::Parked(_) = serving {
            metrics.connection_parked(false);
        }
        metrics.connections().dec();
    }
}

/// What the rest of the gateway tells a connection's task.
enum Signal {
    /// The gateway is stopping.
    Stop,
    /// A connection was refused at `max_connections`: idle ones make room.
    MakeRoom,
    /// The first request arrived (looked for once stopping).
    FirstRequest,
}

/// Lets a connection's task poll futures only after they have woken it: its
/// own wakes (reads, writes, timers) pass them by.
struct Gate {
    flag: Arc<GateFlag>,
    /// Wakes `flag`, and the task through it.
    waker: std::task::Waker,
}

struct GateFlag {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for GateFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    fn new() -> Self {
        let flag = Arc::new(GateFlag { woken: AtomicBool::new(true), task: Default::default() });
        Self { waker: std::task::Waker::from(flag.clone()), flag }
    }

    /// Has the next [`Gate::poll`] poll its futures whether woken or not.
    fn open(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }

    /// Runs `poll` (which polls the gated futures with the context it is given)
    /// if one of them woke the task since the last time, or the gate was opened.
    fn poll<T>(
        &self,
        cx: &mut std::task::Context<'_>,
        poll: impl FnOnce(&mut std::task::Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        poll(&mut std::task::Context::from_waker(&self.waker))
    }
}

/// What a connection's task waits for besides time.
enum Event {
    /// hyper is done with the connection.
    Ended(Result<(), BoxError>),
    /// A response has gone out and no request is in flight.
    Idle,
    /// A parked connection's client sent something, or closed (`None`).
    Client(std::io::Result<Option<Speaks>>),
}

/// Polls `future` once.
async fn poll_once<F: Future + ?Sized>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// A `308` to the same URL over HTTPS on `https_port`; `400` without a usable `Host`.
fn to_https(headers: &http::HeaderMap, uri: &http::Uri, https_port: u16) -> Response<Full<Bytes>> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .filter(|a| !a.as_str().contains('@'));
    let Some(host) = host else {
        return json_error(StatusCode::BAD_REQUEST, "bad_host", "a valid Host header is required");
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = match https_port {
        443 => format!("https://{}{path}", host.host()),
        port => format!("https://{}:{port}{path}", host.host()),
    };
    let mut response = json_error(StatusCode::PERMANENT_REDIRECT, "use_https", "this service is served over HTTPS");
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A listener on `addr` with room for 1024 connections the kernel has
/// completed but the gateway has not accepted yet (std's `bind` leaves 128,
/// which a burst of new clients overflows: their SYNs are dropped and retried
/// a second later). nginx's default is 511. Call it inside a Tokio runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts on `listener`, or never when there is none.
async fn accept_maybe(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A plain HTTP/1.1 connection is parked as soon as its response has gone out
/// and it waits for the next request: hyper lets go of it, and its buffers are
/// freed until the client speaks again (nginx frees its buffers between
/// keep-alive requests the same way). Parking and coming back cost a request
/// about a tenth more work (hyper builds its connection and buffers anew), so
/// a connection whose client came back within `HOT_GAP` last time is parked
/// only once idle for `PARK_AFTER`; so is one whose request had a body, or
/// whose response was not all written yet.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// A client whose next request came this soon after its response is likely to
/// send another as soon: its connection is not parked at once.
const HOT_GAP: Duration = Duration::from_millis(100);

/// Under pressure, connections idle at least this long between requests make room.
const IDLE_UNDER_PRESSURE: Duration = Duration::from_secs(1);

/// Under pressure, connections that have sent no request this long after they
/// were taken on make room first. A client's request comes with its handshake's
/// last packet (a TLS connection is taken on once its handshake is done), so a
/// connection this silent at the cap is a flood's, or a browser's speculative
/// preconnect, which it opens again when it needs one; nginx, out of
/// connections, closes those waiting for their first request first as well.
/// Held to the idle ones' second, a flood of fresh connections kept the cap
/// full and a new client was refused for up to a second at a time.
const SILENT_UNDER_PRESSURE: Duration = Duration::from_millis(250);

/// Connections the admin listener (`/readyz`, `/metrics`) takes at once: its
/// clients are a scraper and a health checker.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Connections the redirect listener takes at once: each is answered with one
/// `308` and goes on to HTTPS.
const REDIRECT_MAX_CONNECTIONS: usize = 1024;

/// The largest request head the admin and redirect listeners read (hyper's
/// least): their requests carry no more than a path and a `Host`.
const SIDE_MAX_HEADER_BYTES: usize = 8 * 1024;

/// The service of a listener beside the main ones: an axum router whose
/// answers take the server's body type.
type SideService = tower::util::MapResponse<Router, fn(Response<axum::body::Body>) -> Response<ResponseBody>>;

fn side_service(router: Router) -> SideService {
    use http_body_util::BodyExt;
    let to_body: fn(Response<axum::body::Body>) -> Response<ResponseBody> =
        |response| response.map(|body| Either::Left(UnsyncBoxBody::new(body.map_err(BoxError::from))));
    tower::util::MapResponse::new(router, to_body)
}

/// hyper's servers for heads of at most `max_header_bytes`.
fn builders(settings: &crate::plan::Settings, max_header_bytes: usize) -> Arc<Builders> {
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(max_header_bytes);
    auto.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    let mut http1 = http1::Builder::new();
    http1.header_read_timeout(None).max_buf_size(max_header_bytes);
    Arc::new(Builders { auto, http1 })
}

/// A listener beside the main ones, served like them (header timeout, idle
/// close, drain) under a small cap of its own.
struct SideListener {
    listener: TcpListener,
    conns: Conns<SideService>,
}

/// Binds a side listener at `addr` for `router`.
async fn side_listener(
    addr: SocketAddr,
    router: Router,
    cap: usize,
    template: &Conns<impl Sized>,
    builders: &Arc<Builders>,
) -> std::io::Result<SideListener> {
    let listener = TcpListener::bind(addr).await?;
    let conns = Conns {
        builders: builders.clone(),
        svc: Arc::new(side_service(router)),
        table: template.table.clone(),
        budget: Budget::new(cap),
        stopping: template.stopping.clone(),
        header_timeout: template.header_timeout,
        idle_timeout: template.idle_timeout,
        hsts: None,
    };
    Ok(SideListener { listener, conns })
}

/// Places for a connection from `peer` under `budget` and under its client's
/// cap, or `None` after `refuse` was handed the refusal to tell a plain client
/// (a client over its own cap does not make other connections give way).
fn admit(
    budget: &Budget,
    clients: &Arc<PerClient>,
    peer: SocketAddr,
    metrics: &crate::metrics::Metrics,
    refuse: impl FnOnce(&'static [u8]),
) -> Option<Places> {
    let Ok(client) = clients.take(peer.ip()) else {
        refuse(crate::admission::REFUSED_CLIENT);
        metrics.client_connection_refused();
        return None;
    };
    let Some(listener) = budget.take() else {
        refuse(crate::admission::REFUSED);
        metrics.connection_refused();
        return None;
    };
    Some(Places { listener, client })
}

/// Tells a plain client why it is refused: a non-blocking write into a fresh
/// socket's buffer.
fn tell(stream: &TcpStream) -> impl FnOnce(&'static [u8]) + '_ {
    |refusal| drop(stream.try_write(refusal))
}

/// A TLS connection's handshake: bounded in time, holding a place in the
/// handshake budget (not the listener's); under that budget's pressure, one
/// that has gone on for `SILENT_UNDER_PRESSURE` gives up its place.
struct Handshake {
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    budget: Budget,
}

/// Serves `plan` on `listener` until `shutdown` resolves; then stops accepting and
/// lets requests in flight finish for up to the grace period. The binary, the
/// demo, the tests and the benchmarks all run the gateway through this.
///
/// Every connection is bounded: at most `max_connections` are open on the main
/// listeners and `max_connections_per_client` from one client (more get a `503`
/// and are closed, and idle ones are asked to make room); TLS handshakes have a
/// budget of their own, so silent ones cannot keep clients out; the admin and
/// redirect listeners are served the same way under small caps of their own.
/// One that sends no request within the header timeout of its accept is
/// closed, whatever protocol it was going to speak; an HTTP/2 connection with
/// no request in flight for the idle timeout is closed, and one whose peer
/// stops answering pings too.
pub async fn serve(plan: Plan, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let _dns = watch_dns(&plan).await;
    let svc = app(&plan);
    let settings = &plan.settings;
    let table = plan.table.clone();
    let metrics = &table.metrics;
    // Every connection task holds a receiver: `true` asks it to stop, and the
    // sender's `closed()` says every connection has ended.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let budget = Budget::new(settings.max_connections);
    let clients = PerClient::new(settings.max_connections_per_client, settings.trusted_proxies.clone());
    let conns = Conns {
        builders: builders(settings, settings.max_header_bytes),
        svc: Arc::new(svc),
        table: table.clone(),
        budget: budget.clone(),
        stopping: stopping.clone(),
        header_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
        hsts: settings.tls.as_ref().and_then(|tls| tls.hsts.clone()),
    };
    let side_builders = builders(settings, SIDE_MAX_HEADER_BYTES);
    let admin = match settings.admin_listen {
        Some(addr) => {
            let admin = side_listener(addr, admin_router(&plan), ADMIN_MAX_CONNECTIONS, &conns, &side_builders).await?;
            tracing::info!(addr = %admin.listener.local_addr()?, "admin listener: /readyz, /metrics");
            Some(admin)
        }
        None => None,
    };
    let tls = settings.tls.as_ref().map(|tls| {
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(tls.certificate.clone()));
        (tls, acceptor, Budget::new(tls.max_handshakes))
    });
    let tls_listener = match &tls {
        Some((tls, ..)) => {
            let listener = bind(tls.listen)?;
            tracing::info!(addr = %listener.local_addr()?, "TLS listener: HTTP/2 and HTTP/1.1");
            Some(listener)
        }
        None => None,
    };
    let redirect = match tls.as_ref().and_then(|(tls, ..)| tls.redirect_listen.map(|addr| (addr, tls.listen.port()))) {
        Some((addr, https_port)) => {
            let router = Router::new().fallback(move |headers: http::HeaderMap, uri: http::Uri| async move {
                to_https(&headers, &uri, https_port)
            });
            let redirect = side_listener(addr, router, REDIRECT_MAX_CONNECTIONS, &conns, &side_builders).await?;
            tracing::info!(addr = %redirect.listener.local_addr()?, "redirect listener: 308 to HTTPS");
            Some(redirect)
        }
        None => None,
    };
    let workers = Workers::start(settings.workers)?;
    let admit_plain = |stream: TcpStream, peer: SocketAddr| {
        let Some(places) = admit(&budget, &clients, peer, metrics, tell(&stream)) else { return };
        let _ = stream.set_nodelay(true);
        conns.spawn(&workers, stream, places, peer, None);
    };
    let admit_tls = |stream: TcpStream, peer: SocketAddr| {
        let Some((tls, acceptor, handshakes)) = &tls else { return };
        // A TLS client cannot read a plain 503: it is only closed.
        let Some(places) = admit(handshakes, &clients, peer, metrics, drop) else { return };
        let _ = stream.set_nodelay(true);
        let handshake =
            Handshake { acceptor: acceptor.clone(), timeout: tls.handshake_timeout, budget: handshakes.clone() };
        conns.spawn(&workers, stream, places, peer, Some(handshake));
    };
    let admit_side = |side: &SideListener, stream: TcpStream, peer: SocketAddr| {
        let Some(places) = admit(&side.conns.budget, &clients, peer, metrics, tell(&stream)) else { return };
        let _ = stream.set_nodelay(true);
        side.conns.spawn(&workers, stream, places, peer, None);
    };
    let _reload = tls.as_ref().map(|(tls, ..)| {
        let (certificate, every, table) = (tls.certificate.clone(), tls.reload_every, table.clone());
        AbortOnDrop(tokio::spawn(certificate.watch(every, move |ok| table.metrics.tls_reload(ok))))
    });
    let mut drain: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    tokio::pin!(shutdown);
    loop {
        let (accepted, which) = tokio::select! {
            accepted = listener.accept() => (accepted, Which::Plain),
            accepted = accept_maybe(tls_listener.as_ref()) => (accepted, Which::Tls),
            accepted = accept_maybe(admin.as_ref().map(|a| &a.listener)) => (accepted, Which::Admin),
            accepted = accept_maybe(redirect.as_ref().map(|r| &r.listener)) => (accepted, Which::Redirect),
            () = &mut shutdown, if drain.is_none() => {
                if settings.drain_delay.is_zero() {
                    break;
                }
                // Readiness fails first; requests are served on until the delay ends.
                table.draining.store(true, Ordering::Relaxed);
                tracing::info!(drain_delay = ?settings.drain_delay, "draining: /readyz fails, still serving");
                drain = Some(Box::pin(tokio::time::sleep(settings.drain_delay)));
                continue;
            }
            () = async { drain.as_mut().expect("guarded").await }, if drain.is_some() => break,
        };
        match (accepted, which) {
            (Ok((stream, peer)), Which::Plain) => admit_plain(stream, peer),
            (Ok((stream, peer)), Which::Tls) => admit_tls(stream, peer),
            (Ok((stream, peer)), Which::Admin) => admit_side(admin.as_ref().expect("accepted on it"), stream, peer),
            (Ok((stream, peer)), Which::Redirect) => {
                admit_side(redirect.as_ref().expect("accepted on it"), stream, peer);
            }
            (Err(err), which) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, listener = ?which, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Closing a listener resets the connections the kernel has completed but
    // nobody accepted: take every one already queued, then close.
    table.draining.store(true, Ordering::Relaxed);
    for (listener, tls) in [(Some(listener), false), (tls_listener, true)] {
        let Some(listener) = listener else { continue };
        let listener = listener.into_std()?;
        while let Ok((stream, peer)) = listener.accept() {
            match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
                Ok(stream) if tls => admit_tls(stream, peer),
                Ok(stream) => admit_plain(stream, peer),
                Err(err) => tracing::debug!(%err, "a queued connection could not be served"),
            }
        }
    }
    tracing::info!(grace_period = ?settings.grace_period, "shutting down: finishing requests in flight");
    let _ = stop.send(true);
    // Every receiver but the connections' own: `closed()` waits for those alone.
    drop(stopping);
    drop((conns, admin, redirect));
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.grace_period) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    // WebSockets last: they have no end of their own to wait for.
    let tunnels = &table.tunnels;
    if tunnels.active() > 0 {
        tracing::info!(websockets = tunnels.active(), "closing WebSocket connections");
    }
    tunnels.close_all();
    if tokio::time::timeout(Duration::from_secs(2), tunnels.closed()).await.is_err() {
        tracing::warn!(websockets = tunnels.active(), "WebSocket connections still closing");
    }
    workers.stop().await;
    Ok(())
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy)]
enum Which {
    Plain,
    Tls,
    Admin,
    Redirect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_an_admin_listener_readiness_and_metrics_answer_this_machine_only() {
        let config: crate::Config = toml::from_str(
            "[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"u\"\naccess = \"public\"",
        )
        .unwrap();
        let plan = Plan::compile(config).unwrap();
        let status = async |path: &str, peer: &str| {
            let mut req = Request::get(path).header(header::HOST, "gw").body(Full::<Bytes>::default()).unwrap();
            req.extensions_mut().insert(tower_gateway::PeerAddr(peer.parse().unwrap()));
            let Ok(response) = Front::new(&plan).call(req).await;
            response.status().as_u16()
        };
        for local in ["127.0.0.1:4000", "[::1]:4000", "[::ffff:127.0.0.1]:4000"] {
            assert_eq!(status("/metrics", local).await, 200, "{local}");
            assert_eq!(status("/readyz", local).await, 200, "{local}");
        }
        for remote in ["192.0.2.7:4000", "[2001:db8::7]:4000"] {
            assert_eq!(status("/metrics", remote).await, 404, "{remote}");
            assert_eq!(status("/readyz", remote).await, 404, "{remote}");
            assert_eq!(status("/healthz", remote).await, 200, "{remote}: liveness stays public");
        }
    }
}

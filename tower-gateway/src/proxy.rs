//! The innermost service: forwards a request to the destination in its URI.
//!
//! [`Proxy`] sends each request with a pooled hyper-util client (one pool per
//! thread that uses it) to the scheme and authority of its URI (set by [`RoundRobin`](crate::balance::RoundRobin),
//! or by you), streaming bodies both ways: a 100 MB upload or download is never
//! held in memory. On the way it
//!
//! - removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`,
//!   `Upgrade`, `Proxy-Authorization` — from the request and from the response;
//! - sets `X-Forwarded-For` to the client as [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer)
//!   decided it (with the trusted proxies it came through), or else to the
//!   [`PeerAddr`] alone, and `X-Forwarded-Proto` and `X-Forwarded-Host` (the
//!   `Host` the client asked for); client-sent copies of these, and of
//!   `Forwarded` and `X-Real-IP`, are never passed on (with neither extension no
//!   `X-Forwarded-For` is sent);
//! - sends the upstream its own authority as `Host`, over HTTP/1.1;
//! - drops the request's trailers (headers that would pass every check made
//!   on the head);
//! - carries WebSocket upgrades, counted among its [`Tunnels`] (see [`crate::upgrade`]).
//!
//! Failures are answered, never returned as errors (`Error = Infallible`, as axum
//! wants): a connection that could not be made is a `502` with code
//! `upstream_connect_failed`, a connection that broke is a `502`
//! (`upstream_reset`), each with a JSON body and an [`UpstreamError`] in the
//! response's extensions. How long to wait for the response head is
//! [`TimeoutLayer`](crate::TimeoutLayer)'s to say (`504`, `upstream_timeout`):
//! put it just above the proxy.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_gateway::{Body, Proxy};
//!
//! let proxy: Proxy<Body> = Proxy::builder()
//!     .connect_timeout(Duration::from_millis(500))
//!     .pool_idle_timeout(Duration::from_secs(60))
//!     .build();
//! # let _ = proxy;
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::Body as HttpBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use thread_local::ThreadLocal;
use tower_service::Service;

use crate::Body;
use crate::client_addr::ClientAddr;
use crate::error::{BoxError, UpstreamError, UpstreamErrorKind};
use crate::upgrade::{self, OnUpgrade, Place, Tunnels};

/// The address of the client that sent a request: the peer of its connection.
/// [`Proxy`] sends it as `X-Forwarded-For` (unless a [`ClientAddr`] says more),
/// [`ClientAddrLayer`](crate::ClientAddrLayer) starts from it, and
/// [`ClientIp`](crate::rate_limit::key::ClientIp) counts by it.
///
/// Where it comes from:
///
/// - **axum**, with this crate's `axum` feature: nothing to do beyond serving
///   the app with `into_make_service_with_connect_info::<SocketAddr>()`; axum's
///   `ConnectInfo<SocketAddr>` is read when no `PeerAddr` is present.
/// - **hyper**: insert it where the connection is accepted, e.g. with
///   `svc.map_request(move |mut req: Request<_>| { req.extensions_mut().insert(PeerAddr(peer)); req })`.
///
/// Without either, no `X-Forwarded-For` is sent, and a client-sent one never passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The peer of the request's connection: a [`PeerAddr`] extension, else (with
    /// the `axum` feature) axum's `ConnectInfo<SocketAddr>`.
    pub fn of(extensions: &http::Extensions) -> Option<SocketAddr> {
        if let Some(PeerAddr(peer)) = extensions.get::<PeerAddr>() {
            return Some(*peer);
        }
        #[cfg(feature = "axum")]
        if let Some(axum::extract::ConnectInfo(peer)) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(*peer);
        }
        None
    }
}

/// The scheme a client reached the gateway with, for `X-Forwarded-Proto`: put
/// it in the request's extensions where the connection is accepted when one
/// gateway serves both HTTP and HTTPS. Without it, [`Proxy`] sends the
/// builder's [`forwarded_proto`](Builder::forwarded_proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientScheme(pub http::uri::Scheme);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including every header
/// named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names they have is cheaper
    // than a lookup for each of the seven that may be there.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(&name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // `keep-alive` and `close`, the options nearly every `Connection` says,
        // are skipped when they name nothing the fixed list below leaves (a
        // `Keep-Alive` header is on it).
        let has_close = headers.contains_key("close");
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| {
                !name.eq_ignore_ascii_case("keep-alive") && (has_close || !name.eq_ignore_ascii_case("close"))
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The hop-by-hop headers a message may carry besides those its `Connection` names.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
];

/// Builds a [`Proxy`]. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Builder {
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    forwarded_proto: HeaderValue,
    tunnels: Option<Tunnels>,
    http2: bool,
}

impl Builder {
    /// Speaks HTTP/2 to the upstream (default: HTTP/1.1): over `http://`
    /// with prior knowledge (h2c), over `https://` by ALPN (`h2` alone). One
    /// connection per endpoint then carries many requests at once, as many
    /// as the server's `SETTINGS_MAX_CONCURRENT_STREAMS` allows; gRPC needs
    /// it. WebSocket upgrades are not forwarded over HTTP/2.
    pub fn http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    /// How long to wait for a TCP connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an idle pooled connection is kept (default 30 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How `https://` upstreams are verified, instead of the default (the Mozilla
    /// roots of `webpki-roots`, no client certificate): a config trusting your
    /// own CA, or presenting a client certificate (mTLS). Its ALPN is set to
    /// HTTP/1.1 (or `h2` with [`http2`](Self::http2)). The server name sent (SNI) and checked is the endpoint's host.
    pub fn tls_config(mut self, config: impl Into<Arc<rustls::ClientConfig>>) -> Self {
        self.tls = Some(config.into());
        self
    }

    /// The `X-Forwarded-Proto` sent upstream: the scheme clients used to reach the
    /// gateway (default `http`; say `https` behind a TLS terminator).
    pub fn forwarded_proto(mut self, proto: &'static str) -> Self {
        self.forwarded_proto = HeaderValue::from_static(proto);
        self
    }

    /// Where WebSocket upgrades are counted and bounded (default: a set of
    /// [`Tunnels::default()`] of this proxy's own). Share one set between proxies
    /// for one cap, and keep a clone to read it and to close it at shutdown.
    pub fn tunnels(mut self, tunnels: Tunnels) -> Self {
        self.tunnels = Some(tunnels);
        self
    }

    /// Forwards every request as a plain one: upgrade headers are dropped, and
    /// the upstream's answer is never `101`.
    pub fn without_upgrades(mut self) -> Self {
        self.tunnels = None;
        self
    }

    /// The proxy, with its connection pool.
    pub fn build<B>(self) -> Proxy<B>
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
    {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let mut tls = match self.tls {
            Some(config) => Arc::unwrap_or_clone(config),
            None => default_tls(),
        };
        // The connector offers the protocol by ALPN itself (and refuses a config that sets any).
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let connector = if self.http2 {
            connector.enable_http2().wrap_connector(http)
        } else {
            connector.enable_http1().wrap_connector(http)
        };
        let pools = Pools {
            connector,
            idle_timeout: self.pool_idle_timeout,
            http2: self.http2,
            per_thread: ThreadLocal::new(),
            _body: PhantomData,
        };
        // No upgrade crosses an HTTP/2 connection to the upstream.
        let tunnels = if self.http2 { None } else { self.tunnels };
        Proxy { pools: Arc::new(pools), forwarded_proto: self.forwarded_proto, tunnels }
    }
}

type PooledClient<B> = Client<HttpsConnector<HttpConnector>, Outgoing<B>>;

/// A request body on its way upstream, its trailers dropped: they are headers
/// nothing in front of the proxy looked at (an `x-user-id` among them would
/// reach the upstream however carefully the headers were filtered). A gRPC
/// request keeps gRPC's own (`grpc-*`) and no others.
struct Outgoing<B> {
    body: Pin<Box<B>>,
    grpc: bool,
}

impl<B: HttpBody> HttpBody for Outgoing<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let grpc = self.grpc;
        match std::task::ready!(self.body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) if frame.is_trailers() => {
                let trailers = frame.into_trailers().unwrap_or_default();
                let mut kept = HeaderMap::new();
                if grpc {
                    // Every value of a kept name, repeated ones too.
                    for (name, value) in &trailers {
                        if name.as_str().starts_with("grpc-") {
                            kept.append(name, value.clone());
                        }
                    }
                }
                // Trailers end a body: so does dropping them.
                Poll::Ready((!kept.is_empty()).then(|| Ok(http_body::Frame::trailers(kept))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A proxy's connection pools: one for each thread that sends through it, made
/// when that thread first does. A connection's task runs on the runtime of the
/// thread that opened it, so on one single-threaded runtime per core (as
/// `demo-gateway` runs) a request, its upstream connection and the response
/// never cross threads; on tokio's multi-thread runtime there is a pool per
/// worker thread.
struct Pools<B> {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    http2: bool,
    // Each a `PooledClient<B>`, kept as `Any` so that `Proxy<B>` asks nothing
    // of `B` where it is named, only where it is built and called.
    per_thread: ThreadLocal<Box<dyn std::any::Any + Send>>,
    _body: PhantomData<fn(B)>,
}

impl<B> Pools<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
{
    fn client(&self) -> &PooledClient<B> {
        let client = self.per_thread.get_or(|| {
            let client: PooledClient<B> = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(self.idle_timeout)
                .pool_timer(TokioTimer::new())
                .http2_only(self.http2)
                .timer(TokioTimer::new())
                .build(self.connector.clone());
            Box::new(client)
        });
        client.downcast_ref().expect("a proxy's pools hold only its own client type")
    }
}

impl<B> std::fmt::Debug for Pools<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").field("idle_timeout", &self.idle_timeout).finish_non_exhaustive()
    }
}

/// Forwards requests to the destination in their URI. See the [module docs](self).
#[derive(Debug)]
#[must_use]
pub struct Proxy<B> {
    // Bodies are pinned in a box: hyper's client wants `Unpin`, and a request
    // body need not be (tower-http's `TimeoutBody`, for one).
    pools: Arc<Pools<B>>,
    forwarded_proto: HeaderValue,
    tunnels: Option<Tunnels>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Self { pools: self.pools.clone(), forwarded_proto: self.forwarded_proto.clone(), tunnels: self.tunnels.clone() }
    }
}

impl<B> Default for Proxy<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
{
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy<()> {
    /// A builder for a proxy with non-default settings.
    pub fn builder() -> Builder {
        Builder {
            connect_timeout: Duration::from_secs(1),
            tls: None,
            pool_idle_timeout: Duration::from_secs(30),
            http2: false,
            forwarded_proto: HeaderValue::from_static("http"),
            tunnels: Some(Tunnels::default()),
        }
    }
}

impl<B> Proxy<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
{
    /// A proxy with the default settings: 1 s to connect, idle pooled connections
    /// kept 30 s, WebSocket upgrades among [`Tunnels::default()`].
    pub fn new() -> Self {
        Proxy::builder().build()
    }
}

/// The `Host` an upstream at `uri` is sent: its authority without user info,
/// and without the port when it is the scheme's default.
fn upstream_host(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let text = authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_, host)| host);
    let default_port = match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    };
    let text =
        if authority.port_u16().is_some_and(|port| Some(port) == default_port) { authority.host() } else { text };
    crate::header::shared_value(text.as_bytes()).ok()
}

/// Prepares a request for the upstream: hop-by-hop headers out, forwarding
/// headers in, the version the upstream speaks.
fn prepare<B>(req: &mut Request<B>, forwarded_proto: &HeaderValue, http2: bool, grpc: bool) {
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    } else {
        headers.remove(&X_FORWARDED_HOST);
    }
    // The upstream's own name, as hyper-util's client would write it (no
    // user info, no default port), but cut from the thread's slab.
    if let Some(host) = upstream_host(req.uri()) {
        req.headers_mut().insert(header::HOST, host);
    }
    let proto = match req.extensions().get::<ClientScheme>() {
        Some(ClientScheme(scheme)) if *scheme == http::uri::Scheme::HTTP => HeaderValue::from_static("http"),
        Some(ClientScheme(scheme)) if *scheme == http::uri::Scheme::HTTPS => HeaderValue::from_static("https"),
        Some(ClientScheme(scheme)) => {
            HeaderValue::from_str(scheme.as_str()).unwrap_or_else(|_| forwarded_proto.clone())
        }
        None => forwarded_proto.clone(),
    };
    let headers = req.headers_mut();
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    // The client's own forwarding claims are never passed on: X-Forwarded-For is
    // what ClientAddr verified, or the peer alone.
    headers.remove(header::FORWARDED);
    headers.remove(&X_REAL_IP);
    let forwarded_for = match (req.extensions().get::<ClientAddr>(), PeerAddr::of(req.extensions())) {
        (Some(client), _) => Some(client.forwarded_for()),
        (None, Some(peer)) => Some(crate::client_addr::ip_header_value(peer.ip().to_canonical())),
        (None, None) => None,
    };
    let headers = req.headers_mut();
    match forwarded_for {
        Some(value) => headers.insert(X_FORWARDED_FOR.clone(), value),
        None => headers.remove(&X_FORWARDED_FOR),
    };
    if http2 {
        // HTTP/2 names the authority in `:authority`, from the URI.
        headers.remove(header::HOST);
        // gRPC servers ask that a call say it takes trailers (`TE` is the one
        // connection header HTTP/2 allows, with this value only).
        if grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.version_mut() = Version::HTTP_11;
    }
}

impl<B> Service<Request<B>> for Proxy<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = future::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.uri().scheme().is_none() || req.uri().authority().is_none() {
            return future::ResponseFuture::failed(UpstreamErrorKind::NoDestination);
        }
        // A WebSocket upgrade the server can hand over: a place for it, the
        // client's side of it, and its headers kept through `prepare`.
        let upgrade = match (&self.tunnels, req.extensions().get::<OnUpgrade>()) {
            (Some(tunnels), Some(_)) => upgrade::websocket_upgrade(&req).cloned().map(|key| (tunnels, key)),
            _ => None,
        };
        let grpc = crate::grpc::is_grpc(req.headers());
        let span = attempt_span(&req);
        let pending = match upgrade {
            Some((tunnels, key)) => {
                let Some(place) = tunnels.place_for(&req) else {
                    return future::ResponseFuture::answered(upgrade::TooManyUpgrades.into_response());
                };
                let client = hyper::upgrade::on(&mut req);
                prepare(&mut req, &self.forwarded_proto, false, grpc);
                upgrade::restore(req.headers_mut());
                Some(Pending { place, client, key })
            }
            None => {
                prepare(&mut req, &self.forwarded_proto, self.pools.http2, grpc);
                None
            }
        };
        #[cfg(feature = "opentelemetry")]
        crate::telemetry::inject(&span, req.headers_mut());
        let future =
            span.in_scope(|| self.pools.client().request(req.map(|body| Outgoing { body: Box::pin(body), grpc })));
        future::ResponseFuture { state: future::State::Sending { future, upgrade: pending }, span }
    }
}

/// The client span of one attempt (see [`crate::telemetry`]): what it was sent
/// to, and (recorded when it ends) the status or the reason it failed.
fn attempt_span<B>(req: &Request<B>) -> tracing::Span {
    let uri = req.uri();
    tracing::debug_span!(
        target: "tower_gateway::proxy",
        "upstream",
        otel.name = req.method().as_str(),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = req.method().as_str(),
        server.address = uri.host(),
        server.port = uri.port_u16().unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 }),
        url.scheme = uri.scheme_str(),
        url.path = uri.path(),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// A WebSocket upgrade on its way upstream: its place among the tunnels, the
/// client's side of the connection, and the key the upstream must answer.
#[derive(Debug)]
struct Pending {
    place: Place,
    client: OnUpgrade,
    key: HeaderValue,
}

pub mod future {
    //! The response future of [`Proxy`].

    #[allow(clippy::wildcard_imports)]
    use super::*;

    pin_project! {
        /// The response future of [`Proxy`].
        #[derive(Debug)]
        pub struct ResponseFuture {
            #[pin]
            pub(super) state: State,
            // The attempt's span until it ends (`Span::none()` after).
            pub(super) span: tracing::Span,
        }

        impl PinnedDrop for ResponseFuture {
            fn drop(this: Pin<&mut Self>) {
                // Given up before an answer: a timeout above, or the client gone.
                let span = this.project().span;
                if !span.is_disabled() {
                    span.record("error.type", "cancelled");
                    span.record("otel.status_code", "ERROR");
                }
            }
        }
    }

    pin_project! {
        #[project = StateProj]
        #[derive(Debug)]
        pub(super) enum State {
            Sending {
                #[pin]
                future: hyper_util::client::legacy::ResponseFuture,
                // A WebSocket upgrade's place, the client's side and its key,
                // until the upstream answers.
                upgrade: Option<Pending>,
            },
            Failed { kind: UpstreamErrorKind },
            Answered { response: Option<Response<Body>> },
        }
    }

    impl ResponseFuture {
        pub(super) fn failed(kind: UpstreamErrorKind) -> Self {
            Self { state: State::Failed { kind }, span: tracing::Span::none() }
        }

        pub(super) fn answered(response: Response<Body>) -> Self {
            Self { state: State::Answered { response: Some(response) }, span: tracing::Span::none() }
        }
    }

    /// Records how an attempt ended on its span, and ends it.
    fn end(span: &mut tracing::Span, response: &Response<Body>) {
        if span.is_disabled() {
            return;
        }
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if let Some(error) = response.extensions().get::<UpstreamError>() {
            span.record("error.type", error.kind().code());
            span.record("otel.status_code", "ERROR");
        } else if status.is_server_error() {
            // Client spans: a 5xx from the upstream is an error of the call.
            span.record("error.type", status.as_str());
            span.record("otel.status_code", "ERROR");
        }
        *span = tracing::Span::none();
    }

    impl Future for ResponseFuture {
        type Output = Result<Response<Body>, Infallible>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let response = {
                let _entered = this.span.enter();
                std::task::ready!(poll_state(this.state, cx))
            };
            end(this.span, &response);
            Poll::Ready(Ok(response))
        }
    }

    fn poll_state(state: Pin<&mut State>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        let kind = match state.project() {
            StateProj::Failed { kind } => *kind,
            StateProj::Answered { response } => {
                return Poll::Ready(response.take().expect("polled after completion"));
            }
            StateProj::Sending { future, upgrade } => match std::task::ready!(future.poll(cx)) {
                Ok(mut response) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    let Some(Pending { place, client, key }) = upgrade.take() else {
                        // Nothing asked for it: the connection is not the client's to have.
                        tracing::debug!("the upstream switched protocols unasked");
                        return Poll::Ready(UpstreamError::new(UpstreamErrorKind::Upgrade).into_response());
                    };
                    // Only the WebSocket asked for, accepted for this key: any
                    // other protocol would hand the client a tunnel past
                    // everything in front of the proxy.
                    if !upgrade::accepts(response.headers(), &key) {
                        tracing::debug!("the upstream switched protocols without accepting the WebSocket");
                        return Poll::Ready(UpstreamError::new(UpstreamErrorKind::Upgrade).into_response());
                    }
                    let upstream = hyper::upgrade::on(&mut response);
                    let (mut parts, _) = response.into_parts();
                    remove_hop_by_hop(&mut parts.headers);
                    upgrade::restore(&mut parts.headers);
                    tokio::spawn(upgrade::splice(place, client, upstream));
                    return Poll::Ready(Response::from_parts(parts, Body::empty()));
                }
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    // RFC 9112 §6.3: with Transfer-Encoding, a Content-Length means
                    // nothing (hyper decoded the chunks); relayed, it would make the
                    // client cut the body short.
                    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                        parts.headers.remove(header::CONTENT_LENGTH);
                    }
                    remove_hop_by_hop(&mut parts.headers);
                    return Poll::Ready(Response::from_parts(parts, Body::streamed(body)));
                }
                Err(err) => {
                    let kind = if err.is_connect() && from_tls(&err) {
                        UpstreamErrorKind::Tls
                    } else if err.is_connect() {
                        UpstreamErrorKind::Connect
                    } else if from_request_body(&err) {
                        UpstreamErrorKind::RequestBody
                    } else {
                        UpstreamErrorKind::Reset
                    };
                    tracing::debug!(error = %ErrorChain(&err), ?kind, "upstream request failed");
                    kind
                }
            },
        };
        Poll::Ready(UpstreamError::new(kind).into_response())
    }
}

/// The TLS configuration for `https://` upstreams unless one is given: the
/// Mozilla roots, aws-lc-rs chosen explicitly (no process-wide default needed).
fn default_tls() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The causes of `err`, nearest first: its sources, and inside each
/// `io::Error` the error it carries (`io::Error::source` skips that one).
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(err.source(), |err| {
        match err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        }
    })
}

/// Whether a connection failed in the TLS handshake: a rustls error among its
/// causes (tokio-rustls and hyper-rustls each wrap it in an `io::Error`).
fn from_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|cause| cause.is::<rustls::Error>())
}

/// Whether the request failed because the body being sent failed to arrive from
/// the client (hyper's "user" body error), rather than the upstream.
fn from_request_body(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|cause| cause.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user))
}

/// Displays an error with its sources, which is where hyper keeps the detail.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;

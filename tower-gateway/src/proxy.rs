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

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use thread_local::ThreadLocal;
use tower_service::Service;

use crate::Body;
use crate::error::{BoxError, UpstreamError, UpstreamErrorKind};
use crate::upgrade::{self, OnUpgrade, Place, Tunnels};

mod forwarding;
pub mod future;

use self::forwarding::prepare;
pub use self::forwarding::remove_hop_by_hop;

/// The address of the client that sent a request: the peer of its connection.
/// [`Proxy`] sends it as `X-Forwarded-For` (unless a [`ClientAddr`](crate::ClientAddr) says more),
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

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;

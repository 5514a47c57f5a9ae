//! What one connection is doing, recorded as hyper serves it: requests in
//! flight, when it was last busy, whether its client is quick to come back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::Scheme;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tower::{Service, ServiceExt};
use tower_gateway::{ClientScheme, PeerAddr};

use super::policy::{self, Snapshot};
use crate::shared::Drain;

/// What one client connection is doing: requests in flight and when it was last
/// busy, for closing it when it idles.
pub(super) struct Activity {
    /// Says, once set, to close HTTP/1.1 connections after each response.
    drain: Drain,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when a request last began or ended.
    last: AtomicU64,
    /// Whether any request has arrived yet.
    pub(super) started: AtomicBool,
    /// Signalled when the first request arrives.
    pub(super) first_request: Notify,
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
    pub(super) fn new(drain: Drain) -> Self {
        Self {
            drain,
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

    /// How long since the accept.
    pub(super) fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The instant `since_accept` after the accept.
    pub(super) fn at(&self, since_accept: Duration) -> Instant {
        self.epoch + since_accept
    }

    /// What the connection is doing now, for the [`policy`].
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            started: self.started.load(Ordering::Acquire),
            busy: self.in_flight.load(Ordering::Acquire) > 0,
            last: Duration::from_millis(self.last.load(Ordering::Relaxed)),
            hot: self.hot.load(Ordering::Relaxed),
            had_body: self.had_body.load(Ordering::Relaxed),
        }
    }

    /// Whether a response has ended since the last call, and none is in flight.
    pub(super) fn answered_and_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.answered.swap(false, Ordering::Relaxed)
    }
}

/// Counts a request in flight on its connection until its response body is
/// done: a long download is activity, not idleness.
pub(super) struct Tracked<S> {
    /// The gateway's stack, one for all connections: a copy held by each would
    /// cost every idle connection its size (~0.5 KB).
    pub(super) inner: Arc<S>,
    pub(super) activity: Arc<Activity>,
    /// The client's address, given to each request as its `PeerAddr`.
    pub(super) peer: SocketAddr,
    /// Whether the connection is TLS: its requests carry `ClientScheme(https)`
    /// (the upstream proxies send `X-Forwarded-Proto: http` without one).
    pub(super) tls: bool,
    /// `Strict-Transport-Security`, on a TLS connection with HSTS set.
    pub(super) hsts: Option<HeaderValue>,
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
            activity.hot.store(policy::is_hot(idle), Ordering::Relaxed);
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
    pub(super) struct TrackedFuture<F> {
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
        let draining = this.in_flight.as_ref().is_some_and(|f| f.0.drain.is_draining());
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
    pub(super) struct TrackedBody<B> {
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

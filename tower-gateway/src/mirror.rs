//! Mirror a share of requests to a second service, its answers discarded: the
//! Gateway API's `RequestMirror` filter, for trying a new version on real
//! traffic.
//!
//! [`MirrorLayer::new(shadow)`](MirrorLayer::new) sends a copy of each request
//! (or of [`percent`](MirrorLayer::percent) of them, evenly spread) to
//! `shadow` in a task of its own, and the request itself on to the inner
//! service. The client only ever sees the inner service's answer: the copy is
//! sent after the request has been passed on, its response is read and dropped,
//! and its failure or slowness changes nothing for the client. Give `shadow` a
//! timeout of its own (a [`TimeoutLayer`](crate::TimeoutLayer)), or a stuck
//! mirror holds its places until it answers.
//!
//! Bounded: at most [`max_in_flight`](MirrorLayer::max_in_flight) copies at
//! once (default 64); past that, and for requests it cannot copy whole, the
//! copy is skipped, never the request. A body is copied as the inner service
//! reads it, frame by frame (the frames are shared, not duplicated), and only
//! when its `Content-Length` is at most [`max_body`](MirrorLayer::max_body)
//! (default 64 KiB); a body of unknown length, or an upgrade, is not mirrored.
//! [`MirrorStats`] counts what was sent and skipped.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::mirror::{MirrorBody, MirrorLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (seen, mut copies) = tokio::sync::mpsc::unbounded_channel();
//! let shadow = tower::service_fn(move |req: Request<MirrorBody>| {
//!     seen.send(req.uri().clone()).unwrap();
//!     async { Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new())) }
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(MirrorLayer::new(shadow).percent(50))
//!     .service_fn(|_req| async { Ok::<_, Infallible>(Response::new("primary")) });
//!
//! for i in 0..4 {
//!     let req = Request::get(format!("/items/{i}")).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
//!     assert_eq!(*svc.clone().oneshot(req).await.unwrap().body(), "primary");
//! }
//! // Every other request was copied to the shadow.
//! assert_eq!(copies.recv().await.unwrap(), "/items/1");
//! assert_eq!(copies.recv().await.unwrap(), "/items/3");
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;

/// What a mirror sent and skipped, shared by every clone of the layer.
#[derive(Debug, Default)]
pub struct MirrorStats {
    sent: AtomicU64,
    failed: AtomicU64,
    skipped_busy: AtomicU64,
    skipped_body: AtomicU64,
}

impl MirrorStats {
    /// Copies sent.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Copies whose mirror answered with an error or failed (after being sent).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Copies skipped because `max_in_flight` were already on their way.
    pub fn skipped_busy(&self) -> u64 {
        self.skipped_busy.load(Ordering::Relaxed)
    }

    /// Copies skipped because the request's body could not be copied whole.
    pub fn skipped_body(&self) -> u64 {
        self.skipped_body.load(Ordering::Relaxed)
    }
}

/// Mirrors requests to a second service. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct MirrorLayer<M> {
    mirror: M,
    percent: u64,
    max_body: u64,
    places: Arc<Semaphore>,
    seen: Arc<AtomicU64>,
    stats: Arc<MirrorStats>,
}

impl<M> MirrorLayer<M> {
    /// Mirrors every request to `mirror`.
    pub fn new(mirror: M) -> Self {
        Self {
            mirror,
            percent: 100,
            max_body: 64 * 1024,
            places: Arc::new(Semaphore::new(64)),
            seen: Arc::new(AtomicU64::new(0)),
            stats: Arc::default(),
        }
    }

    /// Mirrors this share of requests, `0` to `100` (higher is `100`), evenly
    /// spread: at 10, every tenth.
    pub fn percent(mut self, percent: u8) -> Self {
        self.percent = u64::from(percent.min(100));
        self
    }

    /// The most copies on their way at once.
    pub fn max_in_flight(mut self, copies: usize) -> Self {
        self.places = Arc::new(Semaphore::new(copies));
        self
    }

    /// The largest body copied.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// What this layer's mirrors sent and skipped.
    pub fn stats(&self) -> Arc<MirrorStats> {
        self.stats.clone()
    }
}

impl<S, M: Clone> Layer<S> for MirrorLayer<M> {
    type Service = Mirror<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Mirror { inner, layer: self.clone() }
    }
}

/// Mirrors requests to a second service. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct Mirror<S, M> {
    inner: S,
    layer: MirrorLayer<M>,
}

impl<S, M> Mirror<S, M> {
    crate::inner_service_accessors!();

    /// Whether the `n`th request (from 0) is mirrored: the count of mirrored
    /// requests steps up by one whenever `n × percent / 100` does.
    fn chosen(&self, n: u64) -> bool {
        (n + 1) * self.layer.percent / 100 > n * self.layer.percent / 100
    }
}

impl<S, M, B, RB> Service<Request<B>> for Mirror<S, M>
where
    S: Service<Request<Tee<B>>>,
    M: Service<Request<MirrorBody>, Response = Response<RB>> + Clone + Send + 'static,
    M::Future: Send,
    M::Error: Into<BoxError>,
    RB: Body + Send + 'static,
    B: Body<Data = Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.layer.percent == 0 || !self.chosen(self.layer.seen.fetch_add(1, Ordering::Relaxed)) {
            return self.inner.call(req.map(Tee::passing));
        }
        let stats = &self.layer.stats;
        let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let copyable = !req.headers().contains_key(header::UPGRADE)
            && (req.body().is_end_stream() || length.is_some_and(|n| n <= self.layer.max_body));
        if !copyable {
            stats.skipped_body.fetch_add(1, Ordering::Relaxed);
            return self.inner.call(req.map(Tee::passing));
        }
        let Ok(place) = self.layer.places.clone().try_acquire_owned() else {
            stats.skipped_busy.fetch_add(1, Ordering::Relaxed);
            return self.inner.call(req.map(Tee::passing));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (parts, body) = req.into_parts();
        let copy = Request::from_parts(parts.clone(), MirrorBody { frames: rx, length: length.unwrap_or(0) });
        let req = Request::from_parts(parts, Tee { inner: body, copy: Some(tx) });
        let future = self.inner.call(req);
        let (mirror, stats) = (self.layer.mirror.clone(), stats.clone());
        stats.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _place = place;
            match mirror.oneshot(copy).await.map_err(Into::into) {
                // Read to the end and dropped, so the connection can serve again.
                Ok(response) => {
                    let mut body = std::pin::pin!(response.into_body());
                    while let Some(frame) = body.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                }
                Err(err) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%err, "the mirror failed");
                }
            }
        });
        future
    }
}

pin_project! {
    /// A request body passed on whole, and copied to a mirror if one is waiting.
    #[derive(Debug)]
    pub struct Tee<B> {
        #[pin]
        inner: B,
        copy: Option<mpsc::UnboundedSender<Bytes>>,
    }
}

impl<B> Tee<B> {
    fn passing(inner: B) -> Self {
        Self { inner, copy: None }
    }
}

impl<B: Body<Data = Bytes>> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(copy), Some(data)) = (this.copy.as_ref(), frame.data_ref()) {
                    // A mirror gone away is no reason to stop.
                    let _ = copy.send(data.clone());
                }
            }
            // The end, or an error: the copy ends here too (short, if an error).
            Some(Err(_)) | None => *this.copy = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of a mirrored copy: the request's frames as its inner service reads them.
pub struct MirrorBody {
    frames: mpsc::UnboundedReceiver<Bytes>,
    length: u64,
}

impl fmt::Debug for MirrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorBody").field("length", &self.length).finish_non_exhaustive()
    }
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.length == 0 {
            return Poll::Ready(None);
        }
        self.frames.poll_recv(cx).map(|data| data.map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.length == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.length)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::{Empty, Full};
    use tower::ServiceBuilder;

    use super::*;

    type Copies = mpsc::UnboundedReceiver<(String, Bytes)>;

    /// A mirror recording each copy's path and body, after waiting `delay`.
    fn shadow(
        delay: Duration,
    ) -> (
        impl Service<Request<MirrorBody>, Response = Response<Empty<Bytes>>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static,
        Copies,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let svc = tower::service_fn(move |req: Request<MirrorBody>| {
            let tx = tx.clone();
            async move {
                tokio::time::sleep(delay).await;
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                tx.send((path, body)).unwrap();
                Ok::<_, Infallible>(Response::new(Empty::new()))
            }
        });
        (svc, rx)
    }

    /// The primary: answers with the body it read.
    fn primary() -> impl Service<Request<Tee<Full<Bytes>>>, Response = Response<Bytes>, Error = Infallible> + Clone {
        tower::service_fn(|req: Request<Tee<Full<Bytes>>>| async move {
            Ok::<_, Infallible>(Response::new(req.into_body().collect().await.unwrap().to_bytes()))
        })
    }

    fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
        Request::post(path).header("content-length", body.len()).body(Full::new(Bytes::from_static(body))).unwrap()
    }

    #[test]
    fn a_percentage_is_spread_evenly() {
        let (svc, _) = shadow(Duration::ZERO);
        let mirror = MirrorLayer::new(svc).percent(10).layer(primary());
        let chosen: Vec<u64> = (0..100).filter(|&n| mirror.chosen(n)).collect();
        assert_eq!(chosen, [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
        let (svc, _) = shadow(Duration::ZERO);
        let mirror = MirrorLayer::new(svc).percent(33).layer(primary());
        assert_eq!((0..1000).filter(|&n| mirror.chosen(n)).count(), 330);
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_gets_the_primary_answer_while_the_mirror_is_slow_and_the_mirror_gets_the_body() {
        let (svc, mut copies) = shadow(Duration::from_secs(30));
        let layer = MirrorLayer::new(svc);
        let stats = layer.stats();
        let svc = ServiceBuilder::new().layer(layer).service(primary());
        let started = tokio::time::Instant::now();
        let res = svc.oneshot(post("/orders", b"{\"qty\":2}")).await.unwrap();
        assert_eq!(res.into_body(), "{\"qty\":2}");
        assert_eq!(started.elapsed(), Duration::ZERO, "the primary waited for nothing");
        let (path, body) = copies.recv().await.unwrap();
        assert_eq!((path.as_str(), &body[..]), ("/orders", &b"{\"qty\":2}"[..]));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!((stats.sent(), stats.failed()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn copies_past_the_bound_or_too_big_are_skipped_and_the_requests_served() {
        let (svc, mut copies) = shadow(Duration::from_secs(60));
        let layer = MirrorLayer::new(svc).max_in_flight(2).max_body(4);
        let stats = layer.stats();
        let svc = ServiceBuilder::new().layer(layer).service(primary());
        for _ in 0..5 {
            assert_eq!(svc.clone().oneshot(post("/a", b"abc")).await.unwrap().into_body(), "abc");
        }
        assert_eq!(svc.clone().oneshot(post("/a", b"too big")).await.unwrap().into_body(), "too big");
        let chunked = Request::post("/a").body(Full::new(Bytes::from_static(b"x"))).unwrap();
        assert_eq!(svc.clone().oneshot(chunked).await.unwrap().into_body(), "x");
        assert_eq!((stats.sent(), stats.skipped_busy(), stats.skipped_body()), (2, 3, 2));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(copies.recv().await.unwrap().1, "abc");
        assert_eq!(copies.recv().await.unwrap().1, "abc");
        // The places are free again.
        svc.oneshot(post("/a", b"abc")).await.unwrap();
        assert_eq!(stats.sent(), 3);
    }

    #[tokio::test]
    async fn a_failing_mirror_is_counted_and_changes_nothing() {
        let failing = tower::service_fn(|_: Request<MirrorBody>| async {
            Err::<Response<Empty<Bytes>>, BoxError>("connection refused".into())
        });
        let layer = MirrorLayer::new(failing);
        let stats = layer.stats();
        let svc = ServiceBuilder::new().layer(layer).service(primary());
        assert_eq!(svc.oneshot(post("/a", b"ok")).await.unwrap().into_body(), "ok");
        for _ in 0..1_000 {
            if stats.failed() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!((stats.sent(), stats.failed()), (1, 1));
    }
}

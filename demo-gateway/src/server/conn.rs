//! The life of one client connection: its TLS handshake (bounded, under the
//! handshake budget), hyper's server for what it speaks, the activity that says
//! when it idles, parking between HTTP/1.1 requests (no buffer held), closing at
//! its timeouts, making room under pressure, and stopping on drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::uri::Scheme;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tower::{Service, ServiceExt};
use tower_gateway::error::BoxError;
use tower_gateway::{ClientScheme, PeerAddr};

use super::admission::{Budget, Places};
use super::app::ResponseBody;
use super::client_io::{ClientIo, IoState, Speaks, Transport};
use super::workers::Workers;
use crate::plan::{Drain, Shared};

/// What one client connection is doing: requests in flight and when it was last
/// busy, for closing it when it idles.
struct Activity {
    /// Says, once set, to close HTTP/1.1 connections after each response.
    drain: Drain,
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
    fn new(drain: Drain) -> Self {
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
pub(super) struct Conns<S> {
    pub(super) builders: Arc<Builders>,
    pub(super) svc: Arc<S>,
    /// Metrics and the drain flag.
    pub(super) shared: Arc<Shared>,
    /// The listener's cap: a TLS connection takes its place there once its
    /// handshake is done, and idle connections hear its pressure.
    pub(super) budget: Budget,
    pub(super) stopping: tokio::sync::watch::Receiver<bool>,
    pub(super) header_timeout: Duration,
    pub(super) idle_timeout: Duration,
    /// `Strict-Transport-Security` for responses over TLS.
    pub(super) hsts: Option<HeaderValue>,
}

/// hyper's servers, set up once.
pub(super) struct Builders {
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
    pub(super) fn spawn(
        &self,
        workers: &Workers,
        stream: TcpStream,
        places: Places,
        peer: SocketAddr,
        tls: Option<Handshake>,
    ) {
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
                return conns.shared.metrics.tls_handshake("evicted");
            }
        };
        match accepted {
            Ok(Ok(stream)) => {
                conns.shared.metrics.tls_handshake("ok");
                let Places { listener: handshaking, client } = places;
                drop(handshaking);
                let Some(listener) = conns.budget.take() else {
                    conns.shared.metrics.connection_refused();
                    return tracing::debug!(%peer, "TLS connection refused at max_connections");
                };
                // Boxed: awaited in place, it would be held twice here.
                Box::pin(Self::run(conns, Transport::Tls(Box::new(stream)), Places { listener, client }, peer)).await;
            }
            Ok(Err(err)) => {
                tracing::debug!(%peer, %err, "TLS handshake failed");
                conns.shared.metrics.tls_handshake("failed");
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                conns.shared.metrics.tls_handshake("timed_out");
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
        let (mut serving, activity, io_state, builders, shared, pressure, mut stopping, header_timeout, idle_timeout) = {
            let Conns { builders, svc, shared, budget, stopping, header_timeout, idle_timeout, hsts } = *conns;
            let pressure = budget.pressure().clone();
            let activity = Arc::new(Activity::new(shared.drain.clone()));
            let io_state = Arc::new(IoState::default());
            let io = ClientIo::new(transport, io_state.clone());
            let tls = !io.is_plain();
            let svc =
                Tracked { inner: svc, activity: activity.clone(), peer, tls, hsts: if tls { hsts } else { None } };
            // An upgraded connection leaves this task (and its slot) for the proxy's tunnel.
            let serving = if tls {
                Self::serve(&builders, Speaks::Either, io, svc)
            } else {
                shared.metrics.connection_parked(true);
                Serving::Parked(Box::new((io, svc)))
            };
            (serving, activity, io_state, builders, shared, pressure, stopping, header_timeout, idle_timeout)
        };
        let metrics = &shared.metrics;
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

/// hyper's servers for heads of at most `max_header_bytes`.
pub(super) fn builders(settings: &crate::plan::Settings, max_header_bytes: usize) -> Arc<Builders> {
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

/// A TLS connection's handshake: bounded in time, holding a place in the
/// handshake budget (not the listener's); under that budget's pressure, one
/// that has gone on for `SILENT_UNDER_PRESSURE` gives up its place.
pub(super) struct Handshake {
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    pub(super) timeout: Duration,
    pub(super) budget: Budget,
}

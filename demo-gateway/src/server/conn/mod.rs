//! The life of one client connection: its TLS handshake (bounded, under the
//! handshake budget), hyper's server for what it speaks ([`Serving`]: parked,
//! HTTP/1.1 or either), the [`activity`] that says when it idles, parking
//! between HTTP/1.1 requests (no buffer held), closing at its timeouts, making
//! room under pressure, and stopping on drain ([`Stop`]). When to park, time
//! out and make room is decided by the pure functions of [`policy`]; what the
//! rest of the gateway says is heard through a [`gate`].

mod activity;
mod gate;
mod policy;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tower::Service;
use tower_gateway::error::BoxError;

use super::admission::{Budget, Places};
use super::app::ResponseBody;
use super::client_io::{ClientIo, IoState, Speaks, Transport};
use super::workers::Workers;
use crate::shared::Shared;
use activity::{Activity, Tracked};
use gate::{Gate, Signal};
use policy::Park;

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
                if policy::handshake_makes_room(started.elapsed()) {
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

    /// Serves one connection until it ends. One that can speak HTTP/1.1
    /// (plain, or TLS with `http/1.1` by ALPN) waits for its first bytes
    /// holding no buffer of hyper's, and goes back to that between HTTP/1.1
    /// requests; HTTP/2 (and TLS without ALPN) is hyper's for its whole life.
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
            let serving = if io.parkable() {
                shared.metrics.connection_parked(true);
                Serving::Parked(Box::new((io, svc)))
            } else {
                Self::serve(&builders, Speaks::Either, io, svc)
            };
            (serving, activity, io_state, builders, shared, pressure, stopping, header_timeout, idle_timeout)
        };
        let metrics = &shared.metrics;
        let _places = places;
        metrics.connections().inc();
        let mut stop = Stop::Serving;
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
            if stop == Stop::Asked && started {
                match &mut serving {
                    // Between requests: nothing to finish.
                    Serving::Parked(_) => break,
                    Serving::Http1(conn) => conn.as_mut().graceful_shutdown(),
                    Serving::Auto(conn) => conn.as_mut().graceful_shutdown(),
                    Serving::Gone => {}
                }
                stop = Stop::Told;
            }
            // An idle HTTP/1.1 connection waits for its next request head for the
            // header timeout; HTTP/2 ones wait the idle timeout.
            let http1 = matches!(serving, Serving::Parked(_) | Serving::Http1(_));
            let limit = policy::idle_limit(http1, header_timeout, idle_timeout);
            let parks = matches!(serving, Serving::Http1(_)) && stop != Stop::Told;
            // Busy connections are looked at again later; idle ones at their
            // deadline, or when they may try parking again.
            let deadline = match policy::deadline(activity.snapshot(), header_timeout, limit) {
                Some(deadline) => activity.at(deadline),
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
                    Event::Idle => match policy::when_answered(activity.snapshot()) {
                        Park::Now => park_now = parks,
                        Park::Later(after) => park_retry = Some(Instant::now() + after),
                    },
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
                    if policy::timed_out(activity.snapshot(), activity.elapsed(), header_timeout, limit) {
                        metrics.connection_closed_idle();
                        break;
                    }
                    if park_retry.is_some_and(|retry| Instant::now() >= retry) {
                        park_retry = None;
                        park_now = parks && !activity.snapshot().busy;
                    }
                }
                signal = std::future::poll_fn(|cx| gate.poll(cx, |cx| {
                    if stop == Stop::Serving && stop_changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::Stop);
                    }
                    if room.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::MakeRoom);
                    }
                    if stop == Stop::Asked && first.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Signal::FirstRequest);
                    }
                    Poll::Pending
                })) => {
                    // Every signal is looked at again at the next poll.
                    gate.open();
                    match signal {
                        Signal::Stop => stop = Stop::Asked,
                        Signal::MakeRoom => {
                            room.set(pressure.notified());
                            if policy::makes_room(activity.snapshot(), activity.elapsed()) {
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
                park_retry = Some(Instant::now() + policy::PARK_AFTER);
                continue;
            }
            io_state.parking.store(true, Ordering::Relaxed);
            conn.as_mut().graceful_shutdown();
            let polled = poll_once(conn.as_mut()).await;
            io_state.parking.store(false, Ordering::Relaxed);
            match polled {
                Poll::Pending => stop = Stop::Told,
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

/// Where a connection is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Not asked to.
    Serving,
    /// The gateway is stopping, and the connection has not sent its first
    /// request yet: it is told once that request begins (it may be on the wire).
    Asked,
    /// hyper was told to finish (a graceful shutdown: after the message in
    /// hand, `Connection: close`), on stop or when parking found it busy.
    Told,
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

//! The HTTP server around the route table: ops routes on an axum `Router`; the
//! client's address decided once; the request id and the access log; tower-http's
//! CORS, panic catching, global timeout and body limit; on hyper's HTTP/1.1
//! server (h2c and TLS: hyper-util's auto server) with a header read timeout, a
//! head size cap and a graceful shutdown, its connections served on worker
//! threads. An HTTP/1.1 connection (plain, or TLS with `http/1.1` by ALPN)
//! waiting for its next request is parked: hyper lets go of it and its buffers
//! are freed until the client speaks again.
//!
//! By concern: [`live`] (the generation served, its reloads and the admin's
//! config endpoints), [`app`] (the HTTP app), [`ops`] (the gateway's own routes),
//! [`listeners`] (binding and admission), [`conn`] (one connection's life),
//! [`admission`] (the caps), [`workers`] (the runtimes connections run on) and
//! [`client_io`] (a connection's transport, which parking takes back from hyper).

mod admission;
mod app;
mod client_io;
mod conn;
mod listeners;
mod live;
mod ops;
mod workers;

pub use listeners::bind;
pub use live::{Gateway, ReloadError, Reloaded};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};

use crate::abort_on_drop::AbortOnDrop;
use admission::{Budget, PerClient};
use app::side_app;
use conn::{Conns, Handshake, builders};
use listeners::{
    ADMIN_MAX_CONNECTIONS, REDIRECT_MAX_CONNECTIONS, SIDE_MAX_HEADER_BYTES, SideListener, Which, accept_maybe, admit,
    side_listener, tell,
};
use live::Current;
use ops::to_https;
use workers::Workers;

/// Serves `gateway` (or a plan: its first generation) on `listener` until
/// `shutdown` resolves, taking each new configuration it is given (see
/// [`Gateway`]) from the next request on; then stops accepting and
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
pub async fn serve(
    gateway: impl Into<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let gateway = gateway.into();
    // What only a restart changes is read from the first generation: a reload
    // that would change it is refused. Copied: a generation held here would
    // live as long as the server.
    let (settings, shared) = {
        let first = gateway.current_full();
        first.plan.resolve_dns().await;
        first.plan.prefetch_keys().await;
        (first.plan.settings.clone(), first.plan.shared.clone())
    };
    let settings = &settings;
    let _reloads = gateway.watch();
    let metrics = &shared.metrics;
    // Every connection task holds a receiver: `true` asks it to stop, and the
    // sender's `closed()` says every connection has ended.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let budget = Budget::new(settings.max_connections);
    let clients = PerClient::new(settings.max_connections_per_client, settings.trusted_proxies.clone());
    let conns = Conns {
        builders: builders(settings, settings.max_header_bytes),
        svc: Arc::new(Current::Live(gateway.clone(), |generation| &generation.app)),
        shared: shared.clone(),
        budget: budget.clone(),
        stopping: stopping.clone(),
        header_timeout: settings.header_read_timeout,
        idle_timeout: settings.idle_timeout,
        hsts: settings.tls.as_ref().and_then(|tls| tls.hsts.clone()),
    };
    let side_builders = builders(settings, SIDE_MAX_HEADER_BYTES);
    let admin = match settings.admin_listen {
        Some(addr) => {
            let app = Current::Live(gateway.clone(), |generation| &generation.admin);
            let admin = side_listener(addr, app, ADMIN_MAX_CONNECTIONS, &conns, &side_builders).await?;
            let config = if settings.admin_token.is_some() { ", /config, /config/reload" } else { "" };
            tracing::info!(addr = %admin.listener.local_addr()?, "admin listener: /readyz, /metrics{config}");
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
    let redirect = match tls.as_ref().and_then(|(tls, ..)| tls.redirect_listen.map(|addr| (addr, tls))) {
        Some((addr, tls)) => {
            let https_port = tls.listen.port();
            let router = Router::new().fallback(move |headers: http::HeaderMap, uri: http::Uri| async move {
                to_https(&headers, &uri, https_port)
            });
            let app = if tls.redirect_serves_grpc {
                Current::GrpcOr(gateway.clone(), side_app(router))
            } else {
                Current::Fixed(side_app(router))
            };
            let redirect = side_listener(addr, app, REDIRECT_MAX_CONNECTIONS, &conns, &side_builders).await?;
            let grpc = if tls.redirect_serves_grpc { "; gRPC served (h2c)" } else { "" };
            tracing::info!(addr = %redirect.listener.local_addr()?, "redirect listener: 308 to HTTPS{grpc}");
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
        let (certificate, every, shared) = (tls.certificate.clone(), tls.reload_every, shared.clone());
        AbortOnDrop(tokio::spawn(certificate.watch(every, move |ok| shared.metrics.tls_reload(ok))))
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
                shared.drain.start();
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
    shared.drain.start();
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
    let tunnels = &shared.tunnels;
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

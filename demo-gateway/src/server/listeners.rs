//! Listeners: binding, admission (each listener's cap and each client's), the
//! refusal a plain client is told, and the admin and redirect listeners served
//! like the main ones under caps of their own.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::admission::{Budget, PerClient, Places};
use super::conn::{Builders, Conns};
use super::live::Current;

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
pub(super) async fn accept_maybe(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Connections the admin listener (`/readyz`, `/metrics`) takes at once: its
/// clients are a scraper and a health checker.
pub(super) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Connections the redirect listener takes at once: each is answered with one
/// `308` and goes on to HTTPS.
pub(super) const REDIRECT_MAX_CONNECTIONS: usize = 1024;

/// The largest request head the admin and redirect listeners read (hyper's
/// least): their requests carry no more than a path and a `Host`.
pub(super) const SIDE_MAX_HEADER_BYTES: usize = 8 * 1024;

/// A listener beside the main ones, served like them (header timeout, idle
/// close, drain) under a small cap of its own.
pub(super) struct SideListener {
    pub(super) listener: TcpListener,
    pub(super) conns: Conns<Current>,
}

/// Binds a side listener at `addr` for `app`.
pub(super) async fn side_listener(
    addr: SocketAddr,
    app: Current,
    cap: usize,
    template: &Conns<impl Sized>,
    builders: &Arc<Builders>,
) -> std::io::Result<SideListener> {
    let listener = TcpListener::bind(addr).await?;
    let conns = Conns {
        builders: builders.clone(),
        svc: Arc::new(app),
        shared: template.shared.clone(),
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
pub(super) fn admit(
    budget: &Budget,
    clients: &Arc<PerClient>,
    peer: SocketAddr,
    metrics: &crate::metrics::Metrics,
    refuse: impl FnOnce(&'static [u8]),
) -> Option<Places> {
    let Ok(client) = clients.take(peer.ip()) else {
        refuse(super::admission::REFUSED_CLIENT);
        metrics.client_connection_refused();
        return None;
    };
    let Some(listener) = budget.take() else {
        refuse(super::admission::REFUSED);
        metrics.connection_refused();
        return None;
    };
    Some(Places { listener, client })
}

/// Tells a plain client why it is refused: a non-blocking write into a fresh
/// socket's buffer.
pub(super) fn tell(stream: &TcpStream) -> impl FnOnce(&'static [u8]) + '_ {
    |refusal| drop(stream.try_write(refusal))
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which {
    Plain,
    Tls,
    Admin,
    Redirect,
}

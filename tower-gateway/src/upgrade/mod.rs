//! WebSocket through [`Proxy`](crate::Proxy): the upgraded connections it has
//! spliced, bounded in number, closed when idle, and closable all at once.
//!
//! An HTTP/1.1 request asking to `Upgrade: websocket` is forwarded with its
//! upgrade headers when the server it arrived on can hand over the connection
//! (hyper's `serve_connection_with_upgrades`, axum's `serve`: hyper's
//! [`OnUpgrade`] is in the request's extensions). When the upstream answers
//! `101 Switching Protocols`, the `101` goes back to the client and the proxy
//! copies bytes both ways until either side closes, in a task of its own. Any
//! other answer (the upstream refused the upgrade) is relayed as it is.
//!
//! Everything in front of the proxy runs first, as for any request: a layer that
//! refuses the request (a missing token, a rate limit) refuses the upgrade.
//! Remove [`OnUpgrade`] from the extensions to have a request forwarded as a
//! plain one, its upgrade headers dropped.
//!
//! Each spliced connection holds a place among [`Tunnels`]: when they are all
//! taken the request is answered `503` (`too_many_upgrades`) before it is sent
//! upstream. Behind retries or a balancer, take the place in front of them
//! with [`Tunnels::reserve`], so that a full set is answered once, not retried
//! and not counted against an endpoint's health: [`ReserveUpgradeLayer`] does
//! that, and can put the requests' tunnels in a [`TunnelGroup`] (a route's,
//! say) closed together when their owner says. HTTP/2's extended CONNECT (RFC
//! 8441) is not supported: a WebSocket over HTTP/2 is forwarded as a plain
//! request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_gateway::upgrade::Tunnels;
//! use tower_gateway::{Body, Proxy};
//!
//! // At most 500 WebSockets open; one silent for 5 minutes is closed.
//! let tunnels = Tunnels::new(500, Duration::from_secs(300));
//! let proxy: Proxy<Body> = Proxy::builder().tunnels(tunnels.clone()).build();
//! // At shutdown, once requests have drained: `tunnels.close_all(); tunnels.closed().await;`
//! # let _ = proxy;
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
pub use hyper::upgrade::OnUpgrade;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::PeerAddr;
use crate::client_addr::{ClientAddr, client_block};

mod handshake;
mod reserve;
mod splice;

pub use self::handshake::{accept_key, accepts, restore, websocket_upgrade};
pub use self::reserve::{ReserveUpgrade, ReserveUpgradeLayer, ResponseFuture};
pub(crate) use self::splice::splice;

/// The WebSocket connections a [`Proxy`](crate::Proxy) has spliced: a cap on
/// how many are open, an idle timeout, counters, and a way to close them all.
/// Clones share one set. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Tunnels {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max: usize,
    idle_timeout: Duration,
    /// Tunnels one client may have open (by its [`client_block`]).
    max_per_client: usize,
    /// The longest a tunnel stays open.
    max_lifetime: Option<Duration>,
    /// Tunnels open per client, for those that have any.
    per_client: std::sync::Mutex<HashMap<IpAddr, usize>>,
    active: AtomicUsize,
    opened: AtomicU64,
    refused: AtomicU64,
    closed_idle: AtomicU64,
    closed_at_deadline: AtomicU64,
    closed_by_group: AtomicU64,
    /// `true` asks every tunnel to close.
    close: watch::Sender<bool>,
    /// Signalled whenever a tunnel ends.
    ended: Notify,
}

/// What [`Tunnels`] has counted since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelStats {
    /// Upgrades sent upstream (a place was free).
    pub opened: u64,
    /// Upgrades answered `503`: every place was taken.
    pub refused: u64,
    /// Tunnels closed because neither side sent a byte for the idle timeout.
    pub closed_idle: u64,
    /// Tunnels closed at the end of their lifetime or at their request's
    /// [`CloseAt`] (the token that opened them expired).
    pub closed_at_deadline: u64,
    /// Tunnels closed because their [`TunnelGroup`] was closed.
    pub closed_by_group: u64,
}

/// Tunnels closed together, on their owner's word: put one in the extensions of
/// the requests that may open a tunnel (a gateway puts its route's), and
/// [`close`](Self::close) ends every tunnel those requests opened, leaving the
/// others open. Clones are one group.
///
/// ```
/// use tower_gateway::upgrade::TunnelGroup;
///
/// let route = TunnelGroup::new();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(route.clone());
/// // ... the proxy opens a tunnel for `req`; later, the route is removed:
/// route.close();
/// assert!(route.is_closed());
/// ```
#[derive(Debug, Clone)]
pub struct TunnelGroup {
    close: Arc<watch::Sender<bool>>,
}

impl Default for TunnelGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl TunnelGroup {
    /// A group with no tunnel yet.
    pub fn new() -> Self {
        Self { close: Arc::new(watch::channel(false).0) }
    }

    /// Closes every tunnel of the group, and refuses the group new ones.
    pub fn close(&self) {
        self.close.send_replace(true);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        *self.close.borrow()
    }
}

/// When the tunnel a request opens is to be closed, in its extensions: a layer
/// that authenticated the request puts its token's expiry here, so that no
/// tunnel outlives the token that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseAt(pub std::time::SystemTime);

/// How [`Tunnels`] are bounded beyond their number and idle timeout. See
/// [`Tunnels::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TunnelsBuilder {
    max: usize,
    idle_timeout: Duration,
    max_per_client: usize,
    max_lifetime: Option<Duration>,
}

impl TunnelsBuilder {
    /// At most `max` tunnels open from one client: its
    /// [`ClientAddr`] when a
    /// [`ClientAddrLayer`](crate::client_addr::ClientAddrLayer) decided it, else
    /// its [`PeerAddr`], an IPv6 client by its /64. A request
    /// with neither is not capped per client.
    pub fn max_per_client(mut self, max: usize) -> Self {
        self.max_per_client = max;
        self
    }

    /// Every tunnel is closed after `lifetime`, busy or not: a client that
    /// needs one for longer opens it again.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = Some(lifetime);
        self
    }

    /// The set.
    pub fn build(self) -> Tunnels {
        let shared = Shared {
            max: self.max,
            idle_timeout: self.idle_timeout,
            max_per_client: self.max_per_client,
            max_lifetime: self.max_lifetime,
            per_client: std::sync::Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            closed_idle: AtomicU64::new(0),
            closed_at_deadline: AtomicU64::new(0),
            closed_by_group: AtomicU64::new(0),
            close: watch::channel(false).0,
            ended: Notify::new(),
        };
        Tunnels { shared: Arc::new(shared) }
    }
}

impl Default for Tunnels {
    /// At most 1024 open at once, each closed after 60 s with no byte either way.
    fn default() -> Self {
        Self::new(1024, Duration::from_secs(60))
    }
}

impl Tunnels {
    /// At most `max` tunnels open at once, each closed when neither side has
    /// sent a byte for `idle_timeout`.
    pub fn new(max: usize, idle_timeout: Duration) -> Self {
        Self::builder(max, idle_timeout).build()
    }

    /// Like [`new`](Self::new), with a cap per client and a lifetime to set.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_gateway::upgrade::Tunnels;
    ///
    /// // 500 at most, 10 from one client, each for an hour at most.
    /// let tunnels = Tunnels::builder(500, Duration::from_secs(300))
    ///     .max_per_client(10)
    ///     .max_lifetime(Duration::from_secs(3600))
    ///     .build();
    /// # let _ = tunnels;
    /// ```
    pub fn builder(max: usize, idle_timeout: Duration) -> TunnelsBuilder {
        TunnelsBuilder { max, idle_timeout, max_per_client: usize::MAX, max_lifetime: None }
    }

    /// How many are open now (upgrades on their way upstream included).
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// The counters so far.
    pub fn stats(&self) -> TunnelStats {
        let s = &self.shared;
        TunnelStats {
            opened: s.opened.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            closed_idle: s.closed_idle.load(Ordering::Relaxed),
            closed_at_deadline: s.closed_at_deadline.load(Ordering::Relaxed),
            closed_by_group: s.closed_by_group.load(Ordering::Relaxed),
        }
    }

    /// Closes every tunnel (both sides' write halves are shut, then the
    /// connections dropped) and refuses new upgrades from now on.
    pub fn close_all(&self) {
        self.shared.close.send_replace(true);
    }

    /// Resolves once no tunnel is open.
    pub async fn closed(&self) {
        loop {
            let ended = self.shared.ended.notified();
            if self.active() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Takes a place for the WebSocket upgrade `req` asks for (nothing to do for
    /// any other request), ahead of the proxy: call it outside retries and
    /// balancing. The proxy that carries the upgrade uses the place; it is given
    /// back when the request ends without one. `Err` when every place is
    /// taken: answer its [`into_response`](TooManyUpgrades::into_response).
    pub fn reserve<B>(&self, req: &mut Request<B>) -> Result<(), TooManyUpgrades> {
        if req.extensions().get::<OnUpgrade>().is_none() || websocket_upgrade(req).is_none() {
            return Ok(());
        }
        let place = self.try_open(req).ok_or(TooManyUpgrades)?;
        req.extensions_mut().insert(Reserved(Arc::new(std::sync::Mutex::new(Some(place)))));
        Ok(())
    }

    /// The place reserved for `req`, or a new one (a retry after an attempt
    /// that used the reserved place and failed, giving it back).
    pub(crate) fn place_for<B>(&self, req: &Request<B>) -> Option<Place> {
        let reserved = req.extensions().get::<Reserved>();
        reserved
            .and_then(|Reserved(place)| place.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take())
            .or_else(|| self.try_open(req))
    }

    /// A place for the tunnel `req` opens, unless all are taken, its client has
    /// all it may, or they are closing.
    fn try_open<B>(&self, req: &Request<B>) -> Option<Place> {
        let extensions = req.extensions();
        let client =
            extensions.get::<ClientAddr>().map(ClientAddr::ip).or_else(|| PeerAddr::of(extensions).map(|p| p.ip()));
        let now = Instant::now();
        let lifetime = self.shared.max_lifetime.map(|lifetime| now + lifetime);
        let expiry = extensions
            .get::<CloseAt>()
            .map(|CloseAt(at)| now + at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO));
        let close_at = match (lifetime, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let group = extensions.get::<TunnelGroup>();
        if group.is_some_and(TunnelGroup::is_closed) {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut place = self.open(client.map(client_block), close_at)?;
        place.group = group.map(|group| group.close.subscribe());
        Some(place)
    }

    /// A place for one more tunnel from `client`, closed at `close_at`.
    fn open(&self, client: Option<IpAddr>, close_at: Option<Instant>) -> Option<Place> {
        let s = &self.shared;
        let taken = !*s.close.borrow()
            && s.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < s.max).then_some(n + 1)).is_ok();
        if !taken {
            s.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // From here the place is ours: dropped, it gives everything back.
        let mut place = Place { tunnels: self.clone(), client: None, close_at, group: None };
        if let Some(client) = client {
            let mut open = s.per_client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = open.entry(client).or_insert(0);
            if *count >= s.max_per_client {
                if *count == 0 {
                    open.remove(&client);
                }
                drop(open);
                s.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            *count += 1;
            place.client = Some(client);
        }
        s.opened.fetch_add(1, Ordering::Relaxed);
        Some(place)
    }
}

/// Every place among [`Tunnels`] is taken (or they are closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyUpgrades;

impl TooManyUpgrades {
    /// `503` with the JSON code `too_many_upgrades`.
    pub fn into_response(self) -> http::Response<crate::Body> {
        self.answer()
    }

    fn answer<B: From<bytes::Bytes>>(self) -> http::Response<B> {
        crate::error::json_error(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_upgrades",
            "too many upgraded connections are open",
        )
    }
}

impl std::fmt::Display for TooManyUpgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many upgraded connections are open")
    }
}

impl std::error::Error for TooManyUpgrades {}

/// A place taken by [`Tunnels::reserve`], in the request's extensions until
/// the proxy uses it (shared by the copies a retry makes).
#[derive(Debug, Clone)]
struct Reserved(Arc<std::sync::Mutex<Option<Place>>>);

/// One tunnel's place among [`Tunnels`] and among its client's, given back
/// when dropped; and when the tunnel is to be closed.
#[derive(Debug)]
pub(crate) struct Place {
    tunnels: Tunnels,
    client: Option<IpAddr>,
    close_at: Option<Instant>,
    /// Says `true` when the tunnel's [`TunnelGroup`] is closed.
    group: Option<watch::Receiver<bool>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let shared = &self.tunnels.shared;
        if let Some(client) = self.client {
            let mut open = shared.per_client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(count) = open.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&client);
                }
            }
        }
        shared.active.fetch_sub(1, Ordering::AcqRel);
        shared.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests;

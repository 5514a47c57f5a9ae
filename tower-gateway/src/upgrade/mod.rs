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
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
pub use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::PeerAddr;
use crate::client_addr::{ClientAddr, client_block};

mod reserve;

pub use reserve::{ReserveUpgrade, ReserveUpgradeLayer, ResponseFuture};

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

/// The `Sec-WebSocket-Key` of a request that opens a WebSocket the proxy can
/// carry (RFC 6455 §4.1): HTTP/1.1, `GET`, `Connection: upgrade`, `Upgrade`
/// listing `websocket`, `Sec-WebSocket-Version: 13` and a key of 16 bytes in
/// base64. Anything else is no upgrade: a proxy forwards it as a plain request,
/// its upgrade headers dropped.
pub fn websocket_upgrade<B>(req: &Request<B>) -> Option<&HeaderValue> {
    if req.version() != Version::HTTP_11 || req.method() != Method::GET {
        return None;
    }
    let headers = req.headers();
    if !headers.get(header::UPGRADE).is_some_and(|v| has_token(v, "websocket"))
        || !headers.get_all(header::CONNECTION).iter().any(|v| has_token(v, "upgrade"))
        || headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13")
    {
        return None;
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = keys.next().filter(|_| keys.next().is_none())?;
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.as_bytes());
    decoded.is_ok_and(|nonce| nonce.len() == 16).then_some(key)
}

/// Whether a comma-separated header value lists `token`, in any case.
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Puts back the headers of a WebSocket upgrade that
/// [`remove_hop_by_hop`](crate::proxy::remove_hop_by_hop) took out: exactly
/// `Connection: upgrade` and `Upgrade: websocket`, whatever else the client
/// listed, so that no upstream is asked to switch to another protocol.
pub fn restore(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 §4.2.2): the base64
/// of the SHA-1 of the key and the protocol's GUID.
///
/// ```
/// // The example of RFC 6455 §1.3.
/// let accept = tower_gateway::upgrade::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
/// assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sha1.finalize())
}

/// Whether a `101` with `headers` accepts the WebSocket opening handshake sent
/// with `key`: `Upgrade: websocket` and the `Sec-WebSocket-Accept` the key
/// calls for. Anything else is an upstream switching to a protocol nobody
/// asked for, and is not to be spliced to the client.
pub fn accepts(headers: &HeaderMap, key: &HeaderValue) -> bool {
    let websocket = headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let accept = headers.get(header::SEC_WEBSOCKET_ACCEPT);
    websocket && accept.is_some_and(|accept| accept.as_bytes() == accept_key(key.as_bytes()).as_bytes())
}

/// Waits for both sides to switch protocols, then copies bytes both ways until
/// either closes, the tunnel idles out, its deadline or its group's close
/// comes, or [`Tunnels::close_all`] is called.
pub(crate) async fn splice(mut place: Place, client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(%err, "an upgrade did not complete");
            return;
        }
    };
    let shared = place.tunnels.shared.clone();
    let close_at = place.close_at;
    let last = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (mut client_rx, mut client_tx) =
        tokio::io::split(Watched { io: TokioIo::new(client), last: last.clone(), epoch });
    let (mut upstream_rx, mut upstream_tx) =
        tokio::io::split(Watched { io: TokioIo::new(upstream), last: last.clone(), epoch });
    // Each direction ends at its reader's end of stream, passed on as a shutdown
    // of the writer (a FIN, after every byte before it).
    let up = std::pin::pin!(async {
        let copied = tokio::io::copy(&mut client_rx, &mut upstream_tx).await;
        let _ = upstream_tx.shutdown().await;
        copied
    });
    let down = std::pin::pin!(async {
        let copied = tokio::io::copy(&mut upstream_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
        copied
    });
    let mut close = shared.close.subscribe();
    let mut group = place.group.take();
    tokio::select! {
        () = both_ways(up, down) => tracing::debug!("tunnel closed"),
        () = idle(&last, epoch, shared.idle_timeout) => {
            shared.closed_idle.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(idle_timeout = ?shared.idle_timeout, "tunnel closed: idle");
        }
        () = async {
            match close_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        } => {
            shared.closed_at_deadline.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("tunnel closed: its lifetime or its token ended");
        }
        () = async { drop(close.wait_for(|close| *close).await) } => {
            tracing::debug!("tunnel closed: shutting down");
        }
        () = async {
            match &mut group {
                // A group dropped unclosed closes nothing.
                Some(group) => {
                    if group.wait_for(|close| *close).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        } => {
            shared.closed_by_group.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("tunnel closed: its group was closed");
        }
    }
    drop(place);
}

/// How long the other direction may go on once one has ended: a WebSocket's
/// closing handshake has one side close right after the other.
const LINGER: Duration = Duration::from_secs(2);

/// Runs both directions until one ends, then the other for up to [`LINGER`].
async fn both_ways<U, D>(mut up: Pin<&mut U>, mut down: Pin<&mut D>)
where
    U: Future<Output = std::io::Result<u64>>,
    D: Future<Output = std::io::Result<u64>>,
{
    let first = tokio::select! {
        copied = &mut up => {
            let _ = tokio::time::timeout(LINGER, &mut down).await;
            copied
        }
        copied = &mut down => {
            let _ = tokio::time::timeout(LINGER, &mut up).await;
            copied
        }
    };
    if let Err(err) = first {
        tracing::debug!(%err, "tunnel ended with an error");
    }
}

/// Resolves once no byte has moved for `timeout`.
async fn idle(last: &AtomicU64, epoch: Instant, timeout: Duration) {
    loop {
        let deadline = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An upgraded connection that records when it last read a byte.
struct Watched<I> {
    io: I,
    /// Milliseconds since `epoch` of the last read, shared by both sides.
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of RFC 6455's example.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_request(version: Version, connection: &str, upgrade: &str) -> Request<()> {
        Request::builder()
            .version(version)
            .header(header::CONNECTION, connection)
            .header(header::UPGRADE, upgrade)
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, KEY)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_http1_websocket_upgrades_are_carried() {
        let yes = upgrade_request(Version::HTTP_11, "keep-alive, Upgrade", "WebSocket");
        assert_eq!(websocket_upgrade(&yes).unwrap(), KEY);
        let listed = upgrade_request(Version::HTTP_11, "upgrade", "websocket, h2c");
        assert_eq!(websocket_upgrade(&listed).unwrap(), KEY, "carried, as a WebSocket alone");
        assert!(websocket_upgrade(&upgrade_request(Version::HTTP_11, "keep-alive", "websocket")).is_none());
        assert!(websocket_upgrade(&upgrade_request(Version::HTTP_11, "upgrade", "h2c")).is_none());
        assert!(websocket_upgrade(&upgrade_request(Version::HTTP_10, "upgrade", "websocket")).is_none());
        let mut post = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
        *post.method_mut() = Method::POST;
        assert!(websocket_upgrade(&post).is_none());
    }

    #[test]
    fn an_upgrade_without_a_version_13_handshake_key_is_no_upgrade() {
        let with = |name: header::HeaderName, value: Option<&str>| {
            let mut req = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
            match value {
                Some(value) => req.headers_mut().insert(name, HeaderValue::from_str(value).unwrap()),
                None => req.headers_mut().remove(name),
            };
            websocket_upgrade(&req).is_some()
        };
        assert!(!with(header::SEC_WEBSOCKET_KEY, None));
        assert!(!with(header::SEC_WEBSOCKET_KEY, Some("not base64!")));
        assert!(!with(header::SEC_WEBSOCKET_KEY, Some("AAAA")), "a key of 3 bytes, not 16");
        assert!(!with(header::SEC_WEBSOCKET_VERSION, None));
        assert!(!with(header::SEC_WEBSOCKET_VERSION, Some("8")));
        let mut two = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
        two.headers_mut().append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
        assert!(websocket_upgrade(&two).is_none(), "two keys");
    }

    #[test]
    fn restore_asks_for_a_websocket_and_nothing_else() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket, h2c"));
        restore(&mut headers);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
    }

    #[test]
    fn only_a_websocket_accepted_for_the_key_sent_is_accepted() {
        let key = HeaderValue::from_static(KEY);
        let answer = |upgrade: &'static str, accept: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static(accept));
            accepts(&headers, &key)
        };
        assert!(answer("websocket", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(answer("WebSocket", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(!answer("h2c", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "another protocol");
        assert!(!answer("websocket", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="), "an accept for another key");
        assert!(!accepts(&HeaderMap::new(), &key), "no headers at all");
    }

    #[test]
    fn places_are_bounded_and_given_back() {
        let tunnels = Tunnels::new(2, Duration::from_secs(1));
        let a = tunnels.open(None, None).unwrap();
        let _b = tunnels.open(None, None).unwrap();
        assert!(tunnels.open(None, None).is_none());
        assert_eq!(tunnels.active(), 2);
        drop(a);
        assert_eq!(tunnels.active(), 1);
        assert!(tunnels.open(None, None).is_some());
        tunnels.close_all();
        assert!(tunnels.open(None, None).is_none(), "closing refuses new upgrades");
        assert_eq!(tunnels.stats(), TunnelStats { opened: 3, refused: 2, ..TunnelStats::default() });
    }

    #[test]
    fn one_client_gets_its_share_of_places_and_others_theirs() {
        let tunnels = Tunnels::builder(10, Duration::from_secs(1)).max_per_client(2).build();
        let from = |ip: &str, ext: bool| {
            let mut req = Request::new(());
            let ip: IpAddr = ip.parse().unwrap();
            if ext {
                req.extensions_mut().insert(ClientAddr::new(ip));
            } else {
                req.extensions_mut().insert(PeerAddr((ip, 4000).into()));
            }
            req
        };
        let a = tunnels.try_open(&from("192.0.2.1", true)).unwrap();
        let _b = tunnels.try_open(&from("192.0.2.1", false)).unwrap();
        assert!(tunnels.try_open(&from("192.0.2.1", true)).is_none(), "a third from one client");
        let _other = tunnels.try_open(&from("2001:db8::1", true)).expect("another client");
        let _c = tunnels.try_open(&from("2001:db8::2", true)).unwrap();
        assert!(tunnels.try_open(&from("2001:db8::ffff", false)).is_none(), "the same /64");
        drop(a);
        assert!(tunnels.try_open(&from("192.0.2.1", true)).is_some(), "its place came back");
        assert!(tunnels.try_open(&Request::new(())).is_some(), "no address: not capped per client");
        assert_eq!(tunnels.stats().refused, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_closed_at_its_lifetime_or_its_token_whichever_comes_first() {
        let tunnels = Tunnels::builder(10, Duration::from_secs(60)).max_lifetime(Duration::from_secs(3600)).build();
        let now = Instant::now();
        let place = tunnels.try_open(&Request::new(())).unwrap();
        assert_eq!(place.close_at, Some(now + Duration::from_secs(3600)));
        let mut req = Request::new(());
        req.extensions_mut().insert(CloseAt(std::time::SystemTime::now() + Duration::from_secs(900)));
        let place = tunnels.try_open(&req).unwrap();
        let close_at = place.close_at.unwrap() - now;
        assert!(close_at <= Duration::from_secs(900) && close_at > Duration::from_secs(899), "{close_at:?}");
        let unbounded = Tunnels::new(1, Duration::from_secs(60));
        assert_eq!(unbounded.try_open(&Request::new(())).unwrap().close_at, None);
    }

    #[test]
    fn a_closed_group_takes_no_new_tunnel_and_others_go_on() {
        let tunnels = Tunnels::new(10, Duration::from_secs(60));
        let group = TunnelGroup::new();
        let mut req = Request::new(());
        req.extensions_mut().insert(group.clone());
        let mut place = tunnels.try_open(&req).unwrap();
        let mut told = place.group.take().expect("the place hears its group");
        assert!(!*told.borrow_and_update());
        group.close();
        assert!(told.has_changed().unwrap() && *told.borrow(), "the tunnel is told to close");
        assert!(tunnels.try_open(&req).is_none(), "a closed group opens no tunnel");
        assert!(tunnels.try_open(&Request::new(())).is_some(), "tunnels outside the group still open");
    }

    /// An upgrade request as a server that can hand over its connection gives it.
    fn upgradable() -> Request<()> {
        let mut req = upgrade_request(Version::HTTP_11, "upgrade", "websocket");
        req.extensions_mut().insert(hyper::upgrade::on(Request::new(())));
        req
    }

    #[test]
    fn a_reserved_place_is_used_once_then_given_back() {
        let tunnels = Tunnels::new(1, Duration::from_secs(1));
        // Without the server's OnUpgrade, or without asking, nothing is reserved.
        assert!(tunnels.reserve(&mut upgrade_request(Version::HTTP_11, "upgrade", "websocket")).is_ok());
        assert!(tunnels.reserve(&mut Request::new(())).is_ok());
        assert_eq!(tunnels.active(), 0);

        let mut req = upgradable();
        assert!(tunnels.reserve(&mut req).is_ok());
        assert_eq!(tunnels.active(), 1);
        let refused = tunnels.reserve(&mut upgradable()).unwrap_err();
        assert_eq!(refused.into_response().status(), 503);

        // A retry's copy shares the reservation: the first attempt uses it...
        let mut copy = Request::new(());
        *copy.extensions_mut() = req.extensions().clone();
        let first = tunnels.place_for(&req).expect("the reserved place");
        assert_eq!(tunnels.active(), 1, "the reserved place, not a second one");
        // ...and a later attempt, after the first gave it back, takes a new one.
        drop(first);
        assert_eq!(tunnels.active(), 0);
        let second = tunnels.place_for(&copy).expect("a fresh place");
        assert_eq!(tunnels.active(), 1);
        // A reservation dropped unused gives its place back.
        drop(second);
        let mut unused = upgradable();
        tunnels.reserve(&mut unused).unwrap();
        drop(unused);
        assert_eq!(tunnels.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_resolves_only_after_a_silent_timeout() {
        let last = AtomicU64::new(0);
        let epoch = Instant::now();
        let timeout = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(8)).await;
        // Traffic at 8 s moves the deadline to 18 s.
        last.store(8_000, Ordering::Relaxed);
        let idled = idle(&last, epoch, timeout);
        tokio::pin!(idled);
        assert!(tokio::time::timeout(Duration::from_secs(9), &mut idled).await.is_err(), "not idle at 17 s");
        assert!(tokio::time::timeout(Duration::from_secs(2), &mut idled).await.is_ok(), "idle by 19 s");
    }

    #[tokio::test]
    async fn closed_waits_for_every_place() {
        let tunnels = Tunnels::new(4, Duration::from_secs(1));
        let place = tunnels.open(None, None).unwrap();
        let waiting = tokio::spawn({
            let tunnels = tunnels.clone();
            async move { tunnels.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(place);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}

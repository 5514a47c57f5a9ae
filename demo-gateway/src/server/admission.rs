//! Who gets a connection: each listener has a cap of its own (the main ones
//! share `max_connections`, TLS handshakes have a budget apart, the admin and
//! redirect listeners small caps), and every client address a cap across them
//! all, so that neither one listener's flood nor one client can lock the others
//! out. A refused plain connection is told why in a `503` before it is closed.
//!
//! nginx's `limit_conn` per address and Envoy's per-listener connection limits
//! are the lineage; the caps are places taken at accept and given back when the
//! connection's task ends, whatever ends it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_gateway::client_addr::{TrustedProxies, client_block};

/// What a plain connection over its listener's cap is told before it is closed.
pub(crate) const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 80\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the gateway is at capacity\"}}";

/// What a plain connection over its client's cap is told before it is closed.
pub(crate) const REFUSED_CLIENT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 103\r\n\r\n{\"error\":{\"code\":\"too_many_client_connections\",\"message\":\"this address has too many connections open\"}}";

/// A listener's cap: places for its connections, and the signal that asks its
/// idle ones to make room when a new one finds it full.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    places: Arc<Semaphore>,
    pressure: Arc<Notify>,
}

impl Budget {
    pub(crate) fn new(places: usize) -> Self {
        Self { places: Arc::new(Semaphore::new(places)), pressure: Arc::new(Notify::new()) }
    }

    /// A place, or `None` with every connection under this cap asked to make room.
    pub(crate) fn take(&self) -> Option<OwnedSemaphorePermit> {
        let taken = self.places.clone().try_acquire_owned().ok();
        if taken.is_none() {
            self.pressure.notify_waiters();
        }
        taken
    }

    /// Signalled when a connection was refused for want of room.
    pub(crate) fn pressure(&self) -> &Arc<Notify> {
        &self.pressure
    }
}

/// Open connections per client address. An IPv6 client is counted by its /64,
/// the block one host is usually given; peers that are trusted proxies are not
/// counted (every client behind them shares their address).
#[derive(Debug)]
pub(crate) struct PerClient {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    exempt: TrustedProxies,
}

impl PerClient {
    pub(crate) fn new(limit: usize, exempt: TrustedProxies) -> Arc<Self> {
        Arc::new(Self { limit, open: Mutex::new(HashMap::new()), exempt })
    }

    /// A place for one more connection from `peer` (none needed for a trusted
    /// proxy), or `Err` when it has `limit` open.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Option<ClientPlace>, TooMany> {
        let peer = peer.to_canonical();
        if self.exempt.contains(peer) {
            return Ok(None);
        }
        let key = client_block(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return Err(TooMany);
        }
        *count += 1;
        Ok(Some(ClientPlace { clients: self.clone(), key }))
    }

    /// Connections open from `peer`'s address (or block).
    #[cfg(test)]
    fn open(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client_block(peer)).copied().unwrap_or(0)
    }
}

/// A client already has as many connections as it may.
#[derive(Debug)]
pub(crate) struct TooMany;

/// One connection's place under its client's cap, given back when dropped.
#[derive(Debug)]
pub(crate) struct ClientPlace {
    clients: Arc<PerClient>,
    key: IpAddr,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What an admitted connection holds until its task ends: its place under its
/// listener's cap (or the handshake budget, until the handshake is done) and
/// under its client's.
#[derive(Debug)]
pub(crate) struct Places {
    pub(crate) listener: OwnedSemaphorePermit,
    pub(crate) client: Option<ClientPlace>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_is_a_whole_response_whose_length_is_its_body() {
        for (refusal, code) in [(REFUSED, "too_many_connections"), (REFUSED_CLIENT, "too_many_client_connections")] {
            let text = std::str::from_utf8(refusal).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .and_then(|n| n.parse().ok())
                .expect("a content-length");
            assert_eq!(length, body.len(), "{head}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"]["code"], code);
        }
    }

    #[test]
    fn a_client_gets_its_limit_and_its_places_back_as_connections_end() {
        let clients = PerClient::new(2, TrustedProxies::none());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = clients.take(ip).unwrap();
        let second = clients.take(ip).unwrap();
        assert!(clients.take(ip).is_err(), "a third connection from the same address");
        assert!(clients.take("192.0.2.8".parse().unwrap()).is_ok(), "another address is not held back");
        drop(first);
        assert_eq!(clients.open(ip), 1);
        let third = clients.take(ip).unwrap();
        drop((second, third));
        assert_eq!(clients.open(ip), 0);
        assert!(clients.open.lock().unwrap().is_empty(), "an address with nothing open is forgotten");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64_and_a_mapped_ipv4_as_ipv4() {
        let clients = PerClient::new(1, TrustedProxies::none());
        let _one = clients.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(clients.take("2001:db8:1:2:ffff::9".parse().unwrap()).is_err(), "same /64");
        assert!(clients.take("2001:db8:1:3::1".parse().unwrap()).is_ok(), "another /64");
        let _v4 = clients.take("192.0.2.1".parse().unwrap()).unwrap();
        assert!(clients.take("::ffff:192.0.2.1".parse().unwrap()).is_err(), "the same IPv4 client, mapped");
    }

    #[test]
    fn a_trusted_proxy_is_not_capped() {
        let clients = PerClient::new(1, TrustedProxies::parse(["10.0.0.0/8"]).unwrap());
        let held: Vec<_> = (0..5).map(|_| clients.take("10.1.2.3".parse().unwrap()).unwrap()).collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!(clients.open("10.1.2.3".parse().unwrap()), 0);
    }

    #[test]
    fn a_full_budget_asks_its_connections_for_room() {
        let budget = Budget::new(1);
        let pressure = budget.pressure().clone();
        let asked = pressure.notified();
        tokio::pin!(asked);
        asked.as_mut().enable();
        let held = budget.take().expect("one place");
        assert!(budget.take().is_none());
        assert!(futures_util::FutureExt::now_or_never(asked).is_some(), "the refusal asked for room");
        drop(held);
        assert!(budget.take().is_some(), "the place came back");
    }
}

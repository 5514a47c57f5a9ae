//! What a limit counts by: one [`KeyExtractor`] trait and ready-made keys.
//!
//! | key | counts by |
//! |---|---|
//! | [`ClientIp`] | the client's address from [`ClientAddr`] (IPv6 by its /64) |
//! | [`Header`] | a header's value, e.g. an API key |
//! | [`Global`] | nothing: every request through the layer shares one bucket |
//! | [`JsonField`] | a field of a JSON body read by [`ReadJsonLayer`](super::ReadJsonLayer) |
//! | [`from_fn`] | your closure |
//! | `(A, B)`, `(A, B, C)` | all of them together (each combination its own bucket) |
//! | [`or`]`(a, b)` | the first that finds a key |
//!
//! The JWT subject, or another claim, comes from `tower-gateway-auth`'s `ClaimKey`.
//!
//! A request for which no key is found is counted under one shared key, so a
//! limit can never be dodged by leaving something out.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use http::Request;
use http::header::HeaderName;

use crate::PeerAddr;
use crate::client_addr::ClientAddr;

/// The longest key taken from a request; a longer header or field is no key.
pub const MAX_KEY_LEN: usize = 256;

/// Finds the key a request is counted under.
pub trait KeyExtractor<B> {
    /// The request's key, or `None` when this extractor finds none.
    fn extract(&self, req: &Request<B>) -> Option<String>;
}

impl<B, K: KeyExtractor<B> + ?Sized> KeyExtractor<B> for Arc<K> {
    fn extract(&self, req: &Request<B>) -> Option<String> {
        (**self).extract(req)
    }
}

/// The client's address, from [`ClientAddr`] (or, without one, the [`PeerAddr`]).
/// IPv6 clients are counted by their /64 by default: one host usually holds a
/// whole /64, and would otherwise have 2⁶⁴ keys to spread over.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp {
    ipv6_prefix: u8,
}

impl ClientIp {
    /// IPv4 by address, IPv6 by /64.
    pub fn new() -> Self {
        Self { ipv6_prefix: 64 }
    }

    /// Counts IPv6 clients by this prefix length (1 to 128).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.clamp(1, 128);
        self
    }

    fn key_of(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
                format!("{net}/{}", self.ipv6_prefix)
            }
        }
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> KeyExtractor<B> for ClientIp {
    fn extract(&self, req: &Request<B>) -> Option<String> {
        let ip = match req.extensions().get::<ClientAddr>() {
            Some(client) => client.ip(),
            None => PeerAddr::of(req.extensions())?.ip(),
        };
        Some(self.key_of(ip))
    }
}

/// A header's value (visible ASCII, at most [`MAX_KEY_LEN`] bytes), e.g. an API key.
#[derive(Debug, Clone)]
pub struct Header(HeaderName);

impl Header {
    /// Counts by the value of `name`.
    pub fn new(name: HeaderName) -> Self {
        Self(name)
    }
}

impl<B> KeyExtractor<B> for Header {
    fn extract(&self, req: &Request<B>) -> Option<String> {
        let value = req.headers().get(&self.0)?.to_str().ok()?.trim();
        (!value.is_empty() && value.len() <= MAX_KEY_LEN).then(|| value.to_owned())
    }
}

/// One bucket for every request through the layer: a limit on the route as a whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl<B> KeyExtractor<B> for Global {
    fn extract(&self, _: &Request<B>) -> Option<String> {
        Some("*".into())
    }
}

/// A top-level string field of the JSON body, as [`ReadJsonLayer`](super::ReadJsonLayer)
/// read it; trimmed and lower-cased, so `" Ann@Example.com"` and
/// `"ann@example.com"` share a bucket (the account a login names, say).
#[derive(Debug, Clone)]
pub struct JsonField(Arc<str>);

impl JsonField {
    /// Counts by the field `name`.
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }
}

impl<B> KeyExtractor<B> for JsonField {
    fn extract(&self, req: &Request<B>) -> Option<String> {
        let value = req.extensions().get::<super::JsonFields>()?.get(&self.0)?.trim();
        (!value.is_empty() && value.len() <= MAX_KEY_LEN).then(|| value.to_lowercase())
    }
}

/// The key of [`from_fn`].
#[derive(Clone)]
pub struct FromFn<F>(F);

impl<F> std::fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FromFn")
    }
}

/// A key from a closure over the request.
///
/// ```
/// use http::Request;
/// use tower_gateway::rate_limit::key::{KeyExtractor, from_fn};
///
/// let tenant = from_fn(|req: &Request<()>| req.uri().host().map(str::to_owned));
/// let req = Request::get("http://acme.example/x").body(()).unwrap();
/// assert_eq!(tenant.extract(&req).as_deref(), Some("acme.example"));
/// ```
pub fn from_fn<F, B>(f: F) -> FromFn<F>
where
    F: Fn(&Request<B>) -> Option<String>,
{
    FromFn(f)
}

impl<F, B> KeyExtractor<B> for FromFn<F>
where
    F: Fn(&Request<B>) -> Option<String>,
{
    fn extract(&self, req: &Request<B>) -> Option<String> {
        (self.0)(req)
    }
}

/// The first key found by `A`, else by `B`. See [`or`].
#[derive(Debug, Clone)]
pub struct Or<A, B>(A, B);

/// Tries `first`, then `second`: `or(Header::new(api_key), ClientIp::new())`
/// counts clients with an API key by it and the others by address.
pub fn or<A, B>(first: A, second: B) -> Or<A, B> {
    Or(first, second)
}

impl<Body, A: KeyExtractor<Body>, B: KeyExtractor<Body>> KeyExtractor<Body> for Or<A, B> {
    fn extract(&self, req: &Request<Body>) -> Option<String> {
        self.0.extract(req).or_else(|| self.1.extract(req))
    }
}

/// Joins parts so that no two different lists of parts give the same key.
fn join(parts: &[String]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        let _ = write!(key, "{}:{part}", part.len());
    }
    key
}

impl<Body, A: KeyExtractor<Body>, B: KeyExtractor<Body>> KeyExtractor<Body> for (A, B) {
    fn extract(&self, req: &Request<Body>) -> Option<String> {
        Some(join(&[self.0.extract(req)?, self.1.extract(req)?]))
    }
}

impl<Body, A: KeyExtractor<Body>, B: KeyExtractor<Body>, C: KeyExtractor<Body>> KeyExtractor<Body> for (A, B, C) {
    fn extract(&self, req: &Request<Body>) -> Option<String> {
        Some(join(&[self.0.extract(req)?, self.1.extract(req)?, self.2.extract(req)?]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn client_ip_prefers_the_decided_client_and_groups_ipv6() {
        let mut r = req(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(ClientIp::new().extract(&r), None, "no peer, no key; the header is never read");
        r.extensions_mut().insert(PeerAddr("192.0.2.1:9".parse().unwrap()));
        assert_eq!(ClientIp::new().extract(&r).as_deref(), Some("192.0.2.1"));
        r.extensions_mut().insert(ClientAddr::new("2001:db8:1:2:3:4:5:6".parse().unwrap()));
        assert_eq!(ClientIp::new().extract(&r).as_deref(), Some("2001:db8:1:2::/64"));
        assert_eq!(ClientIp::new().ipv6_prefix(128).extract(&r).as_deref(), Some("2001:db8:1:2:3:4:5:6/128"));
    }

    #[test]
    fn headers_are_bounded_and_combinations_unambiguous() {
        let key = Header::new(HeaderName::from_static("x-api-key"));
        assert_eq!(key.extract(&req(&[("x-api-key", " k1 ")])).as_deref(), Some("k1"));
        assert_eq!(key.extract(&req(&[("x-api-key", "")])), None);
        assert_eq!(key.extract(&req(&[("x-api-key", &"k".repeat(MAX_KEY_LEN + 1))])), None);

        let a = Header::new(HeaderName::from_static("a"));
        let b = Header::new(HeaderName::from_static("b"));
        let both = (a.clone(), b.clone());
        let one = both.extract(&req(&[("a", "x:1"), ("b", "y")]));
        let other = both.extract(&req(&[("a", "x"), ("b", "1:y")]));
        assert!(one.is_some() && one != other, "{one:?} {other:?}");
        assert_eq!(both.extract(&req(&[("a", "x")])), None, "a combination needs every part");

        let either = or(a, Global);
        assert_eq!(either.extract(&req(&[("a", "x")])).as_deref(), Some("x"));
        assert_eq!(either.extract(&req(&[])).as_deref(), Some("*"));
    }
}

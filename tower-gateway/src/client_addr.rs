//! Who the client is, decided once per request.
//!
//! [`ClientAddrLayer`] puts a [`ClientAddr`] in each request's extensions: the
//! address of the peer that connected (the [`PeerAddr`] extension), unless that
//! peer is one of your trusted proxies. Then, and only then, it reads the
//! forwarding header those proxies append to, **from the right**, skipping trusted
//! hops, and takes the first address that is not trusted: the last hop any of your
//! proxies saw. Everything to its left was written by the client and could say
//! anything, so it is never read (taking the leftmost address, as many limiters do,
//! lets any client choose its own identity).
//!
//! An entry that is not an address (`unknown`, an obfuscated `_name`, garbage)
//! stops the walk: the client is then the last trusted hop, the nearest address a
//! proxy of yours vouched for. Ports are ignored, IPv4-mapped IPv6 addresses are
//! read as IPv4, and when every hop is trusted the leftmost is the client.
//!
//! [`Proxy`](crate::Proxy) sends the same answer upstream as `X-Forwarded-For`:
//! the client, then the trusted hops, then the peer — never the part the client
//! made up — and the rate limiter keys on it, so there is one answer to "who is
//! the client".
//!
//! # Example
//!
//! ```
//! use http::Request;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gateway::client_addr::{ClientAddr, ClientAddrLayer};
//! use tower_gateway::PeerAddr;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Behind a load balancer in 10.0.0.0/8 that appends to X-Forwarded-For.
//! let svc = ServiceBuilder::new()
//!     .layer(ClientAddrLayer::new().trust(["10.0.0.0/8"])?)
//!     .service(service_fn(|req: Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(req.extensions().get::<ClientAddr>().map(ClientAddr::ip))
//!     }));
//!
//! let mut req = Request::builder()
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7") // the client wrote 6.6.6.6
//!     .body(())?;
//! req.extensions_mut().insert(PeerAddr("10.1.2.3:40000".parse()?));
//! assert_eq!(svc.oneshot(req).await?, Some("203.0.113.7".parse()?));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddrV4};
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use crate::PeerAddr;

/// The client's address as [`ClientAddrLayer`] decided it, in the request's
/// extensions. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    ip: IpAddr,
    /// The verified chain for `X-Forwarded-For`, when it is more than `ip`.
    chain: Option<HeaderValue>,
}

impl ClientAddr {
    /// A client at `ip` that connected directly (for tests, or your own layer).
    pub fn new(ip: IpAddr) -> Self {
        Self { ip: ip.to_canonical(), chain: None }
    }

    /// The client's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// What to send upstream as `X-Forwarded-For`: the client, the trusted proxies
    /// it came through, and the peer, left to right.
    pub fn forwarded_for(&self) -> HeaderValue {
        match &self.chain {
            Some(chain) => chain.clone(),
            None => ip_header_value(self.ip),
        }
    }
}

/// The address a client is counted by when its connections or tunnels are
/// capped: an IPv4 address itself, an IPv6 address by its /64 (the block one
/// host is usually given, so that one host cannot take a fresh address for
/// each place).
///
/// ```
/// use tower_gateway::client_addr::client_block;
/// assert_eq!(client_block("2001:db8:1:2::7".parse().unwrap()), "2001:db8:1:2::".parse::<std::net::IpAddr>().unwrap());
/// assert_eq!(client_block("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
/// ```
pub fn client_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// `ip` as a header value, cut from the thread's slab (this runs for every
/// proxied request); an IPv4 address is written without the formatting machinery.
pub(crate) fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        use std::io::Write;
        let mut text = [0u8; 45];
        let mut rest = &mut text[..];
        write!(rest, "{ip}").expect("an IPv6 address is at most 45 characters");
        let len = 45 - rest.len();
        return crate::header::shared_value(&text[..len]).expect("an address is a valid header value");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for digit in &digits[skip..] {
            text[len] = b'0' + digit;
            len += 1;
        }
    }
    crate::header::shared_value(&text[..len]).expect("digits and dots are a valid header value")
}

/// Which header the trusted proxies append the client's address to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

impl ForwardedHeader {
    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => http::header::FORWARDED,
        }
    }
}

/// A CIDR block that could not be read, from [`ClientAddrLayer::trust`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCidr(String);

impl fmt::Display for InvalidCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an address or a CIDR block like 10.0.0.0/8", self.0)
    }
}

impl std::error::Error for InvalidCidr {}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// No proxy is trusted: the peer is always the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses addresses (`10.1.2.3`, `::1`) and CIDR blocks (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse<I>(blocks: I) -> Result<Self, InvalidCidr>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut nets = Vec::new();
        for block in blocks {
            let text = block.as_ref().trim();
            let net = IpNet::from_str(text)
                .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
                .map_err(|_| InvalidCidr(text.to_owned()))?;
            nets.push(net.trunc());
        }
        Ok(Self(nets.into()))
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads one hop: `203.0.113.7`, `203.0.113.7:80`, `2001:db8::1`, `[2001:db8::1]:80`,
/// with the quotes RFC 7239 puts around some. `unknown`, `_hidden` and anything
/// else are not addresses.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let hop = hop.strip_prefix('"').and_then(|h| h.strip_suffix('"')).unwrap_or(hop);
    let ip = if let Some(rest) = hop.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
        if !port_ok {
            return None;
        }
        IpAddr::V6(ip.parse().ok()?)
    } else if let Ok(ip) = hop.parse::<IpAddr>() {
        ip
    } else {
        IpAddr::V4(*hop.parse::<SocketAddrV4>().ok()?.ip())
    };
    Some(ip.to_canonical())
}

/// The hops of the forwarding header, left to right, as written (not yet parsed).
fn hops(headers: &HeaderMap, header: ForwardedHeader) -> Vec<&str> {
    let mut hops = Vec::new();
    for value in headers.get_all(header.name()) {
        // A value that is not text is not an address either: it stops the walk.
        let text = value.to_str().unwrap_or("\u{0}");
        for element in text.split(',') {
            match header {
                ForwardedHeader::XForwardedFor => hops.push(element),
                ForwardedHeader::Forwarded => {
                    let node = element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                        .map_or("\u{0}", |(_, value)| value);
                    hops.push(node);
                }
            }
        }
    }
    hops
}

/// Decides the client of a request from `peer`. See the [module docs](self).
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies, header: ForwardedHeader) -> ClientAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return ClientAddr { ip: peer, chain: None };
    }
    // The hops read from the right, up to and including the first untrusted one.
    let mut verified: Vec<IpAddr> = Vec::new();
    for hop in hops(headers, header).iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        verified.push(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    let Some(&client) = verified.last() else {
        return ClientAddr { ip: peer, chain: None };
    };
    let chain: Vec<String> = verified.iter().rev().chain([&peer]).map(IpAddr::to_string).collect();
    ClientAddr { ip: client, chain: HeaderValue::try_from(chain.join(", ")).ok() }
}

/// Puts the [`ClientAddr`] in each request's extensions. See the [module docs](self).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientAddrLayer {
    trusted: TrustedProxies,
    header: ForwardedHeader,
}

impl ClientAddrLayer {
    /// Trusts no proxy: the client is the peer that connected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the proxies in these blocks (`10.0.0.0/8`, `192.168.1.5`, `fd00::/8`).
    pub fn trust<I>(mut self, blocks: I) -> Result<Self, InvalidCidr>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.trusted = TrustedProxies::parse(blocks)?;
        Ok(self)
    }

    /// Trusts these proxies.
    pub fn trusted(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// The header the trusted proxies append to (default `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }
}

impl<S> Layer<S> for ClientAddrLayer {
    type Service = ClientAddrService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAddrService { inner, layer: self.clone() }
    }
}

/// Puts the [`ClientAddr`] in each request's extensions. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientAddrService<S> {
    inner: S,
    layer: ClientAddrLayer,
}

impl<S> ClientAddrService<S> {
    /// Wraps `inner`, trusting no proxy.
    pub fn new(inner: S) -> Self {
        ClientAddrLayer::new().layer(inner)
    }

    crate::inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for ClientAddrService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        // Without a peer there is nobody to decide about; a ClientAddr set further
        // out is left as it is.
        if let Some(peer) = PeerAddr::of(req.extensions()) {
            let client = client_addr(peer.ip(), req.headers(), &self.layer.trusted, self.layer.header);
            req.extensions_mut().insert(client);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn an_address_as_a_header_value_reads_as_std_writes_it() {
        for ip in ["0.0.0.0", "9.10.99.100", "127.0.0.1", "255.255.255.255", "10.0.200.7", "2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn hops_parse_with_and_without_ports() {
        let cases = [
            ("203.0.113.7", Some("203.0.113.7")),
            (" 203.0.113.7 ", Some("203.0.113.7")),
            ("203.0.113.7:8080", Some("203.0.113.7")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:4711", Some("2001:db8::1")),
            ("\"[2001:db8::1]:4711\"", Some("2001:db8::1")),
            ("::ffff:192.0.2.1", Some("192.0.2.1")),
            ("[2001:db8::1]:99999", None),
            ("[2001:db8::1", None),
            ("203.0.113.7:", None),
            ("203.0.113", None),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
            ("evil.example", None),
            ("1.2.3.4 5.6.7.8", None),
        ];
        for (hop, want) in cases {
            assert_eq!(parse_hop(hop), want.map(|ip| ip.parse().unwrap()), "{hop:?}");
        }
    }

    /// (peer, trusted blocks, header lines, expected client, expected X-Forwarded-For upstream)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a str, &'a str);

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let lb = &["10.0.0.0/8"][..];
        let cases: &[Case<'_>] = &[
            // An untrusted peer: its header is the client's own writing, never read.
            ("203.0.113.7", lb, &["1.1.1.1"], "203.0.113.7", "203.0.113.7"),
            ("203.0.113.7", &[], &["10.0.0.1"], "203.0.113.7", "203.0.113.7"),
            // Behind the trusted balancer: the hop it appended.
            ("10.0.0.2", lb, &["203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.2"),
            // The client's spoofed prefix is ignored, however long.
            ("10.0.0.2", lb, &["6.6.6.6, 7.7.7.7, 203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.2"),
            // Trusted hops are skipped; the first untrusted one from the right wins.
            ("10.0.0.2", lb, &["6.6.6.6, 203.0.113.7, 10.9.9.9"], "203.0.113.7", "203.0.113.7, 10.9.9.9, 10.0.0.2"),
            // Several header lines are one list, in order.
            ("10.0.0.2", lb, &["6.6.6.6", "203.0.113.7, 10.9.9.9"], "203.0.113.7", "203.0.113.7, 10.9.9.9, 10.0.0.2"),
            // A client that puts trusted-looking hops left of its real address gains nothing.
            ("10.0.0.2", lb, &["10.1.1.1, 203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.2"),
            // Every hop trusted: the leftmost.
            ("10.0.0.2", lb, &["10.3.3.3, 10.4.4.4"], "10.3.3.3", "10.3.3.3, 10.4.4.4, 10.0.0.2"),
            // No header from a trusted peer: the peer itself.
            ("10.0.0.2", lb, &[], "10.0.0.2", "10.0.0.2"),
            // Malformed hops stop the walk at the last trusted address.
            ("10.0.0.2", lb, &["203.0.113.7, unknown"], "10.0.0.2", "10.0.0.2"),
            ("10.0.0.2", lb, &["203.0.113.7, 10.9.9.9, garbage"], "10.0.0.2", "10.0.0.2"),
            ("10.0.0.2", lb, &["6.6.6.6, garbage, 10.9.9.9"], "10.9.9.9", "10.9.9.9, 10.0.0.2"),
            ("10.0.0.2", lb, &[""], "10.0.0.2", "10.0.0.2"),
            // Ports and IPv6.
            ("10.0.0.2", lb, &["203.0.113.7:5555"], "203.0.113.7", "203.0.113.7, 10.0.0.2"),
            ("fd00::5", &["fd00::/8"], &["2001:db8::7, [fd00::9]:80"], "2001:db8::7", "2001:db8::7, fd00::9, fd00::5"),
            ("::ffff:10.0.0.2", lb, &["::ffff:203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.2"),
            // A single trusted address rather than a block.
            ("192.0.2.1", &["192.0.2.1"], &["203.0.113.7"], "203.0.113.7", "203.0.113.7, 192.0.2.1"),
            ("192.0.2.2", &["192.0.2.1"], &["203.0.113.7"], "192.0.2.2", "192.0.2.2"),
        ];
        for &(peer, trusted, lines, client, chain) in cases {
            let trusted = TrustedProxies::parse(trusted).unwrap();
            let got = client_addr(
                peer.parse().unwrap(),
                &headers("x-forwarded-for", lines),
                &trusted,
                ForwardedHeader::XForwardedFor,
            );
            assert_eq!(got.ip(), client.parse::<IpAddr>().unwrap(), "{peer} {lines:?}");
            assert_eq!(got.forwarded_for(), chain, "{peer} {lines:?}");
        }
    }

    #[test]
    fn forwarded_is_read_the_same_way() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["for=6.6.6.6, for=203.0.113.7;proto=https"], "203.0.113.7"),
            (&["for=\"[2001:db8::7]:4711\""], "2001:db8::7"),
            (&["For=203.0.113.7;By=10.0.0.2"], "203.0.113.7"),
            (&["proto=https;for=203.0.113.7, for=10.9.9.9"], "203.0.113.7"),
            (&["for=203.0.113.7, for=unknown"], "10.0.0.2"),
            (&["for=203.0.113.7, by=10.9.9.9"], "10.0.0.2"),
            (&["for=_hidden"], "10.0.0.2"),
        ];
        for &(lines, client) in cases {
            let got = client_addr(
                "10.0.0.2".parse().unwrap(),
                &headers("forwarded", lines),
                &trusted,
                ForwardedHeader::Forwarded,
            );
            assert_eq!(got.ip(), client.parse::<IpAddr>().unwrap(), "{lines:?}");
        }
        // With X-Forwarded-For configured, a Forwarded header is not read, and the other way round.
        let xff = headers("x-forwarded-for", &["203.0.113.7"]);
        assert_eq!(
            client_addr("10.0.0.2".parse().unwrap(), &xff, &trusted, ForwardedHeader::Forwarded).ip(),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn bad_blocks_are_refused() {
        for block in ["10.0.0.0/33", "ten", "", "10.0.0.0/8/8", "::/129"] {
            assert!(TrustedProxies::parse([block]).is_err(), "{block}");
        }
        let trusted = TrustedProxies::parse(["10.1.2.3/8"]).unwrap();
        assert!(trusted.contains("10.200.0.1".parse().unwrap()), "host bits are dropped");
        assert!(trusted.contains("::ffff:10.0.0.1".parse().unwrap()), "mapped addresses are read as IPv4");
    }

    #[tokio::test]
    async fn the_layer_needs_a_peer() {
        use tower::{ServiceBuilder, ServiceExt, service_fn};
        let svc =
            ServiceBuilder::new().layer(ClientAddrLayer::new()).service(service_fn(|req: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(req.extensions().get::<ClientAddr>().cloned())
            }));
        let req = Request::builder().header("x-forwarded-for", "1.2.3.4").body(()).unwrap();
        assert_eq!(svc.clone().oneshot(req).await.unwrap(), None);
        let mut req = Request::builder().header("x-forwarded-for", "1.2.3.4").body(()).unwrap();
        req.extensions_mut().insert(PeerAddr("[::ffff:192.0.2.9]:1".parse().unwrap()));
        assert_eq!(svc.oneshot(req).await.unwrap(), Some(ClientAddr::new("192.0.2.9".parse().unwrap())));
    }
}

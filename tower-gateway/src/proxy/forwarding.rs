//! What a request sheds and gains on its way upstream: hop-by-hop headers out,
//! the forwarding headers (`X-Forwarded-*`) and the upstream's `Host` in.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use super::{ClientScheme, PeerAddr};
use crate::client_addr::ClientAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including every header
/// named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names they have is cheaper
    // than a lookup for each of the seven that may be there.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(&name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // `keep-alive` and `close`, the options nearly every `Connection` says,
        // are skipped when they name nothing the fixed list below leaves (a
        // `Keep-Alive` header is on it).
        let has_close = headers.contains_key("close");
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| {
                !name.eq_ignore_ascii_case("keep-alive") && (has_close || !name.eq_ignore_ascii_case("close"))
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The hop-by-hop headers a message may carry besides those its `Connection` names.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
];

/// The `Host` an upstream at `uri` is sent: its authority without user info,
/// and without the port when it is the scheme's default.
pub(super) fn upstream_host(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let text = authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_, host)| host);
    let default_port = match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    };
    let text =
        if authority.port_u16().is_some_and(|port| Some(port) == default_port) { authority.host() } else { text };
    crate::header::shared_value(text.as_bytes()).ok()
}

/// Prepares a request for the upstream: hop-by-hop headers out, forwarding
/// headers in, the version the upstream speaks.
pub(super) fn prepare<B>(req: &mut Request<B>, forwarded_proto: &HeaderValue, http2: bool, grpc: bool) {
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    } else {
        headers.remove(&X_FORWARDED_HOST);
    }
    // The upstream's own name, as hyper-util's client would write it (no
    // user info, no default port), but cut from the thread's slab.
    if let Some(host) = upstream_host(req.uri()) {
        req.headers_mut().insert(header::HOST, host);
    }
    let proto = match req.extensions().get::<ClientScheme>() {
        Some(ClientScheme(scheme)) if *scheme == http::uri::Scheme::HTTP => HeaderValue::from_static("http"),
        Some(ClientScheme(scheme)) if *scheme == http::uri::Scheme::HTTPS => HeaderValue::from_static("https"),
        Some(ClientScheme(scheme)) => {
            HeaderValue::from_str(scheme.as_str()).unwrap_or_else(|_| forwarded_proto.clone())
        }
        None => forwarded_proto.clone(),
    };
    let headers = req.headers_mut();
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    // The client's own forwarding claims are never passed on: X-Forwarded-For is
    // what ClientAddr verified, or the peer alone.
    headers.remove(header::FORWARDED);
    headers.remove(&X_REAL_IP);
    let forwarded_for = match (req.extensions().get::<ClientAddr>(), PeerAddr::of(req.extensions())) {
        (Some(client), _) => Some(client.forwarded_for()),
        (None, Some(peer)) => Some(crate::client_addr::ip_header_value(peer.ip().to_canonical())),
        (None, None) => None,
    };
    let headers = req.headers_mut();
    match forwarded_for {
        Some(value) => headers.insert(X_FORWARDED_FOR.clone(), value),
        None => headers.remove(&X_FORWARDED_FOR),
    };
    if http2 {
        // HTTP/2 names the authority in `:authority`, from the URI.
        headers.remove(header::HOST);
        // gRPC servers ask that a call say it takes trailers (`TE` is the one
        // connection header HTTP/2 allows, with this value only).
        if grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.version_mut() = Version::HTTP_11;
    }
}

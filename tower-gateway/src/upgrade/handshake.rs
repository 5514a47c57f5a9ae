//! The WebSocket opening handshake (RFC 6455 §4) as a proxy checks it: which
//! requests open one, the headers that carry it upstream, and which answers
//! accept it.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};

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

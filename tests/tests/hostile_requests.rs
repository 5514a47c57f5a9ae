//! Hostile and malformed requests, as raw bytes over a socket: what the client
//! gets, whether the backend was reached, and what it saw when it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use demo_gateway::config::{RouteConfig, UpstreamConfig};
use demo_gateway::{Access, Config};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_gateway_tests::{Gateway, Server, serve};

/// What the backend saw of each request it got: method, path and headers.
type Seen = Arc<Mutex<Vec<(String, String, HashMap<String, String>)>>>;

async fn recording_backend() -> (Server, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let server = serve(tower::service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            record.lock().unwrap().push((parts.method.to_string(), parts.uri.to_string(), headers));
            let _ = body.collect().await;
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"ok"))))
        }
    }))
    .await;
    (server, seen)
}

/// The gateway with one public route, `/api`, to `backend`.
fn public_route_to(backend: &Server) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        upstreams: [("b".to_owned(), UpstreamConfig { endpoints: vec![backend.url()], ..UpstreamConfig::default() })]
            .into(),
        routes: vec![RouteConfig {
            prefix: Some("/api".into()),
            upstream: "b".into(),
            access: Some(Access::Public),
            ..RouteConfig::default()
        }],
        ..Config::default()
    }
}

/// Sends `raw`, returns the status of the first final response (0 for none:
/// closed or silent for 3 s).
async fn send_raw(addr: std::net::SocketAddr, raw: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(raw).await;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // The status of the last complete head read; 1xx ones are skipped.
        let text = String::from_utf8_lossy(&response).into_owned();
        let heads: Vec<&str> = text.split("\r\n\r\n").collect();
        if let Some(status) = heads[..heads.len() - 1]
            .iter()
            .filter_map(|h| h.split_whitespace().nth(1)?.parse::<u16>().ok())
            .find(|s| *s >= 200)
        {
            return status;
        }
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&response).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn get(extra: &str) -> Vec<u8> {
    format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

fn post(extra: &str, body: &str) -> Vec<u8> {
    format!("POST /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{extra}\r\n{body}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_before_the_backend() {
    let (backend, seen) = recording_backend().await;
    let gw = Gateway::start(public_route_to(&backend)).await;
    let long_uri = format!("GET /api/{} HTTP/1.1\r\nHost: gw\r\n\r\n", "a".repeat(70 * 1024)).into_bytes();
    let many_headers = get(&(0..150).map(|i| format!("X-H{i}: v\r\n")).collect::<String>());
    let big_header = get(&format!("X-Big: {}\r\n", "b".repeat(20 * 1024)));

    // (what, raw request, expected status, reaches the backend)
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("a plain GET", get(""), 200, true),
        ("HTTP/1.0 without Host", b"GET /api/x HTTP/1.0\r\n\r\n".to_vec(), 200, true),
        ("two Host headers", get("Host: evil\r\n"), 400, false),
        ("no Host on HTTP/1.1", b"GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), 400, false),
        (
            "absolute form without Host on HTTP/1.1",
            b"GET http://gw/api/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "userinfo in the absolute form",
            b"GET http://user:pw@gw/api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "absolute form, same authority",
            b"GET http://gw/api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
            200,
            true,
        ),
        (
            "absolute form, another authority",
            b"GET http://evil/api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            false,
        ),
        ("two different Content-Lengths", post("Content-Length: 3\r\nContent-Length: 4\r\n", "abcd"), 400, false),
        // RFC 9112 §6.1 allows reading it by Transfer-Encoding alone (hyper does):
        // the backend gets one request with an empty body, re-framed, and the
        // bytes after it are a request of their own to the gateway (checked below).
        (
            "Content-Length with Transfer-Encoding (CL.TE)",
            post("Content-Length: 13\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nSMUGGLED"),
            200,
            true,
        ),
        ("non-final chunked", post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), 400, false),
        ("unknown transfer coding", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), 400, false),
        (
            "Transfer-Encoding with a space before the colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            400,
            false,
        ),
        ("signed Content-Length", post("Content-Length: +4\r\n", "abcd"), 400, false),
        ("negative Content-Length", post("Content-Length: -1\r\n", ""), 400, false),
        ("Content-Length list", post("Content-Length: 4, 5\r\n", "abcd"), 400, false),
        ("obs-fold", get("X-A: a\r\n b\r\n"), 400, false),
        ("NUL in a header value", get("X-A: a\0b\r\n"), 400, false),
        ("bare CR in a header value", get("X-A: a\rb\r\n"), 400, false),
        ("a header name with a space", get("X A: b\r\n"), 400, false),
        ("a lower-case method", b"get /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(), 501, false),
        ("an unknown method", b"FOO /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(), 501, false),
        ("TRACE", b"TRACE /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(), 501, false),
        ("CONNECT", b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n".to_vec(), 501, false),
        ("a 70 KB URI", long_uri, 431, false),
        ("150 headers", many_headers, 431, false),
        ("a 20 KB header", big_header, 431, false),
        ("HTTP/2.0 in an HTTP/1 request line", b"GET /api/x HTTP/2.0\r\nHost: gw\r\n\r\n".to_vec(), 400, false),
        ("HTTP/0.9", b"GET /api/x\r\n\r\n".to_vec(), 400, false),
        ("NUL in the path", b"GET /api/\0x HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(), 400, false),
        ("a space in the Host", b"GET /api/x HTTP/1.1\r\nHost: g w\r\nConnection: close\r\n\r\n".to_vec(), 400, false),
        (
            "a dot-segment escape",
            b"GET /api/../admin HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            false,
        ),
        (
            "an encoded slash",
            b"GET /api%2F..%2Fadmin HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            false,
        ),
        ("an unrouted path", b"GET /admin HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(), 404, false),
        ("a bad chunk size", post("Transfer-Encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n"), 400, false),
        ("a body shorter than its length", post("Content-Length: 10\r\n", "abc"), 0, false),
        ("Expect: 100-continue", post("Content-Length: 4\r\nExpect: 100-continue\r\n", "abcd"), 200, true),
        ("a chunked POST", post("Transfer-Encoding: chunked\r\n", "4\r\nabcd\r\n0\r\n\r\n"), 200, true),
        ("bare LF line endings", b"GET /api/x HTTP/1.1\nHost: gw\nConnection: close\n\n".to_vec(), 200, true),
        ("a header line without a colon", get("X-A b\r\n"), 400, false),
        ("an empty header name", get(": v\r\n"), 400, false),
        ("two spaces in the request line", b"GET  /api/x HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(), 400, false),
        (
            "userinfo in the Host",
            b"GET /api/x HTTP/1.1\r\nHost: user@gw\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            false,
        ),
        ("a HEAD", b"HEAD /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec(), 200, true),
        (
            "a chunked body on HEAD",
            b"HEAD /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
                .to_vec(),
            400,
            false,
        ),
        (
            "a GET saying its body is empty",
            b"GET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(),
            200,
            true,
        ),
        (
            "a GET with a body (it could hold a place in flight for as long as it trickled)",
            b"GET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (what, raw, status, reaches) in &cases {
        let before = seen.lock().unwrap().len();
        let got = send_raw(gw.addr(), raw).await;
        // A request refused mid-body may have been started upstream; let it land.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reached = seen.lock().unwrap().len() > before;
        if got != *status || reached != *reaches {
            failures.push(format!("{what}: got {got} (backend reached: {reached}), want {status} ({reaches})"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let seen = seen.lock().unwrap();
    assert!(!seen.iter().any(|(method, path, _)| method.contains("SMUGGLED") || path.contains("SMUGGLED")), "{seen:?}");
    let reached = cases.iter().filter(|c| c.3).count();
    assert_eq!(seen.len(), reached, "exactly one backend request per case that reaches it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_says_about_itself_never_reaches_the_backend() {
    let (backend, seen) = recording_backend().await;
    let gw = Gateway::start(public_route_to(&backend)).await;
    let headers = "X-User-Id: 1\r\nx_user_id: 1\r\nX-USER-EMAIL: root@example.com\r\nx_user_email: root@example.com\r\n\
                   X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n\
                   X-Forwarded-Prefix: /evil\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
                   Connection: idempotency-key, x-keep\r\nIdempotency-Key: k1\r\nX-Keep: 1\r\n\
                   Upgrade: h2c\r\nX-Request-Id: not a sane id!\r\n";
    let raw = format!("GET /api/x HTTP/1.1\r\nHost: gw\r\n{headers}\r\n");
    assert_eq!(send_raw(gw.addr(), raw.as_bytes()).await, 200);
    let (_, path, got) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(path, "/x");
    for absent in [
        "x-user-id",
        "x_user_id",
        "x-user-email",
        "x_user_email",
        "forwarded",
        "x-real-ip",
        "idempotency-key",
        "x-keep",
        "upgrade",
    ] {
        assert!(!got.contains_key(absent), "{absent} reached the backend: {got:?}");
    }
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["x-forwarded-host"], "gw");
    assert_eq!(got["x-forwarded-proto"], "http");
    assert_eq!(got["x-forwarded-prefix"], "/api");
    let id = &got["x-request-id"];
    assert!(id.len() == 36 && id != "not a sane id!", "a fresh request id: {id}");

    let raw = "GET /api/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: trace-123.abc_DEF:9\r\n\r\n";
    assert_eq!(send_raw(gw.addr(), raw.as_bytes()).await, 200);
    let last = seen.lock().unwrap().last().unwrap().2.clone();
    assert_ne!(last["x-request-id"], "trace-123.abc_DEF:9", "the gateway's own id, not the client's");
    assert_eq!(last["x-client-request-id"], "trace-123.abc_DEF:9", "a sane client id goes beside it");
}

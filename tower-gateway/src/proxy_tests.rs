use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_layer::Layer;

use super::*;
use crate::error::BoxError;

type TestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// Serves `handler` on a fresh loopback port until the test ends (upgrades allowed).
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    serve_counting(handler).await.0
}

/// [`serve`], with the count of connections accepted.
async fn serve_counting<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                let _ = conn.with_upgrades().await;
            });
        }
    });
    (addr, accepted)
}

fn to(addr: SocketAddr, path: &str) -> Uri {
    format!("http://{addr}{path}").parse().unwrap()
}

fn error_code(body: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["error"]["code"].as_str().unwrap().to_owned()
}

#[test]
fn hop_by_hop_headers_and_connection_named_ones_are_removed() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("connection", "keep-alive, X-Secret ,x-other"),
        ("connection", "x-third"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("x-secret", "1"),
        ("x-other", "2"),
        ("x-third", "3"),
        ("x-kept", "4"),
        ("authorization", "Bearer t"),
    ] {
        headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    remove_hop_by_hop(&mut headers);
    let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, ["x-kept", "authorization"]);

    // `close` and `keep-alive` are options, and name a header all the same.
    let mut headers = HeaderMap::new();
    for (name, value) in [("connection", "Close, keep-alive"), ("close", "1"), ("x-kept", "2")] {
        headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    remove_hop_by_hop(&mut headers);
    let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, ["x-kept"]);
}

#[test]
fn the_upstream_host_is_its_authority_without_user_info_or_a_default_port() {
    let host = |uri: &str| {
        super::forwarding::upstream_host(&uri.parse::<Uri>().unwrap()).map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(host("http://10.0.0.5:8080/x").as_deref(), Some("10.0.0.5:8080"));
    assert_eq!(host("http://svc:80/x").as_deref(), Some("svc"));
    assert_eq!(host("https://svc:443/").as_deref(), Some("svc"));
    assert_eq!(host("https://svc:80/").as_deref(), Some("svc:80"));
    assert_eq!(host("http://user:pw@svc:3001/").as_deref(), Some("svc:3001"));
    assert_eq!(host("http://[2001:db8::1]:80/").as_deref(), Some("[2001:db8::1]"));
    assert_eq!(host("http://[2001:db8::1]:81/").as_deref(), Some("[2001:db8::1]:81"));
    assert_eq!(host("/origin-form"), None);
}

#[tokio::test]
async fn forwards_request_and_relays_response() {
    let upstream = serve(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let h = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        let seen = serde_json::json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "version": format!("{:?}", parts.version),
            "host": h("host"),
            "xff": h("x-forwarded-for"),
            "xfp": h("x-forwarded-proto"),
            "xfh": h("x-forwarded-host"),
            "custom": h("x-custom"),
            "secret": h("x-secret"),
            "body": String::from_utf8(body.to_vec()).unwrap(),
        });
        Response::builder()
            .status(201)
            .header("x-from-upstream", "yes")
            .header("keep-alive", "timeout=5")
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "1")
            .body(full(seen.to_string()))
            .unwrap()
    })
    .await;

    let mut req = Request::builder()
        .method(Method::PATCH)
        .uri(to(upstream, "/item/7?x=1&y=2"))
        .header("host", "gateway.example:8080")
        .header("x-custom", "kept")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "gopher")
        .body(full("payload"))
        .unwrap();
    req.extensions_mut().insert(PeerAddr("192.0.2.1:5555".parse().unwrap()));
    let res = Proxy::new().oneshot(req).await.unwrap();

    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-from-upstream"], "yes");
    assert!(res.headers().get("keep-alive").is_none());
    assert!(res.headers().get("x-upstream-private").is_none());
    let seen: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["uri"], "/item/7?x=1&y=2");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["host"], upstream.to_string());
    assert_eq!(seen["xff"], "192.0.2.1", "the client's own X-Forwarded-For is not passed on");
    assert_eq!(seen["xfp"], "http");
    assert_eq!(seen["xfh"], "gateway.example:8080");
    assert_eq!(seen["custom"], "kept");
    assert_eq!(seen["secret"], serde_json::Value::Null);
    assert_eq!(seen["body"], "payload");
}

#[tokio::test]
async fn each_thread_sends_over_connections_of_its_own() {
    let (upstream, accepted) = serve_counting(|_| async { Response::new(full("ok")) }).await;
    let proxy: Proxy<TestBody> = Proxy::new();
    // Three requests from a thread with a runtime of its own, which then stays
    // alive (its connection idle in the pool) until `leave` is dropped.
    let on_own_thread = |proxy: Proxy<TestBody>| {
        let (sent, done) = tokio::sync::oneshot::channel();
        let (leave, left) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                for _ in 0..3 {
                    let req = Request::get(to(upstream, "/")).body(full("")).unwrap();
                    let response = proxy.clone().oneshot(req).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
                }
            });
            sent.send(()).unwrap();
            let _ = left.recv();
        });
        (done, leave, thread)
    };
    let (first, leave_first, first_thread) = on_own_thread(proxy.clone());
    first.await.unwrap();
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "one connection, kept for the thread's three requests");
    // The first thread's connection is idle and its runtime not running (the
    // thread is blocked): a second thread opens its own. A connection's task
    // runs on the runtime that opened it; over the first thread's, these
    // requests would wait for that thread.
    let (second, leave_second, second_thread) = on_own_thread(proxy.clone());
    let sent = tokio::time::timeout(Duration::from_secs(5), second).await;
    assert!(sent.is_ok(), "the second thread's requests waited on the first thread's runtime");
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    drop((leave_first, leave_second));
    tokio::task::spawn_blocking(move || {
        first_thread.join().unwrap();
        second_thread.join().unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn refused_connection_is_502_connect() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let req = Request::get(to(closed, "/")).body(full("")).unwrap();
    let res = Proxy::new().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(res.extensions().get::<UpstreamError>().unwrap().kind(), UpstreamErrorKind::Connect);
    assert_eq!(error_code(&res.into_body().collect().await.unwrap().to_bytes()), "upstream_connect_failed");
}

#[tokio::test]
async fn connection_closed_before_response_is_502_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // Read a little of the request, then hang up without answering.
            let mut buf = [0u8; 16];
            let _ = stream.readable().await;
            let _ = stream.try_read(&mut buf);
            drop(stream);
        }
    });
    let req = Request::post(to(addr, "/")).body(full("order")).unwrap();
    let res = Proxy::new().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(res.extensions().get::<UpstreamError>().unwrap().kind(), UpstreamErrorKind::Reset);
}

#[tokio::test]
async fn silent_upstream_is_504_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold, mut held) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = hold.send(stream); // keep it open, never answer
        }
    });
    let proxy = crate::TimeoutLayer::new(Duration::from_millis(200)).layer(Proxy::<TestBody>::new());
    let start = std::time::Instant::now();
    let res = proxy.oneshot(Request::get(to(addr, "/")).body(full("")).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.extensions().get::<UpstreamError>().unwrap().kind(), UpstreamErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(held.try_recv().is_ok(), "the upstream did get the connection");
}

#[tokio::test]
async fn request_without_destination_is_502() {
    let res = Proxy::<TestBody>::new().oneshot(Request::get("/relative").body(full("")).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(&res.into_body().collect().await.unwrap().to_bytes()), "no_destination");
}

const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 100 * 1024 * 1024;

/// 100 MB each way, in lock step: the next upload chunk is only produced once the
/// upstream has received the previous one, so a proxy that buffered the body
/// would never finish. The download is produced lazily too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mb_both_ways_without_buffering() {
    let received = Arc::new(AtomicU64::new(0));
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<u64>();
    let upstream = {
        let received = received.clone();
        serve(move |req: Request<Incoming>| {
            let (received, ack_tx) = (received.clone(), ack_tx.clone());
            async move {
                let mut body = req.into_body();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        let total = received.fetch_add(data.len() as u64, Ordering::SeqCst) + data.len() as u64;
                        let _ = ack_tx.send(total);
                    }
                }
                let chunks = futures_util::stream::iter(
                    (0..TOTAL / CHUNK)
                        .map(|_| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(vec![7u8; CHUNK])))),
                );
                Response::new(BodyExt::boxed(StreamBody::new(chunks)))
            }
        })
        .await
    };

    let (tx, rx) = mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) }));
    let req = Request::put(to(upstream, "/upload"))
        .header("content-length", TOTAL.to_string())
        .body(BodyExt::boxed(body))
        .unwrap();
    let proxy: Proxy<TestBody> = Proxy::new();
    let response = tokio::spawn(proxy.oneshot(req));

    let mut sent = 0u64;
    while sent < TOTAL as u64 {
        tx.send(Ok(http_body::Frame::data(Bytes::from(vec![1u8; CHUNK])))).await.unwrap();
        sent += CHUNK as u64;
        // Wait until the upstream has this chunk before making the next one.
        let wait = async {
            while let Some(total) = ack_rx.recv().await {
                if total >= sent {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.expect("the proxy held the upload back");
    }
    drop(tx);

    let res = response.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut downloaded = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            downloaded += data.len();
        }
    }
    assert_eq!(received.load(Ordering::SeqCst), TOTAL as u64);
    assert_eq!(downloaded, TOTAL);
}

#[tokio::test]
async fn chunked_wins_over_a_content_length_from_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        // Both framings: the length (5) is wrong for the chunked body (11 bytes).
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                        6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";
        stream.write_all(response.as_bytes()).await.unwrap();
    });
    let res = Proxy::new().oneshot(Request::get(to(addr, "/")).body(full("")).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("content-length").is_none(), "{:?}", res.headers());
    assert!(res.headers().get("transfer-encoding").is_none(), "hop-by-hop: the client's own hop frames it");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello world");
}

/// An upstream that, asked to upgrade, answers `101` for the protocol asked
/// (accepting a WebSocket's key) and echoes raw bytes; a plain request gets
/// `200` with the `Upgrade` it saw (or `none`).
async fn upgrading_upstream() -> SocketAddr {
    serve(|mut req: Request<Incoming>| async move {
        let Some(proto) = req.headers().get(header::UPGRADE).cloned() else {
            return Response::new(full("none"));
        };
        let accept = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|key| crate::upgrade::accept_key(key.as_bytes()));
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = TokioIo::new(upgraded.await.unwrap());
            let (mut rx, mut tx) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut rx, &mut tx).await;
        });
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut().insert(header::UPGRADE, proto);
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(accept) = accept {
            res.headers_mut().insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::try_from(accept).unwrap());
        }
        res
    })
    .await
}

/// An upstream that answers every request `101` with these `Upgrade` and
/// `Sec-WebSocket-Accept` headers, whatever was asked.
async fn switching_upstream(upgrade: &'static str, accept: Option<&'static str>) -> SocketAddr {
    serve(move |mut req: Request<Incoming>| async move {
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgraded.await {
                let (mut rx, mut tx) = tokio::io::split(TokioIo::new(io));
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
            }
        });
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(upgrade));
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(accept) = accept {
            res.headers_mut().insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static(accept));
        }
        res
    })
    .await
}

/// Serves `proxy` (to `upstream`) over HTTP/1.1 with upgrades, as axum or
/// hyper-util's `serve_connection_with_upgrades` would.
async fn serve_proxy(proxy: Proxy<Incoming>, upstream: SocketAddr) -> SocketAddr {
    serve(move |mut req: Request<Incoming>| {
        *req.uri_mut() = to(upstream, req.uri().path());
        let proxy = proxy.clone();
        async move {
            let Ok(res) = proxy.oneshot(req).await;
            res.map(|body| body.map_err(BoxError::from).boxed())
        }
    })
    .await
}

/// Sends a raw HTTP/1.1 head and reads the response head.
async fn raw_head(stream: &mut tokio::net::TcpStream, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the head was cut: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    String::from_utf8(got).unwrap()
}

const UPGRADE_HEAD: &str = "GET /chat HTTP/1.1\r\nhost: gw\r\nconnection: keep-alive, Upgrade\r\nupgrade: websocket\r\n\
    sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn a_websocket_upgrade_is_spliced_and_counted_until_it_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tunnels = Tunnels::new(8, Duration::from_secs(30));
    let proxy = Proxy::builder().tunnels(tunnels.clone()).build();
    let addr = serve_proxy(proxy, upgrading_upstream().await).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = raw_head(&mut stream, UPGRADE_HEAD).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("connection: upgrade"), "{head}");
    for message in [&b"ping"[..], &[7u8; 100_000][..]] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert!(echoed == message, "the bytes came back changed");
    }
    assert_eq!(tunnels.active(), 1);
    assert_eq!(tunnels.stats().opened, 1);
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), tunnels.closed()).await.expect("the tunnel ends with its client");
}

#[tokio::test]
async fn without_upgrades_an_upgrade_is_a_plain_request() {
    let proxy = Proxy::builder().without_upgrades().build();
    let addr = serve_proxy(proxy, upgrading_upstream().await).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = raw_head(&mut stream, UPGRADE_HEAD).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut seen = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut seen).await.unwrap();
    assert_eq!(&seen, b"none", "the upstream saw an Upgrade header");
}

#[tokio::test]
async fn an_upgrade_listing_h2c_beside_websocket_reaches_the_upstream_as_a_websocket_alone() {
    let tunnels = Tunnels::new(8, Duration::from_secs(30));
    let proxy = Proxy::builder().tunnels(tunnels.clone()).build();
    let addr = serve_proxy(proxy, upgrading_upstream().await).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = raw_head(&mut stream, &UPGRADE_HEAD.replace("upgrade: websocket", "upgrade: websocket, h2c")).await;
    let head = head.to_ascii_lowercase();
    // The upstream answers for the protocol it was asked: websocket alone.
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
}

#[tokio::test]
async fn a_switch_to_another_protocol_or_an_accept_for_another_key_is_502_and_nothing_is_spliced() {
    use tokio::io::AsyncReadExt;
    for (upgrade, accept) in [
        ("h2c", Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")),
        ("websocket", Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
        ("websocket", None),
    ] {
        let tunnels = Tunnels::new(8, Duration::from_secs(30));
        let proxy = Proxy::builder().tunnels(tunnels.clone()).build();
        let addr = serve_proxy(proxy, switching_upstream(upgrade, accept).await).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = raw_head(&mut stream, UPGRADE_HEAD).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{upgrade} {accept:?}: {head}");
        let mut body = vec![0u8; 256];
        let n = stream.read(&mut body).await.unwrap();
        assert_eq!(error_code(&body[..n]), "upstream_bad_upgrade");
        tokio::time::timeout(Duration::from_secs(5), tunnels.closed()).await.expect("no tunnel stays open");
        assert_eq!(tunnels.active(), 0);
    }
}

#[tokio::test]
async fn a_clients_request_trailers_never_reach_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The upstream reads the whole body and answers with what it found after it.
    let upstream = serve(|req: Request<Incoming>| async move {
        let collected = req.into_body().collect().await.unwrap();
        let trailers = collected.trailers().map(|t| format!("{t:?}")).unwrap_or_else(|| "none".into());
        let body = collected.to_bytes();
        Response::new(full(format!("{} {trailers}", String::from_utf8_lossy(&body))))
    })
    .await;
    let addr = serve_proxy(Proxy::builder().build(), upstream).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /x HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\ntrailer: x-user-id\r\nconnection: close\r\n\r\n\
              5\r\nhello\r\n0\r\nx-user-id: 1\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("hello none"), "the body arrived, its trailers did not: {response}");
}

/// The trailers `body` sends after "data", as the upstream would read them
/// through [`Outgoing`].
async fn trailers_sent(trailers: HeaderMap, grpc: bool) -> Option<HeaderMap> {
    let frames = [
        Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"data"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let collected = Outgoing { body: Box::pin(body), grpc }.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "data");
    trailers
}

#[tokio::test]
async fn a_grpc_call_keeps_every_value_of_its_grpc_trailers_and_nothing_else() {
    let mut trailers = HeaderMap::new();
    trailers.append("grpc-x", HeaderValue::from_static("1"));
    trailers.append("grpc-x", HeaderValue::from_static("2"));
    trailers.append("x-user-id", HeaderValue::from_static("7"));
    let kept = trailers_sent(trailers.clone(), true).await.expect("gRPC's trailers pass");
    assert_eq!(kept.get_all("grpc-x").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(kept.len(), 2, "x-user-id never passes: {kept:?}");
    assert_eq!(trailers_sent(trailers, false).await, None, "no trailers at all on a call that is not gRPC");
}

//! Slow bodies both ways: a trickled upload holds only its route's share of the
//! gateway, a stalled one is cut at the body idle timeout, and so is a response
//! body that stops flowing.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use demo_gateway::config::{RouteConfig, UpstreamConfig};
use demo_gateway::{Access, Config};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_gateway_tests::{Gateway, Server, backend, serve};

/// A backend that sends the head and one chunk, then nothing more, ever.
async fn stalling_backend() -> Server {
    serve(tower::service_fn(|_: Request<Incoming>| async {
        let chunks = futures_stream();
        Ok::<_, Infallible>(Response::new(StreamBody::new(chunks)))
    }))
    .await
}

fn futures_stream() -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first chunk")))).await;
        // Keep the stream open without sending.
        tx.closed().await;
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn config(routes: &[(&str, &Server)]) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        max_concurrent_requests: 8,
        max_route_concurrent_requests: Some(4),
        body_idle_timeout_ms: 500,
        upstreams: Default::default(),
        routes: Vec::new(),
        ..Config::default()
    };
    for (prefix, server) in routes {
        let name = prefix.trim_start_matches('/').to_owned();
        config.upstreams.insert(name.clone(), UpstreamConfig { endpoints: vec![server.url()], ..Default::default() });
        config.routes.push(RouteConfig {
            prefix: Some((*prefix).into()),
            upstream: name,
            access: Some(Access::Public),
            ..RouteConfig::default()
        });
    }
    config
}

/// Starts an upload of `length` bytes and sends its head only.
async fn start_upload(addr: std::net::SocketAddr, path: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Sends a byte on each upload every 200 ms, ten times; gives them back.
async fn trickle(mut uploads: Vec<TcpStream>) -> Vec<TcpStream> {
    for _ in 0..10 {
        for stream in &mut uploads {
            // A refused or cut upload is closed: the write may fail.
            let _ = stream.write_all(b"a").await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    uploads
}

async fn status_of(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut response = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_holds_only_its_routes_share_and_a_stalled_one_is_cut() {
    let (slow, fast) = (backend("slow").await, backend("fast").await);
    let gw = Gateway::start(config(&[("/slow", &slow), ("/fast", &fast)])).await;
    let client = tower_gateway_tests::Client::new();

    // Four uploads trickle a byte every 200 ms: the route's whole share.
    let mut trickling = Vec::new();
    for _ in 0..4 {
        trickling.push(start_upload(gw.addr(), "/slow/x", 1_000).await);
    }
    let feeder = tokio::spawn(trickle(trickling));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The fifth on that route is refused at once; other routes are served.
    let reply = client.get(&format!("{}/slow/y", gw.url())).await.unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["code"], "overloaded");
    // Counted as the route's answer, and as a refusal at the limit.
    let metrics = client.get(&format!("{}/metrics", gw.url())).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let counted = |line: &str| {
        line.starts_with("gateway_requests_total{")
            && line.contains("/slow")
            && line.contains("5xx")
            && line.ends_with(" 1")
    };
    assert!(metrics.lines().any(counted), "{metrics}");
    assert!(metrics.lines().any(|l| l == "gateway_overloaded_requests_total 1"), "{metrics}");
    for _ in 0..5 {
        assert_eq!(client.get(&format!("{}/fast/y", gw.url())).await.unwrap().status, 200);
    }

    // Once the trickle stops, each upload is cut at the body idle timeout (0.5 s).
    let mut trickling = feeder.await.unwrap();
    let stopped = Instant::now();
    for stream in &mut trickling {
        assert_eq!(status_of(stream, Duration::from_secs(3)).await, Some(400));
    }
    assert!(stopped.elapsed() < Duration::from_secs(2), "cut after {:?}", stopped.elapsed());
    // And the route's share is free again.
    assert_eq!(client.get(&format!("{}/slow/y", gw.url())).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_stops_flowing_is_cut() {
    let stalling = stalling_backend().await;
    let gw = Gateway::start(config(&[("/stall", &stalling)])).await;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let res = client.get(format!("{}/stall/x", gw.url()).parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first chunk");
    let ended = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("the body was cut");
    assert!(!matches!(ended, Some(Ok(_))), "no more data: {ended:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "cut after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_download_outlives_the_connection_idle_timeouts() {
    // Eight chunks 150 ms apart: 1.2 s in all, past the 300 ms header and idle
    // timeouts, each gap within the 500 ms body idle timeout.
    let steady = serve(tower::service_fn(|_: Request<Incoming>| async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for i in 0..8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(format!("chunk {i};"))))).await;
            }
        });
        Ok::<_, Infallible>(Response::new(StreamBody::new(tokio_stream_from(rx))))
    }))
    .await;
    let mut cfg = config(&[("/steady", &steady)]);
    cfg.header_read_timeout_ms = 300;
    cfg.idle_timeout_ms = 300;
    let gw = Gateway::start(cfg).await;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let res = client.get(format!("{}/steady/x", gw.url()).parse().unwrap()).await.unwrap();
    let body = res.into_body().collect().await.expect("the whole body").to_bytes();
    assert_eq!(body, (0..8).map(|i| format!("chunk {i};")).collect::<String>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_cannot_take_the_capacity_of_clients_with_a_token() {
    use tower_gateway_auth::{Algorithm, TokenIssuer};
    const SECRET: &str = "a slow clients test secret of 32+ bytes";
    let (login, products, checkout) = (backend("login").await, backend("products").await, backend("checkout").await);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut config = config(&[("/login", &login), ("/products", &products), ("/checkout", &checkout)]);
    config.routes[2].access = Some(Access::Token);
    config.jwt = tower_gateway_auth::KeyConfig { secret_file: Some(secret), ..Default::default() };
    let gw = Gateway::start(config).await;
    let client = tower_gateway_tests::Client::new();

    // A body on GET holds no place: refused before it is read.
    let mut get_with_body = TcpStream::connect(gw.addr()).await.unwrap();
    get_with_body
        .write_all(b"GET /products/1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&mut get_with_body, Duration::from_secs(3)).await, Some(400));

    // Four trickled uploads on each of two public routes (each route's whole
    // share of 4; the gateway's capacity is 8).
    let mut trickling = Vec::new();
    for path in ["/login/x", "/products/x"] {
        for _ in 0..4 {
            let mut stream = start_upload(gw.addr(), path, 1_000).await;
            // A refused upload is answered and closed: the write may fail.
            let _ = stream.write_all(b"a").await;
            trickling.push(stream);
        }
    }
    let feeder = tokio::spawn(trickle(trickling));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Anonymous requests hold at most 6 of the 8 places: a client with a token
    // is still served, and an anonymous one is told the gateway is busy.
    let token = TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap().issue("7", None, &[]).unwrap();
    for _ in 0..3 {
        let request = http::Request::get(format!("{}/checkout/orders", gw.url()))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(client.send(request).await.unwrap().status, 200);
    }
    let refused = client.get(&format!("{}/products/1", gw.url())).await.unwrap();
    assert_eq!((refused.status.as_u16(), refused.json()["error"]["code"].as_str()), (503, Some("overloaded")));
    let mut trickling = feeder.await.unwrap();
    for stream in &mut trickling {
        let _ = status_of(stream, Duration::from_secs(3)).await;
    }
}

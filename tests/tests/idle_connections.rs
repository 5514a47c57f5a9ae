//! Idle keep-alive connections: once its response has gone out, a plain
//! HTTP/1.1 connection is parked (the gateway holds its socket and no buffer),
//! and it is served again as soon as its client speaks, losing no byte of what
//! it had sent ahead; parked or not, it is closed at the header timeout.

use std::time::{Duration, Instant};

use demo_gateway::config::{RouteConfig, UpstreamConfig};
use demo_gateway::{Access, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tower_gateway_tests::{Gateway, Server, backend, read_response};

fn config(backend: &Server) -> Config {
    let mut config =
        Config { listen: "127.0.0.1:0".into(), upstreams: Default::default(), routes: Vec::new(), ..Config::default() };
    config.upstreams.insert("fast".into(), UpstreamConfig { endpoints: vec![backend.url()], ..Default::default() });
    config.routes.push(RouteConfig {
        prefix: Some("/api/fast".into()),
        upstream: "fast".into(),
        access: Some(Access::Public),
        ..RouteConfig::default()
    });
    config
}

/// Polls `name` until it reads `want`, for at most `within`.
async fn wait_for_metric(gw: &Gateway, name: &str, want: i64, within: Duration) {
    let started = Instant::now();
    loop {
        let seen = gw.metric_now(name).await;
        if seen == want {
            return;
        }
        assert!(started.elapsed() < within, "{name} still {seen}, not {want}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_parked_and_served_again_with_what_it_sent_ahead() {
    let fast = backend("fast").await;
    let gw = Gateway::start(config(&fast)).await;
    let parked = "gateway_connections_parked";

    let mut conn = BufReader::new(TcpStream::connect(gw.addr()).await.unwrap());
    conn.get_mut().write_all(get("/api/fast/one").as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"/one\""), "{body}");

    // Idle: parked, and served again on the same socket.
    wait_for_metric(&gw, parked, 1, Duration::from_secs(5)).await;
    conn.get_mut().write_all(get("/api/fast/two").as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!((status, body.contains("\"/two\"")), (200, true), "{body}");

    // A client that comes straight back is likely to again: its connection is
    // parked once idle for a second instead (or at once, on a slow machine).
    for path in ["/api/fast/quick1", "/api/fast/quick2"] {
        conn.get_mut().write_all(get(path).as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut conn).await.0, 200);
    }
    wait_for_metric(&gw, parked, 1, Duration::from_secs(5)).await;

    // After a request with a body too (a second later: hyper may still be
    // reading a body when the response ends).
    let post = "POST /api/fast/posted HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"xyz\"}";
    conn.get_mut().write_all(post.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!((status, body.contains("xyz")), (200, true), "{body}");
    wait_for_metric(&gw, parked, 1, Duration::from_secs(5)).await;
    conn.get_mut().write_all(get("/api/fast/after-post").as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!((status, body.contains("\"/after-post\"")), (200, true), "{body}");

    // A request and the first half of the next, sent together: hyper reads
    // both, answers the first, and the half it holds survives the parking.
    let third = get("/api/fast/three");
    let (half, rest) = third.split_at(20);
    conn.get_mut().write_all(format!("{}{half}", get("/api/fast/ahead")).as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!((status, body.contains("\"/ahead\"")), (200, true), "{body}");
    wait_for_metric(&gw, parked, 1, Duration::from_secs(5)).await;
    conn.get_mut().write_all(rest.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut conn).await;
    assert_eq!((status, body.contains("\"/three\"")), (200, true), "{body}");

    // HTTP/2 with prior knowledge is told from HTTP/1.1 by its first bytes.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let res = h2.get(format!("{}/api/fast/h2", gw.url()).parse().unwrap()).await.unwrap();
    assert_eq!((res.status().as_u16(), res.version()), (200, http::Version::HTTP_2));
    drop((res, h2));

    // A client that goes away while parked is let go of.
    wait_for_metric(&gw, parked, 1, Duration::from_secs(5)).await;
    drop(conn);
    wait_for_metric(&gw, parked, 0, Duration::from_secs(5)).await;
    wait_for_metric(&gw, "gateway_connections", 1, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_at_the_header_timeout() {
    let fast = backend("fast").await;
    let mut config = config(&fast);
    config.header_read_timeout_ms = 2_500;
    let gw = Gateway::start(config).await;

    let mut conn = BufReader::new(TcpStream::connect(gw.addr()).await.unwrap());
    conn.get_mut().write_all(get("/api/fast/one").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut conn).await.0, 200);
    let answered = Instant::now();
    wait_for_metric(&gw, "gateway_connections_parked", 1, Duration::from_secs(5)).await;

    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed without another byte: {read:?} {rest:?}");
    let after = answered.elapsed();
    assert!(after >= Duration::from_secs(2) && after < Duration::from_secs(5), "closed {after:?} after its answer");
    assert_eq!(gw.metric_now("gateway_connections_closed_idle_total").await, 1);
    assert_eq!(gw.metric_now("gateway_connections_parked").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_connection_that_never_spoke_makes_room_before_a_keep_alive_one() {
    let fast = backend("fast").await;
    let mut config = config(&fast);
    config.max_connections = 2;
    config.header_read_timeout_ms = 30_000;
    let gw = Gateway::start(config).await;

    // One connection that says nothing, and, once it has been silent a while, a
    // keep-alive client served once and now between requests.
    let mut silent = TcpStream::connect(gw.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut kept = BufReader::new(TcpStream::connect(gw.addr()).await.unwrap());
    kept.get_mut().write_all(get("/api/fast/one").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut kept).await.0, 200);

    // Both slots are taken: a third client is refused, which asks for room.
    let mut refused = BufReader::new(TcpStream::connect(gw.addr()).await.unwrap());
    let (status, body) = read_response(&mut refused).await;
    assert_eq!((status, body.contains("too_many_connections")), (503, true), "{body}");

    // The silent one is closed; the keep-alive one, idle for much less than a
    // second, is not, and is served again.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "the silent connection was closed without a byte: {read:?} {rest:?}");
    kept.get_mut().write_all(get("/api/fast/two").as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut kept).await;
    assert_eq!((status, body.contains("\"/two\"")), (200, true), "{body}");

    // The refused client, back at once, gets the room made.
    let mut back = BufReader::new(TcpStream::connect(gw.addr()).await.unwrap());
    back.get_mut().write_all(get("/api/fast/back").as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut back).await;
    assert_eq!((status, body.contains("\"/back\"")), (200, true), "{body}");
}

/// A connection from `ip` to `addr`.
async fn connect_from(ip: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection_and_its_own_silent_ones_make_no_room() {
    let fast = backend("fast").await;
    let mut config = config(&fast);
    config.max_connections = 10;
    config.max_connections_per_client = 3;
    config.header_read_timeout_ms = 30_000;
    let gw = Gateway::start(config).await;

    // 127.0.0.2 holds its three, silent: its fourth is refused and says why.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", gw.addr()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = BufReader::new(connect_from("127.0.0.2", gw.addr()).await);
    let (status, body) = read_response(&mut fourth).await;
    assert_eq!((status, body.contains("too_many_client_connections")), (503, true), "{body}");
    // That refusal is its own: it asked no connection to make room (the
    // global cap is not full), so its silent three are still open.
    for stream in &mut held {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
        assert!(read.is_err(), "a held connection was closed: {read:?}");
    }
    assert_eq!(gw.metric_now("gateway_client_connections_refused_total").await, 1);

    // Another client is served beside it.
    let mut other = BufReader::new(connect_from("127.0.0.3", gw.addr()).await);
    other.get_mut().write_all(get("/api/fast/other").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut other).await.0, 200);

    // One of its connections ends: it may open one again.
    held.pop();
    let started = Instant::now();
    loop {
        let mut again = connect_from("127.0.0.2", gw.addr()).await;
        // A refused try may be reset under the write or the read.
        let mut answer = String::new();
        if again.write_all(get("/api/fast/again").as_bytes()).await.is_ok() {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), again.read(&mut buf)).await.unwrap().unwrap_or(0);
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "still refused after a close: {answer:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

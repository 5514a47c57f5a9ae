//! WebSocket through the gateway, with a real client (tokio-tungstenite) and a
//! real server (axum's `ws`): echo, a 1 MB message, a protected route, a
//! backend that refuses, a route that does not carry upgrades, the cap, the
//! idle timeout and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as AxumMessage, WebSocketUpgrade};
use axum::routing::get;
use demo_gateway::config::{Access, Config, RouteConfig, UpstreamConfig};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tower_gateway_auth::KeyConfig;
use tower_gateway_auth::TokenIssuer;
use tower_gateway_tests::{Gateway, Server, serve};

const SECRET: &str = "a websocket test secret of 32+ bytes";

/// A WebSocket backend: `/echo` echoes every message; `/refuse` answers an
/// upgrade `403`. Counts the upgrade requests it receives.
struct Backend {
    server: Server,
    upgrades: Arc<AtomicUsize>,
}

async fn ws_backend() -> Backend {
    let upgrades = Arc::new(AtomicUsize::new(0));
    let (echo_count, refuse_count) = (upgrades.clone(), upgrades.clone());
    let app = axum::Router::new()
        .route(
            "/echo",
            get(move |ws: WebSocketUpgrade| {
                echo_count.fetch_add(1, Ordering::SeqCst);
                async move {
                    ws.max_message_size(4 << 20).on_upgrade(|mut socket| async move {
                        while let Some(Ok(msg)) = socket.recv().await {
                            if matches!(msg, AxumMessage::Close(_)) || socket.send(msg).await.is_err() {
                                break;
                            }
                        }
                    })
                }
            }),
        )
        .route(
            "/refuse",
            get(move || {
                refuse_count.fetch_add(1, Ordering::SeqCst);
                async {
                    (http::StatusCode::FORBIDDEN, axum::Json(serde_json::json!({ "error": "no websockets here" })))
                }
            }),
        );
    Backend { server: serve(app).await, upgrades }
}

fn route(prefix: &str, access: Access, websocket: bool) -> RouteConfig {
    RouteConfig {
        prefix: Some(prefix.into()),
        upstream: "ws".into(),
        access: Some(access),
        websocket,
        ..Default::default()
    }
}

/// A gateway in front of `backend`: `/open` (public, WebSocket), `/locked`
/// (a token, WebSocket), `/plain` (public, no WebSocket).
async fn gateway(backend: &Backend, adjust: impl FnOnce(&mut Config)) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        jwt: KeyConfig { secret_file: Some(secret), ..KeyConfig::default() },
        upstreams: [("ws".to_owned(), UpstreamConfig { endpoints: vec![backend.server.url()], ..Default::default() })]
            .into(),
        routes: vec![
            route("/open", Access::Public, true),
            route("/locked", Access::Token, true),
            route("/plain", Access::Public, false),
        ],
        limits: Default::default(),
        ..Config::default()
    };
    adjust(&mut config);
    (Gateway::start(config).await, dir)
}

fn ws_url(gw: &Gateway, path: &str) -> String {
    format!("ws://{}{path}", gw.addr())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, bearer: Option<&str>) -> Result<Socket, WsError> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (socket, response) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake ends within 10 s")?;
    assert_eq!(response.status(), 101);
    Ok(socket)
}

/// The status and JSON body of a refused handshake.
fn refused(err: WsError) -> (u16, serde_json::Value) {
    match err {
        WsError::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            (response.status().as_u16(), serde_json::from_slice(body).unwrap_or(serde_json::Value::Null))
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

async fn next(socket: &mut Socket) -> Message {
    tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a message within 10 s")
        .expect("the socket is open")
        .expect("a message, not an error")
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = tower_gateway_tests::Client::new().get(&format!("{}/metrics", gw.url())).await.unwrap().body;
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Polls `check` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_echo_through_the_gateway_a_1_mb_one_included() {
    let backend = ws_backend().await;
    let (gw, _dir) = gateway(&backend, |_| {}).await;
    let mut socket = connect(&ws_url(&gw, "/open/echo"), None).await.unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text("hello"));

    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    socket.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut socket).await {
        Message::Binary(data) => assert!(data[..] == big[..], "the 1 MB message came back changed"),
        other => panic!("expected the binary message back, got {other:?}"),
    }
    assert_eq!(metric(&gw, "gateway_websockets ").await, 1.0);
    assert_eq!(metric(&gw, "gateway_websocket_upgrades_total{outcome=\"opened\"}").await, 1.0);

    // The closing handshake, to the end of the stream.
    socket.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), socket.next()).await {}
    eventually("the tunnel ends after the close", async || metric(&gw, "gateway_websockets ").await == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_route_needs_a_token_to_upgrade() {
    let backend = ws_backend().await;
    let (gw, _dir) = gateway(&backend, |_| {}).await;
    let (status, body) = refused(connect(&ws_url(&gw, "/locked/echo"), None).await.unwrap_err());
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_token", "{body}");
    let (status, _) = refused(connect(&ws_url(&gw, "/locked/echo"), Some("not.a.token")).await.unwrap_err());
    assert_eq!(status, 401);
    assert_eq!(backend.upgrades.load(Ordering::SeqCst), 0, "a refused upgrade reached the backend");

    let token = TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap().issue("7", None, &[]).unwrap();
    let mut socket = connect(&ws_url(&gw, "/locked/echo"), Some(&token)).await.unwrap();
    socket.send(Message::text("with a token")).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text("with a token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusal_and_a_route_without_websocket_reach_the_client_as_answers() {
    let backend = ws_backend().await;
    let (gw, _dir) = gateway(&backend, |_| {}).await;
    let (status, body) = refused(connect(&ws_url(&gw, "/open/refuse"), None).await.unwrap_err());
    assert_eq!(status, 403, "the backend's own answer is relayed");
    assert_eq!(body["error"], "no websockets here");

    // The route does not carry upgrades: the backend sees a plain GET, which
    // its WebSocket handler refuses as such.
    let (status, _) = refused(connect(&ws_url(&gw, "/plain/echo"), None).await.unwrap_err());
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(backend.upgrades.load(Ordering::SeqCst), 1, "only /refuse was asked; /echo never saw an upgrade");
    assert_eq!(metric(&gw, "gateway_websockets ").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_past_the_cap_are_refused_and_idle_ones_are_closed() {
    let backend = ws_backend().await;
    let (gw, _dir) = gateway(&backend, |c| {
        c.websocket_max_connections = 1;
        c.websocket_idle_timeout_ms = 1_000;
    })
    .await;
    let mut first = connect(&ws_url(&gw, "/open/echo"), None).await.unwrap();
    let (status, body) = refused(connect(&ws_url(&gw, "/open/echo"), None).await.unwrap_err());
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "too_many_upgrades", "{body}");
    assert_eq!(backend.upgrades.load(Ordering::SeqCst), 1, "the refused upgrade was not sent upstream");

    // Traffic keeps it open past the timeout...
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_500) {
        first.send(Message::text("still here")).await.unwrap();
        assert_eq!(next(&mut first).await, Message::text("still here"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and silence closes it.
    let closed_at = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), first.next()).await.expect("closed within 10 s") {
        None | Some(Err(_)) => {}
        Some(Ok(msg)) => assert!(matches!(msg, Message::Close(_)), "expected the end, got {msg:?}"),
    }
    assert!(closed_at.elapsed() >= Duration::from_millis(700), "closed before its idle timeout");
    eventually("the idle close is counted", async || metric(&gw, "gateway_websockets_closed_idle_total ").await == 1.0)
        .await;
    assert_eq!(metric(&gw, "gateway_websocket_upgrades_total{outcome=\"refused\"}").await, 1.0);

    // The place is free again.
    let mut again = connect(&ws_url(&gw, "/open/echo"), None).await.unwrap();
    again.send(Message::text("again")).await.unwrap();
    assert_eq!(next(&mut again).await, Message::text("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_websockets_after_the_drain() {
    let backend = ws_backend().await;
    let (gw, _dir) = gateway(&backend, |c| c.websocket_idle_timeout_ms = 600_000).await;
    let mut socket = connect(&ws_url(&gw, "/open/echo"), None).await.unwrap();
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text("before"));
    drop(gw);
    match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("closed within 10 s") {
        None | Some(Err(_)) => {}
        Some(Ok(msg)) => assert!(matches!(msg, Message::Close(_)), "expected the end, got {msg:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_at_most_its_share_of_websockets() {
    let backend = ws_backend().await;
    let (gw, _dir) = gateway(&backend, |c| c.websocket_max_connections_per_client = 2).await;
    let first = connect(&ws_url(&gw, "/open/echo"), None).await.unwrap();
    let _second = connect(&ws_url(&gw, "/open/echo"), None).await.unwrap();
    let (status, body) = refused(connect(&ws_url(&gw, "/open/echo"), None).await.unwrap_err());
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("too_many_upgrades")), "{body}");
    assert_eq!(backend.upgrades.load(Ordering::SeqCst), 2, "the refused upgrade was not sent upstream");
    // One of its own closes: it may open another.
    drop(first);
    eventually("the closed tunnel's place comes back", async || metric(&gw, "gateway_websockets ").await == 1.0).await;
    let mut again = connect(&ws_url(&gw, "/open/echo"), None).await.unwrap();
    again.send(Message::text("again")).await.unwrap();
    assert_eq!(next(&mut again).await, Message::text("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_ends_when_the_token_that_opened_it_expires_busy_or_not() {
    let backend = ws_backend().await;
    let (gw, _dir) = gateway(&backend, |_| {}).await;
    // A token for two seconds (whole seconds: it expires 1 to 2 s from now).
    let issuer = TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap().ttl(Duration::from_secs(2));
    let token = issuer.issue("7", None, &[]).unwrap();
    let mut socket = connect(&ws_url(&gw, "/locked/echo"), Some(&token)).await.unwrap();
    let opened = Instant::now();
    // Traffic both ways every 100 ms does not keep it open past the token.
    let ended = loop {
        assert!(opened.elapsed() < Duration::from_secs(5), "the tunnel outlived its token by 3 s");
        if socket.send(Message::text("still here")).await.is_err() {
            break opened.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(1), socket.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => break opened.elapsed(),
        }
    };
    assert!(ended >= Duration::from_millis(900), "closed after {ended:?}, before its token expired");
    eventually("the close is counted", async || {
        metric(&gw, "gateway_websockets_closed_at_deadline_total ").await == 1.0
    })
    .await;
}

//! A live configuration: reloads under load (HTTP/1.1, HTTP/2 and WebSockets)
//! lose nothing and route every request after the acknowledgement by the new
//! configuration; a refused configuration leaves the old one serving, by every
//! path (the API, the admin endpoint, the watched file, SIGHUP); what a reload
//! does not touch (limiter state, ejected endpoints) survives it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use demo_gateway::config::{Access, Config, LimitConfig, RouteConfig, UpstreamConfig};
use demo_gateway::{Gateway as Live, Plan};
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;
use tower_gateway_tests::{Client, Gateway, backend, closed_port, eventually, metric, serve};

fn route(prefix: &str, upstream: &str) -> RouteConfig {
    RouteConfig {
        prefix: Some(prefix.into()),
        upstream: upstream.into(),
        access: Some(Access::Public),
        ..Default::default()
    }
}

fn upstream(endpoints: &[String]) -> UpstreamConfig {
    UpstreamConfig { endpoints: endpoints.to_vec(), ..Default::default() }
}

/// `/api` to `main`, whose endpoints are `main`; `/ws` carries WebSockets to
/// `ws`; with `extra`, `/extra` to `main` too; `/api` limited to `rate` a second.
fn config(main: &str, ws: &str, extra: bool, rate: u32) -> Config {
    let mut routes = vec![
        RouteConfig { limits: vec!["api".into()], ..route("/api", "main") },
        RouteConfig { websocket: true, ..route("/ws", "ws") },
    ];
    if extra {
        routes.push(route("/extra", "main"));
    }
    Config {
        listen: "127.0.0.1:0".into(),
        upstreams: [("main".to_owned(), upstream(&[main.to_owned()])), ("ws".to_owned(), upstream(&[ws.to_owned()]))]
            .into(),
        limits: [("api".to_owned(), toml_limit(&format!("rate = {rate}\nper = \"second\"\nkey = \"global\"")))].into(),
        routes,
        // The load test's 20 WebSockets come from one address.
        websocket_max_connections_per_client: 32,
        ..Config::default()
    }
}

fn toml_limit(text: &str) -> LimitConfig {
    toml::from_str(text).unwrap()
}

/// A WebSocket backend echoing every message at any path.
async fn echo_backend() -> tower_gateway_tests::Server {
    use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
    let echo = |ws: WebSocketUpgrade| async move {
        ws.on_upgrade(|mut socket| async move {
            while let Some(Ok(message)) = socket.recv().await {
                if matches!(message, WsMessage::Close(_)) || socket.send(message).await.is_err() {
                    break;
                }
            }
        })
    };
    serve(axum::Router::new().fallback(axum::routing::get(echo))).await
}

/// Which backend answered, or why nothing did.
async fn backend_of(response: Result<hyper::Response<hyper::body::Incoming>, impl std::fmt::Display>) -> String {
    match response {
        Ok(response) if response.status() == 200 => {
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&body)
                .map_or_else(|_| "unreadable".to_owned(), |v| v["backend"].as_str().unwrap_or("none").to_owned())
        }
        Ok(response) => format!("status {}", response.status()),
        Err(err) => format!("error {err}"),
    }
}

/// What the reloader has acknowledged: the sequence number of the generation in
/// force (odd while a reload is under way) and the backend it routes `/api` to.
#[derive(Default)]
struct Phase {
    sequence: AtomicU64,
    /// 0: backend "a"; 1: backend "b".
    expect_b: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_no_request_and_no_websocket() {
    let (a, b, ws) = (backend("a").await, backend("b").await, echo_backend().await);
    let ws_url = ws.url();
    // A: /api → a, with /extra, 100000/s; B: /api → b, without /extra, 200000/s.
    let config_a = config(&a.url(), &ws_url, true, 100_000);
    let config_b = config(&b.url(), &ws_url, false, 200_000);
    let live = Live::new(Plan::compile(config_a.clone()).unwrap());
    let gw = Gateway::serve(live.clone()).await;

    let mut sockets = Vec::new();
    for _ in 0..20 {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/echo", gw.addr())).await.unwrap();
        sockets.push(socket);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(Phase::default());
    let (answered, misrouted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = tokio::task::JoinSet::new();
    let http2 = HyperClient::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    for client in 0..12 {
        let (stop, phase, answered, misrouted, failures) =
            (stop.clone(), phase.clone(), answered.clone(), misrouted.clone(), failures.clone());
        // 8 HTTP/1.1 clients, each on its own keep-alive connection; 4 on HTTP/2.
        let h1 = Client::new();
        let h2 = http2.clone();
        let url = format!("{}/api/items", gw.url());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let before = phase.sequence.load(Ordering::Acquire);
                let expect_b = phase.expect_b.load(Ordering::Acquire);
                let request = Request::get(&url).body(Full::default()).unwrap();
                let seen = if client < 8 {
                    match h1.send(request).await {
                        Ok(reply) if reply.status == 200 => {
                            reply.json()["backend"].as_str().unwrap_or("none").to_owned()
                        }
                        Ok(reply) => format!("status {}", reply.status),
                        Err(err) => format!("error {err}"),
                    }
                } else {
                    backend_of(h2.request(request).await).await
                };
                if seen != "a" && seen != "b" {
                    failures.lock().unwrap().push(seen);
                    continue;
                }
                answered.fetch_add(1, Ordering::Relaxed);
                // Sent after an acknowledgement and before the next reload began:
                // routed by the acknowledged configuration.
                if before % 2 == 0 && phase.sequence.load(Ordering::Acquire) == before {
                    let expected = if expect_b { "b" } else { "a" };
                    if seen != expected {
                        misrouted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // Every WebSocket keeps talking through the reloads.
    let echoed = Arc::new(AtomicUsize::new(0));
    for (i, mut socket) in sockets.into_iter().enumerate() {
        let (stop, echoed, failures) = (stop.clone(), echoed.clone(), failures.clone());
        load.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("{i}:{n}");
                let back = match socket.send(Message::text(text.clone())).await {
                    Ok(()) => tokio::time::timeout(Duration::from_secs(5), socket.next()).await,
                    Err(err) => return failures.lock().unwrap().push(format!("websocket {i}: send: {err}")),
                };
                match back {
                    Ok(Some(Ok(Message::Text(got)))) if got.as_str() == text => {
                        echoed.fetch_add(1, Ordering::Relaxed);
                    }
                    other => return failures.lock().unwrap().push(format!("websocket {i}: {other:?}")),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = socket.close(None).await;
        });
    }

    let client = Client::new();
    for reload in 0..50 {
        let to_b = reload % 2 == 0;
        phase.sequence.fetch_add(1, Ordering::AcqRel);
        let applied = live.apply(if to_b { config_b.clone() } else { config_a.clone() }).await.unwrap();
        assert_eq!(applied.generation, reload + 2);
        phase.expect_b.store(to_b, Ordering::Release);
        phase.sequence.fetch_add(1, Ordering::AcqRel);
        // The acknowledged configuration answers at once: the route added or removed, the upstream changed.
        let extra = client.get(&format!("{}/extra/x", gw.url())).await.unwrap();
        assert_eq!(extra.status, if to_b { 404 } else { 200 }, "reload {reload}");
        let api = client.get(&format!("{}/api/x", gw.url())).await.unwrap();
        assert_eq!(api.json()["backend"], if to_b { "b" } else { "a" }, "reload {reload}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let (answered, echoed) = (answered.load(Ordering::Relaxed), echoed.load(Ordering::Relaxed));
    eprintln!("50 reloads: {answered} requests answered, {echoed} WebSocket echoes, {} failures", failures.len());
    assert!(failures.is_empty(), "lost: {:?}", &failures[..failures.len().min(10)]);
    assert_eq!(
        misrouted.load(Ordering::Relaxed),
        0,
        "requests after an acknowledgement routed by the old configuration"
    );
    assert!(answered > 200 && echoed > 200, "too little load to mean anything: {answered} requests, {echoed} echoes");
    let reloads = metric(&gw.url(), "gateway_config_reloads_total{outcome=\"applied\"}").await;
    assert_eq!(reloads, Some(50.0));
}

#[tokio::test]
async fn a_refused_configuration_leaves_the_one_before_serving() {
    let (a, ws) = (backend("a").await, echo_backend().await);
    let good = config(&a.url(), &ws.url(), true, 1000);
    let live = Live::new(Plan::compile(good.clone()).unwrap());
    let gw = Gateway::serve(live.clone()).await;
    let client = Client::new();

    let mut bad = good.clone();
    bad.routes[0].upstream = "nowhere".into();
    let refused = live.apply(bad).await.unwrap_err();
    assert_eq!(refused.errors[0].field, "routes[0].upstream");

    // A setting only a restart can change is named, each of them.
    let restart = Config { listen: "127.0.0.1:1".into(), max_connections: 7, ..good.clone() };
    let refused = live.apply(restart).await.unwrap_err();
    let fields: Vec<&str> = refused.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["listen", "max_connections"]);
    assert!(refused.errors[0].message.contains("needs a restart"), "{}", refused.errors[0].message);

    assert_eq!(live.generation(), 1);
    assert_eq!(client.get(&format!("{}/extra/1", gw.url())).await.unwrap().json()["backend"], "a");
    assert_eq!(metric(&gw.url(), "gateway_config_reloads_total{outcome=\"refused\"}").await, Some(2.0));
    let info = format!("gateway_config_info{{generation=\"1\",hash=\"{}\"}}", Plan::compile(good).unwrap().hash());
    assert_eq!(metric(&gw.url(), &info).await, Some(1.0), "generation 1 is still the one served");
}

#[tokio::test]
async fn limiter_state_and_an_ejected_endpoint_survive_a_reload_that_does_not_touch_them() {
    let (a, ws) = (backend("a").await, echo_backend().await);
    let dead = format!("http://{}", closed_port());
    let mut first = config(&a.url(), &ws.url(), false, 1);
    first.limits.insert("api".into(), toml_limit("rate = 3\nper = \"hour\"\nkey = \"global\""));
    // /other: a second upstream, one endpoint of which refuses connections.
    first.upstreams.insert("other".into(), UpstreamConfig { eject_after: 1, ..upstream(&[a.url(), dead.clone()]) });
    first.routes.push(route("/other", "other"));
    let live = Live::new(Plan::compile(first.clone()).unwrap());
    let gw = Gateway::serve(live.clone()).await;
    let client = Client::new();
    let get = async |path: &str| client.get(&format!("{}{path}", gw.url())).await.unwrap().status.as_u16();

    assert_eq!([get("/api/1").await, get("/api/2").await, get("/api/3").await], [200; 3]);
    assert_eq!(get("/api/4").await, 429, "the quota of 3 an hour is spent");
    // Retries take the request to the live endpoint; the dead one is ejected.
    for _ in 0..4 {
        assert_eq!(get("/other/1").await, 200);
    }
    let ejected = "gateway_ejected_endpoints{upstream=\"other\"}";
    assert_eq!(metric(&gw.url(), ejected).await, Some(1.0));

    // A reload that adds a route and leaves the limit and the upstream as they were.
    let mut second = first.clone();
    second.routes.push(route("/more", "main"));
    live.apply(second.clone()).await.unwrap();
    assert_eq!(get("/more/1").await, 200, "the new route serves");
    assert_eq!(get("/api/5").await, 429, "the spent quota is still spent");
    assert_eq!(metric(&gw.url(), ejected).await, Some(1.0), "the dead endpoint is still ejected");

    // Changing the limit rebuilds it: a fresh quota.
    let mut third = second;
    third.limits.insert("api".into(), toml_limit("rate = 4\nper = \"hour\"\nkey = \"global\""));
    live.apply(third).await.unwrap();
    for n in 6..10 {
        assert_eq!(get(&format!("/api/{n}")).await, 200, "a changed limit starts afresh");
    }
    assert_eq!(get("/api/10").await, 429);
    // Its decisions go on being counted from where the old limiter's stopped.
    let decisions =
        |outcome: &str| format!("gateway_rate_limit_decisions_total{{limit=\"api\",outcome=\"{outcome}\"}}");
    assert_eq!(metric(&gw.url(), &decisions("allowed")).await, Some(7.0));
    assert_eq!(metric(&gw.url(), &decisions("limited")).await, Some(3.0));
}

/// A free loopback address (bound, then let go).
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn the_admin_endpoint_reloads_with_the_token_and_refuses_without_it() {
    let (a, b, ws) = (backend("a").await, backend("b").await, echo_backend().await);
    let dir = tempfile::tempdir().unwrap();
    let token = "an-admin-token-of-some-length";
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    let admin = free_addr();
    let with_admin = |mut config: Config| {
        config.admin_listen = Some(admin.clone());
        config.admin_token_file = Some(dir.path().join("token"));
        config
    };
    let first = with_admin(config(&a.url(), &ws.url(), true, 1000));
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, toml::to_string(&first).unwrap()).unwrap();
    let live =
        Live::new(Plan::compile(first.clone()).unwrap()).config_file(&file).watch_every(Duration::from_millis(50));
    let gw = Gateway::serve(live.clone()).await;
    let client = Client::new();
    let admin_url = format!("http://{admin}");
    eventually("the admin listener answers", async || client.get(&format!("{admin_url}/readyz")).await.is_ok()).await;
    let post = async |auth: Option<&str>, body: String| {
        let mut request = Request::post(format!("{admin_url}/config/reload"));
        if let Some(auth) = auth {
            request = request.header("authorization", format!("Bearer {auth}"));
        }
        client.send(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap()
    };

    // No token, a wrong one: 401, and nothing changes.
    let second = with_admin(config(&b.url(), &ws.url(), false, 1000));
    let pushed = toml::to_string(&second).unwrap();
    for auth in [None, Some("an-admin-token-of-some-lengtx"), Some("short")] {
        let reply = post(auth, pushed.clone()).await;
        assert_eq!(reply.status, 401, "{auth:?}");
        assert_eq!(reply.json()["error"]["code"], "unauthorized");
    }
    let shown = client.get(&format!("{admin_url}/config")).await.unwrap();
    assert_eq!(shown.status, 401);
    assert_eq!(live.generation(), 1);

    // A bad configuration, pushed: 422 naming the field; the old one serves.
    let reply = post(Some(token), pushed.replace("upstream = \"main\"", "upstream = \"gone\"")).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["error"]["fields"][0]["field"], "routes[0].upstream");
    assert_eq!(client.get(&format!("{}/api/1", gw.url())).await.unwrap().json()["backend"], "a");

    // A good one: applied, and served from the acknowledgement on.
    let reply = post(Some(token), pushed).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["generation"], 2);
    assert_eq!(client.get(&format!("{}/api/1", gw.url())).await.unwrap().json()["backend"], "b");
    let shown = client
        .send(
            Request::get(format!("{admin_url}/config"))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(shown.status, 200);
    assert!(String::from_utf8_lossy(&shown.body).contains(&b.url()), "GET /config shows what is served");

    // An empty body reads the file again: it still says `a`.
    assert_eq!(post(Some(token), String::new()).await.json()["generation"], 3);
    assert_eq!(client.get(&format!("{}/api/1", gw.url())).await.unwrap().json()["backend"], "a");

    // The watched file: a bad edit is refused (counted) and the old one serves; a good one applies.
    let refused = async || metric(&admin_url, "gateway_config_reloads_total{outcome=\"refused\"}").await.unwrap_or(0.0);
    let before = refused().await;
    std::fs::write(&file, "routes = 7").unwrap();
    eventually("the bad file is refused", async || refused().await > before).await;
    assert_eq!(live.generation(), 3);
    assert_eq!(client.get(&format!("{}/api/1", gw.url())).await.unwrap().json()["backend"], "a");
    std::fs::write(&file, toml::to_string(&second).unwrap()).unwrap();
    eventually("the good file is applied", async || live.generation() == 4).await;
    assert_eq!(client.get(&format!("{}/api/1", gw.url())).await.unwrap().json()["backend"], "b");

    // SIGHUP reads the file again.
    std::fs::write(&file, toml::to_string(&first).unwrap()).unwrap();
    let pid = std::process::id().to_string();
    let generation = live.generation();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    eventually("SIGHUP reloads", async || live.generation() > generation).await;
    eventually("the file's routes serve", async || {
        client.get(&format!("{}/api/1", gw.url())).await.unwrap().json()["backend"] == "a"
    })
    .await;
}

#[tokio::test]
async fn websockets_of_a_removed_route_close_after_the_grace_and_the_others_stay_open() {
    let (a, ws) = (backend("a").await, echo_backend().await);
    let mut first = config(&a.url(), &ws.url(), false, 1000);
    first.routes.push(RouteConfig { websocket: true, ..route("/chat", "ws") });
    first.websocket_removed_route_grace_ms = 1500;
    let live = Live::new(Plan::compile(first.clone()).unwrap());
    let gw = Gateway::serve(live.clone()).await;
    let open =
        async |path: &str| tokio_tungstenite::connect_async(format!("ws://{}{path}", gw.addr())).await.unwrap().0;
    let (mut staying, mut removed) = (open("/ws/1").await, open("/chat/1").await);
    let echo = async |socket: &mut tokio_tungstenite::WebSocketStream<_>, text: &str| {
        socket.send(Message::text(text)).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Text(got)))) => got.as_str() == text,
            _ => false,
        }
    };
    assert!(echo(&mut removed, "before").await);

    let mut second = first.clone();
    second.routes.pop();
    live.apply(second).await.unwrap();
    assert!(echo(&mut removed, "within the grace").await, "open until the grace ends");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match removed.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the removed route's WebSocket is closed after the grace");
    assert!(echo(&mut staying, "after").await, "the staying route's WebSocket is untouched");
    assert_eq!(metric(&gw.url(), "gateway_websockets_closed_route_removed_total").await, Some(1.0));
}

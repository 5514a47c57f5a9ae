//! Routes shaped like the Gateway API's `HTTPRoute`, end to end: the gateway
//! binary's library entry point on a loopback port, real backends, a real
//! client. Header modifiers, rewrites, redirects, per-route timeouts, weighted
//! and sticky splits, mirroring.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use demo_gateway::Config;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tower_gateway_auth::{Algorithm, TokenIssuer};
use tower_gateway_tests::{Client, Gateway, Server, backend, closed_port, counting_backend, eventually, serve};

const SECRET: &str = "a traffic-routes test secret of 32+ bytes";

/// A gateway over `routes` (TOML `[[routes]]` and `[upstreams.*]` tables).
async fn gateway(tables: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let text = format!("[jwt]\nsecret_file = {secret:?}\n{tables}");
    let config = Config::from_toml(&text, "the test", |_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (Gateway::start(config).await, dir)
}

fn upstream(name: &str, url: &str) -> String {
    format!("[upstreams.{name}]\nendpoints = [{url:?}]\n")
}

/// A backend that takes requests and never answers, counting them.
async fn silent() -> (Server, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let server = serve(tower::service_fn(move |_: Request<Incoming>| {
        count.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    }))
    .await;
    (server, hits)
}

#[tokio::test]
async fn header_modifiers_change_what_the_upstream_and_the_client_see() {
    let a = backend("a").await;
    let (gw, _dir) = gateway(&format!(
        "{}[[routes]]\nprefix = \"/api\"\nupstream = \"a\"\naccess = \"public\"\n\
         request_header_modifier = {{ set = [{{ name = \"x-env\", value = \"prod\" }}], \
           add = [{{ name = \"x-tag\", value = \"gw\" }}], remove = [\"x-debug\"] }}\n\
         response_header_modifier = {{ set = [{{ name = \"cache-control\", value = \"no-store\" }}], remove = [\"x-backend\"] }}\n",
        upstream("a", &a.url())
    ))
    .await;
    let req = Request::get(format!("{}/api/x", gw.url()))
        .header("x-env", "dev")
        .header("x-tag", "client")
        .header("x-debug", "1")
        .body(Full::default())
        .unwrap();
    let reply = Client::new().send(req).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert_eq!(seen["headers"]["x-env"], "prod");
    assert!(seen["headers"].get("x-debug").is_none());
    // The echo backend keeps a header's last value: the one added after the client's.
    assert_eq!(seen["headers"]["x-tag"], "gw");
    assert_eq!(reply.headers.get("cache-control").unwrap(), "no-store");
    assert!(reply.headers.get("x-backend").is_none(), "removed on the way back");

    // The gateway's own headers cannot be named, nor framing ones.
    for owned in ["x-forwarded-for", "x-user-id", "traceparent", "content-length"] {
        let text = format!(
            "{}[[routes]]\nprefix = \"/api\"\nupstream = \"a\"\naccess = \"public\"\n\
             request_header_modifier = {{ set = [{{ name = \"{owned}\", value = \"1\" }}] }}\n",
            upstream("a", &a.url())
        );
        let config = Config::from_toml(&text, "test", |_| None).unwrap();
        let err = demo_gateway::Plan::compile(config).unwrap_err();
        assert_eq!(err.field, "routes[0].request_header_modifier", "{owned}: {err}");
    }
}

#[tokio::test]
async fn a_rewrite_replaces_the_matched_prefix_or_the_whole_path() {
    let a = backend("a").await;
    let (gw, _dir) = gateway(&format!(
        "{}[[routes]]\nprefix = \"/api/products\"\nupstream = \"a\"\naccess = \"public\"\n\
         url_rewrite = {{ path = {{ replace_prefix_match = \"/v2/catalogue\" }} }}\n\
         [[routes]]\npath = \"/health/deep\"\nupstream = \"a\"\naccess = \"public\"\n\
         url_rewrite = {{ path = {{ replace_full_path = \"/status\" }} }}\n",
        upstream("a", &a.url())
    ))
    .await;
    let client = Client::new();
    for (asked, seen) in [
        ("/api/products/item?x=1", "/v2/catalogue/item?x=1"),
        ("/api/products", "/v2/catalogue"),
        ("/api/%70roducts/7", "/v2/catalogue/7"),
        ("/health/deep?verbose=1", "/status?verbose=1"),
    ] {
        let reply = client.get(&format!("{}{asked}", gw.url())).await.unwrap();
        assert_eq!(reply.json()["path"], seen, "{asked}");
        // Only a stripped prefix is named to the upstream.
        assert!(reply.json()["headers"].get("x-forwarded-prefix").is_none(), "{asked}");
    }
    let refused = client.get(&format!("{}/api/products/%2e%2e/admin", gw.url())).await.unwrap();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_redirect_answers_with_the_location_and_forwards_nothing() {
    let (a, hits) = counting_backend("a").await;
    let (gw, _dir) = gateway(&format!(
        "{}[[routes]]\nprefix = \"/old\"\naccess = \"public\"\n\
         request_redirect = {{ path = {{ replace_prefix_match = \"/new\" }}, status_code = 301 }}\n\
         [[routes]]\npath = \"/login\"\naccess = \"public\"\n\
         request_redirect = {{ scheme = \"https\", hostname = \"secure.example\" }}\n\
         [[routes]]\nprefix = \"/new\"\nupstream = \"a\"\naccess = \"public\"\n",
        upstream("a", &a.url())
    ))
    .await;
    let client = Client::new();
    let send = |path: &str| {
        let req = Request::get(format!("{}{path}", gw.url())).header("host", "shop.example:8080").body(Full::default());
        client.send(req.unwrap())
    };
    let moved = send("/old/items/3?page=2").await.unwrap();
    assert_eq!(moved.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(moved.headers["location"], "http://shop.example:8080/new/items/3?page=2");
    let login = send("/login").await.unwrap();
    assert_eq!(login.status, StatusCode::FOUND);
    assert_eq!(login.headers["location"], "https://secure.example/login");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a redirect reaches no upstream");
    assert_eq!(send("/new/items/3").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn a_routes_timeouts_bound_each_attempt_and_the_whole_request() {
    let (slow, hits) = silent().await;
    // The upstream waits 30 s per attempt; the routes, much less.
    let tables = format!(
        "[upstreams.slow]\nendpoints = [{:?}]\ntimeout_ms = 30000\nretry = {{ attempts = 3, backoff_ms = 10, max_backoff_ms = 10 }}\n\
         [[routes]]\npath = \"/attempt\"\nupstream = \"slow\"\naccess = \"public\"\ntimeouts = {{ backend_request_ms = 200 }}\n\
         [[routes]]\npath = \"/whole\"\nupstream = \"slow\"\naccess = \"public\"\ntimeouts = {{ request_ms = 300 }}\n",
        slow.url()
    );
    let (gw, _dir) = gateway(&tables).await;
    let client = Client::new();

    let started = Instant::now();
    let reply = client.get(&format!("{}/attempt", gw.url())).await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    // Three attempts, each cut at 200 ms: far below one of the upstream's 30 s.
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    hits.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let reply = client.get(&format!("{}/whole", gw.url())).await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    // One attempt, cut by the route's bound on the whole request.
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// Which backend answered each of `n` requests from `send`.
async fn sides(n: usize, mut send: impl AsyncFnMut(usize) -> tower_gateway_tests::Reply) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for i in 0..n {
        let reply = send(i).await;
        assert_eq!(reply.status, StatusCode::OK);
        seen.push(reply.headers["x-backend"].to_str().unwrap().to_owned());
    }
    seen
}

#[tokio::test]
async fn a_weighted_split_sends_each_side_its_share_within_three_percent() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let (gw, _dir) = gateway(&format!(
        "{}{}[[routes]]\nprefix = \"/api\"\naccess = \"public\"\n\
         backend_refs = [{{ name = \"stable\", weight = 80 }}, {{ name = \"canary\", weight = 20 }}]\n",
        upstream("stable", &stable.url()),
        upstream("canary", &canary.url())
    ))
    .await;
    let client = Client::new();
    let seen = sides(1000, async |_| client.get(&format!("{}/api/x", gw.url())).await.unwrap()).await;
    let canaries = seen.iter().filter(|s| *s == "canary").count();
    assert!((170..=230).contains(&canaries), "{canaries} of 1000 on the canary, weight 20%");
}

#[tokio::test]
async fn a_sticky_split_keeps_each_subject_and_each_cookie_on_one_side() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let ups = format!("{}{}", upstream("stable", &stable.url()), upstream("canary", &canary.url()));
    let split = "backend_refs = [{ name = \"stable\", weight = 50 }, { name = \"canary\", weight = 50 }]\n";
    let (gw, _dir) = gateway(&format!(
        "{ups}[[routes]]\nprefix = \"/me\"\naccess = \"token\"\n{split}session_persistence = {{ type = \"subject\" }}\n\
         [[routes]]\nprefix = \"/shop\"\naccess = \"public\"\n{split}\
         session_persistence = {{ type = \"cookie\", session_name = \"session\" }}\n"
    ))
    .await;
    let client = Client::new();
    let issuer = TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap();
    let mut by_side = [0, 0];
    for user in 0..40 {
        let token = issuer.issue(&format!("user-{user}"), None, &[]).unwrap();
        let seen = sides(5, async |_| {
            let req =
                Request::get(format!("{}/me/orders", gw.url())).header("authorization", format!("Bearer {token}"));
            client.send(req.body(Full::default()).unwrap()).await.unwrap()
        })
        .await;
        assert!(seen.iter().all(|s| *s == seen[0]), "user-{user} moved: {seen:?}");
        by_side[usize::from(seen[0] == "canary")] += 1;

        let seen = sides(5, async |_| {
            let req = Request::get(format!("{}/shop", gw.url())).header("cookie", format!("session=s{user}; theme=x"));
            client.send(req.body(Full::default()).unwrap()).await.unwrap()
        })
        .await;
        assert!(seen.iter().all(|s| *s == seen[0]), "session s{user} moved: {seen:?}");
    }
    // Subjects spread over both sides (the chance of 40 on one side is 2^-39).
    assert!(by_side[0] > 0 && by_side[1] > 0, "{by_side:?}");

    // By subject needs a token.
    let text = format!(
        "{ups}[[routes]]\nprefix = \"/x\"\naccess = \"public\"\n{split}session_persistence = {{ type = \"subject\" }}\n"
    );
    let err = demo_gateway::Plan::compile(Config::from_toml(&text, "t", |_| None).unwrap()).unwrap_err();
    assert_eq!(err.field, "routes[0].session_persistence");
}

#[tokio::test]
async fn a_mirror_gets_copies_and_its_failure_or_silence_changes_nothing_for_the_client() {
    let (primary, primary_hits) = counting_backend("primary").await;
    // The mirror records what it got.
    let (copies_tx, mut copies) = tokio::sync::mpsc::unbounded_channel::<(String, Bytes)>();
    let shadow = serve(tower::service_fn(move |req: Request<Incoming>| {
        let tx = copies_tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            tx.send((path, body)).unwrap();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"shadow"))))
        }
    }))
    .await;
    let (silent, silent_hits) = silent().await;
    let down = closed_port();
    let route = |prefix: &str, mirror: &str, percent: u8| {
        format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"primary\"\naccess = \"public\"\n\
             request_mirror = {{ backend_ref = \"{mirror}\", percent = {percent} }}\n"
        )
    };
    let (gw, _dir) = gateway(&format!(
        "{}{}{}[upstreams.down]\nendpoints = [\"http://{down}\"]\n{}{}{}",
        upstream("primary", &primary.url()),
        upstream("shadow", &shadow.url()),
        upstream("silent", &silent.url()),
        route("/up", "shadow", 50),
        route("/silent", "silent", 100),
        route("/down", "down", 100),
    ))
    .await;
    let client = Client::new();
    let post = |path: String, body: &'static str| {
        let req = Request::post(path).header("content-type", "application/json").body(Full::new(Bytes::from(body)));
        client.send(req.unwrap())
    };
    // Half the requests are copied, bodies whole.
    for i in 0..10 {
        let reply = post(format!("{}/up/orders/{i}", gw.url()), "{\"qty\":1}").await.unwrap();
        assert_eq!((reply.status, reply.headers["x-backend"].to_str().unwrap()), (StatusCode::OK, "primary"));
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let (path, body) = tokio::time::timeout(Duration::from_secs(10), copies.recv()).await.unwrap().unwrap();
        assert_eq!(body, "{\"qty\":1}");
        got.push(path);
    }
    got.sort();
    assert_eq!(got, ["/orders/1", "/orders/3", "/orders/5", "/orders/7", "/orders/9"]);

    // A mirror that never answers, or is down, costs the client nothing: every
    // request is answered by the primary (bounded, so a stall would fail here).
    let batch = async {
        for i in 0..20 {
            for path in ["silent", "down"] {
                let reply = post(format!("{}/{path}/orders/{i}", gw.url()), "{}").await.unwrap();
                assert_eq!(reply.status, StatusCode::OK, "{path}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), batch).await.expect("the primary answered every request");
    assert_eq!(primary_hits.load(Ordering::SeqCst), 10 + 40);
    eventually("the silent mirror got its copies", async || silent_hits.load(Ordering::SeqCst) == 20).await;
}

//! The demo gateway end to end: real sockets, the real services, a real Redis,
//! two gateway replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use demo_gateway::config::{RouteConfig, UpstreamConfig};
use demo_gateway::{Access, Config, Plan};
use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::products::{self, ProductsState};
use demo_services::users::{self, Passwords, UsersState};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower_gateway::balance::Endpoints;
use tower_gateway_auth::{Algorithm, Authenticator, Key, KeyConfig, RedisStore, TokenIssuer, TokenStore};
use tower_gateway_tests::{
    Client, Gateway, RedisServer, Reply, Server, backend, closed_port, counting_backend, raw_get, serve,
};

const SECRET: &str = "an end-to-end test secret of 32+ bytes";

/// The test secret, in a file as the gateway reads keys.
fn secret_file() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let path = dir.path().join("jwt_secret");
    if !path.exists() {
        std::fs::write(&path, SECRET).unwrap();
    }
    path
}

/// A route at `prefix` to its own upstream of `urls`.
fn route(prefix: &str, urls: &[String], access: Access) -> (String, UpstreamConfig, RouteConfig) {
    let name = prefix.trim_start_matches('/').replace('/', "-");
    let upstream = UpstreamConfig { endpoints: urls.to_vec(), ..UpstreamConfig::default() };
    let route = RouteConfig {
        prefix: Some(prefix.into()),
        upstream: name.clone(),
        access: Some(access),
        ..RouteConfig::default()
    };
    (name, upstream, route)
}

fn config(routes: Vec<(String, UpstreamConfig, RouteConfig)>, redis: Option<&RedisServer>) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        redis_url: redis.map(RedisServer::url),
        jwt: KeyConfig { secret_file: Some(secret_file()), ..KeyConfig::default() },
        upstreams: Default::default(),
        routes: Vec::new(),
        ..Config::default()
    };
    for (name, upstream, route) in routes {
        config.upstreams.insert(name, upstream);
        config.routes.push(route);
    }
    config
}

async fn start_gateway(routes: Vec<(String, UpstreamConfig, RouteConfig)>, redis: Option<&RedisServer>) -> Gateway {
    start_gateway_with(config(routes, redis)).await
}

async fn start_gateway_with(config: Config) -> Gateway {
    Gateway::start(config).await
}

/// The real services, in this process, each on its own loopback port.
struct Services {
    products: Vec<Server>,
    users: Vec<Server>,
    checkout: Server,
    users_state: UsersState,
    _data: TempDir,
}

impl Services {
    /// The shipped policy over these services.
    fn config(&self, redis: Option<&RedisServer>) -> Config {
        let urls = |servers: &[Server]| servers.iter().map(Server::url).collect::<Vec<_>>();
        let upstream = |endpoints| UpstreamConfig { endpoints, ..UpstreamConfig::default() };
        let mut config = config(Vec::new(), redis);
        config.upstreams.insert("products".into(), upstream(urls(&self.products)));
        config.upstreams.insert("users".into(), upstream(urls(&self.users)));
        config.upstreams.insert("checkout".into(), upstream(vec![self.checkout.url()]));
        // The shipped policy names inventory-service too; these tests call no gRPC.
        let inventory = UpstreamConfig { http2: true, ..upstream(vec![format!("http://{}", closed_port())]) };
        config.upstreams.insert("inventory".into(), inventory);
        config.routes = demo_gateway::config::shipped_routes();
        config
    }
}

/// The services, with revocations in `store`.
async fn start_services_with(store: Arc<dyn TokenStore>) -> Services {
    let data = tempfile::tempdir().unwrap();
    let db = |file: &str| format!("sqlite://{}", data.path().join(file).display());
    let tokens = Arc::new(TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap());
    let auth = Authenticator::builder(Key::hs256(SECRET.as_bytes()).unwrap()).store(store).build().unwrap();
    let mut products = Vec::new();
    for _ in 0..2 {
        let state = ProductsState::connect(&db("products.db")).await.unwrap().with_auth(auth.clone());
        products.push(serve(products::app(state)).await);
    }
    let mut user_instances = Vec::new();
    let mut users_state = None;
    for _ in 0..2 {
        let state = UsersState {
            db: users::connect(&db("users.db")).await.unwrap(),
            tokens: tokens.clone().into(),
            auth: auth.clone(),
            passwords: Passwords::for_tests(),
        };
        users_state = Some(state.clone());
        user_instances.push(serve(users::app(state)).await);
    }
    let endpoints = Endpoints::new(products.iter().map(Server::url)).unwrap();
    let state = CheckoutState {
        db: checkout::connect(&db("orders.db")).await.unwrap(),
        products: ProductClient::new(endpoints),
        auth: Some(auth.clone()),
        inventory: None,
    };
    let checkout = serve(checkout::app(state)).await;
    Services { products, users: user_instances, checkout, users_state: users_state.unwrap(), _data: data }
}

async fn start_services(redis: &RedisServer) -> Services {
    start_services_with(Arc::new(RedisStore::new(redis.url()).unwrap())).await
}

/// Sends `method url` with `headers`, and `body` as JSON when given.
async fn request(client: &Client, method: &str, url: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    client.send(req.body(Full::new(body)).unwrap()).await.unwrap()
}

async fn post(client: &Client, url: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
    request(client, "POST", url, Some(body), headers).await
}

async fn get(client: &Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    request(client, "GET", url, None, headers).await
}

fn token_for(sub: &str) -> String {
    let tokens = TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap();
    tokens.issue(sub, Some(&format!("user{sub}@example.com")), &[]).unwrap()
}

#[tokio::test]
async fn the_seeds_routing_examples_and_round_robin() {
    let (u1, u2, p1, p2, c) =
        (backend("u1").await, backend("u2").await, backend("p1").await, backend("p2").await, backend("c").await);
    let gw = start_gateway(
        vec![
            route("/api/users", &[u1.url(), u2.url()], Access::Public),
            route("/api/products", &[p1.url(), p2.url()], Access::Public),
            route("/api/checkout", &[c.url()], Access::Token),
        ],
        None,
    )
    .await;
    let client = Client::new();

    let mut seen = Vec::new();
    for _ in 0..4 {
        let reply = client.get(&format!("{}/api/users/123", gw.url())).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let json = reply.json();
        assert_eq!(json["path"], "/123");
        assert!(reply.headers.contains_key("x-request-id"));
        assert_eq!(
            json["headers"]["x-request-id"],
            reply.headers["x-request-id"].to_str().unwrap(),
            "propagated both ways"
        );
        seen.push(json["backend"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["u1", "u2", "u1", "u2"]);

    let item = client.get(&format!("{}/api/products/item", gw.url())).await.unwrap().json();
    assert_eq!(item["path"], "/item");

    let token = token_for("42");
    let bearer = format!("Bearer {token}");
    let checkout =
        get(&client, &format!("{}/api/checkout", gw.url()), &[("authorization", &bearer), ("x-user-id", "1")]).await;
    let seen = checkout.json();
    assert_eq!(seen["backend"], "c");
    assert_eq!(seen["path"], "/");
    assert_eq!(seen["headers"]["x-user-id"], "42", "the client's copy was replaced");

    let unknown = client.get(&format!("{}/api/unknown", gw.url())).await.unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_login_checkout_then_logout_is_refused_by_every_replica() {
    let redis = RedisServer::start().await;
    let services = start_services(&redis).await;
    let (gw1, gw2) = (
        start_gateway_with(services.config(Some(&redis))).await,
        start_gateway_with(services.config(Some(&redis))).await,
    );
    let client = Client::new();

    let signup = post(
        &client,
        &format!("{}/api/users/signup", gw1.url()),
        json!({"name": "Ada", "email": "ada@example.com", "password": "correct horse"}),
        &[],
    )
    .await;
    assert_eq!(signup.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&signup.body));
    let login = post(
        &client,
        &format!("{}/api/users/login", gw2.url()),
        json!({"email": "ada@example.com", "password": "correct horse"}),
        &[],
    )
    .await;
    assert_eq!(login.status, StatusCode::OK);
    let token = login.json()["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");

    let no_token =
        post(&client, &format!("{}/api/checkout", gw1.url()), json!({"product_id": 1, "quantity": 1}), &[]).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.headers["www-authenticate"], "Bearer");

    for gw in [&gw1, &gw2] {
        let order = post(
            &client,
            &format!("{}/api/checkout", gw.url()),
            json!({"product_id": 3, "quantity": 2}),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(order.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&order.body));
        assert_eq!(order.json()["total_price"], json!(159.8));
        assert_eq!(order.json()["user_id"], login.json()["user"]["id"]);
    }
    let mine = get(&client, &format!("{}/api/checkout", gw2.url()), &[("authorization", &bearer)]).await;
    assert_eq!(mine.json().as_array().unwrap().len(), 2);

    let logout =
        post(&client, &format!("{}/api/users/logout", gw1.url()), json!({}), &[("authorization", &bearer)]).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let revoked_at = Instant::now();
    for gw in [&gw1, &gw2] {
        loop {
            let reply = get(&client, &format!("{}/api/checkout", gw.url()), &[("authorization", &bearer)]).await;
            if reply.status == StatusCode::UNAUTHORIZED {
                assert_eq!(reply.json()["error"]["code"], "revoked_token");
                break;
            }
            assert!(revoked_at.elapsed() < Duration::from_secs(3), "replica {} still accepts the token", gw.url());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1_500),
        "within the 1 s cache bound: {:?}",
        revoked_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_product_instance_costs_no_client_request() {
    let redis = RedisServer::start().await;
    let mut services = start_services(&redis).await;
    let mut config = services.config(Some(&redis));
    // 600 requests from one address and 100 orders by one user in a second or
    // two: more than the shipped limits allow, and this test is about failover.
    for limit in config.limits.values_mut() {
        limit.burst = Some(10_000);
    }
    let gw = start_gateway_with(config).await;
    let client = Client::new();
    let bearer = format!("Bearer {}", token_for("7"));

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut killed = false;
    for batch in 0..50 {
        if batch == 10 {
            // Listener and open connections gone at once, as with a killed process.
            drop(services.products.remove(1));
            killed = true;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (client, base) = (client.clone(), gw.url());
            tasks.spawn(async move { get(&client, &format!("{base}/api/products/{}", 1 + i % 4), &[]).await.status });
        }
        if batch % 5 == 0 {
            for i in 0..10 {
                let (client, base, bearer) = (client.clone(), gw.url(), bearer.clone());
                let key = format!("order-{batch}-{i}");
                tasks.spawn(async move {
                    post(
                        &client,
                        &format!("{base}/api/checkout"),
                        json!({"product_id": 2, "quantity": 1}),
                        &[("authorization", &bearer), ("idempotency-key", &key)],
                    )
                    .await
                    .status
                });
            }
        }
        while let Some(status) = tasks.join_next().await {
            *statuses.entry(status.unwrap().as_u16()).or_default() += 1;
        }
    }
    assert!(killed);
    assert_eq!(statuses.get(&200), Some(&500), "{statuses:?}");
    assert_eq!(statuses.get(&201), Some(&100), "{statuses:?}");
    assert_eq!(statuses.len(), 2, "no other status: {statuses:?}");
}

/// An endpoint that accepts connections and never answers: each attempt is cut
/// at the upstream's `timeout_ms` (504, not the old per-try default), the
/// balancer counts those timeouts and ejects it, and then clients never wait on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_times_out_per_attempt_and_is_ejected() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let good = backend("good").await;
    let (name, mut upstream, route) = route("/api/things", std::slice::from_ref(&silent_url), Access::Public);
    upstream.timeout_ms = 400;
    let gw = start_gateway(vec![(name.clone(), upstream.clone(), route.clone())], None).await;
    let client = Client::new();

    // Alone and silent: a POST (never retried) waits exactly one attempt's timeout.
    let started = Instant::now();
    let reply = post(&client, &format!("{}/api/things/x", gw.url()), json!({}), &[]).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(3), "{waited:?}");

    // Beside a good endpoint: GETs are retried onto it, the silent one's
    // timeouts are counted, and after five in a row it is skipped.
    upstream.endpoints = vec![silent_url, good.url()];
    let gw = start_gateway(vec![(name, upstream, route)], None).await;
    for i in 0..12 {
        let reply = get(&client, &format!("{}/api/things/{i}", gw.url()), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {:?}", reply.body);
    }
    let started = Instant::now();
    for i in 0..20 {
        let reply = get(&client, &format!("{}/api/things/{i}", gw.url()), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "still waiting on the silent endpoint: {:?}",
        started.elapsed()
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_closes_checkout_fast_and_leaves_products_open() {
    let mut redis = RedisServer::start().await;
    let services = start_services(&redis).await;
    let gw = start_gateway_with(services.config(Some(&redis))).await;
    let client = Client::new();
    let checkout = |sub: &str| {
        let (client, url, bearer) =
            (client.clone(), format!("{}/api/checkout", gw.url()), format!("Bearer {}", token_for(sub)));
        async move { get(&client, &url, &[("authorization", &bearer)]).await }
    };
    assert_eq!(checkout("1").await.status, StatusCode::OK);

    redis.kill();
    let started = Instant::now();
    let refused = checkout("2").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["error"]["code"], "auth_unavailable");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(client.get(&format!("{}/api/products", gw.url())).await.unwrap().status, StatusCode::OK);
    assert_eq!(client.get(&format!("{}/readyz", gw.url())).await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);

    redis.restart().await;
    let back = Instant::now();
    let mut n = 3;
    while checkout(&n.to_string()).await.status != StatusCode::OK {
        assert!(back.elapsed() < Duration::from_secs(5), "checkout never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
        n += 1;
    }
    assert_eq!(client.get(&format!("{}/readyz", gw.url())).await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn path_escapes_never_reach_checkout_without_a_token() {
    let (p, u) = (backend("p").await, backend("u").await);
    let (c, checkout_hits) = counting_backend("c").await;
    let gw = start_gateway(
        vec![
            route("/api/products", &[p.url()], Access::Public),
            route("/api/users", &[u.url()], Access::Public),
            route("/api/checkout", &[c.url()], Access::Token),
        ],
        None,
    )
    .await;
    for path in [
        "/api/products/../checkout",
        "/api/products/..%2fcheckout",
        "/api/products/%2e%2e/checkout",
        "/api/products/%2E%2E/checkout/",
        "/api/products%2F..%2Fcheckout",
        "/api/products/.%2e/checkout",
        "/api/users/..;/checkout",
        "/api/users/%5c..%5ccheckout",
        "/api/products//../checkout",
        "/api/checkout/../products",
        "/api/checkout/%2e%2e/users",
        "//api/checkout",
        "/api/checkout%00",
        "/API/checkout",
        "/api/checkout",
        "/api/checkout/",
    ] {
        let status = raw_get(gw.addr(), path, "").await;
        assert!([400, 401, 404].contains(&status), "{path}: {status}");
    }
    assert_eq!(checkout_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "a request reached checkout");
    // With a token the same backend is reachable: the count above could have moved.
    let bearer = format!("authorization: Bearer {}\r\n", token_for("5"));
    assert_eq!(raw_get(gw.addr(), "/api/checkout", &bearer).await, 200);
    assert_eq!(checkout_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hostile_clients_get_json_errors_and_bounded_waits() {
    let slow = serve(tower::service_fn(|_: Request<hyper::body::Incoming>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"late"))))
    }))
    .await;
    let fast = backend("fast").await;
    let mut cfg = config(
        vec![route("/api/slow", &[slow.url()], Access::Public), route("/api/fast", &[fast.url()], Access::Public)],
        None,
    );
    cfg.request_timeout_ms = 300;
    cfg.max_body_bytes = 1024;
    cfg.header_read_timeout_ms = 300;
    cfg.cors_origins = vec!["https://app.example".into()];
    let gw = start_gateway_with(cfg).await;
    let client = Client::new();

    let late = client.get(&format!("{}/api/slow/x", gw.url())).await.unwrap();
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(late.json()["error"]["code"], "gateway_timeout");

    let big = post(&client, &format!("{}/api/fast/x", gw.url()), json!({"blob": "x".repeat(2048)}), &[]).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.json()["error"]["code"], "body_too_large");

    // HTTP/1.1 without Host.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream.write_all(b"GET /api/fast/x HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_request") && answer.contains("Host"), "{answer}");

    // A head far over the cap is refused, not buffered.
    let huge = format!("x-filler: {}\r\n", "y".repeat(64 * 1024));
    let status = raw_get(gw.addr(), "/api/fast/x", &huge).await;
    assert!(status == 431 || status == 0, "{status}");

    // A client that never finishes its head is cut off.
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream.write_all(b"GET /api/fast/x HTTP/1.1\r\nHost: gw\r\n").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(3));

    // CORS preflight, answered by the gateway.
    let preflight = client
        .send(
            Request::options(format!("{}/api/fast/x", gw.url()))
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(preflight.headers["access-control-allow-origin"], "https://app.example");
    let other = client
        .send(
            Request::options(format!("{}/api/fast/x", gw.url()))
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(!other.headers.contains_key("access-control-allow-origin"), "another origin is not allowed");
}

#[tokio::test]
async fn without_cors_origins_no_origin_is_allowed() {
    let fast = backend("fast").await;
    let gw = start_gateway(vec![route("/api/fast", &[fast.url()], Access::Public)], None).await;
    let reply = Client::new()
        .send(
            Request::get(format!("{}/api/fast/x", gw.url()))
                .header("origin", "https://app.example")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.headers.contains_key("access-control-allow-origin"), "{:?}", reply.headers);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let fast = backend("fast").await;
    let gw = start_gateway(vec![route("/api/fast", &[fast.url()], Access::Public)], None).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let res = client.get(format!("{}/api/fast/h2", gw.url()).parse().unwrap()).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["path"], "/h2");
    assert_eq!(seen["headers"]["x-forwarded-host"], gw.addr().to_string(), "the :authority became the forwarded host");
}

#[tokio::test]
async fn dns_routes_follow_the_name() {
    let b = backend("b").await;
    let mut products = route("/api/products", &[], Access::Public);
    products.1.dns = Some(format!("localhost:{}", b.addr().port()));
    products.1.dns_refresh_ms = 200;
    let gw = start_gateway_with(config(vec![products], None)).await;
    let client = Client::new();
    for _ in 0..4 {
        let reply = client.get(&format!("{}/api/products/x", gw.url())).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["backend"], "b");
    }
    let metrics =
        String::from_utf8_lossy(&client.get(&format!("{}/metrics", gw.url())).await.unwrap().body).into_owned();
    assert!(metrics.contains(&format!("endpoint=\"http://127.0.0.1:{}\"", b.addr().port())), "{metrics}");
}

/// [`request`] with the token, if any, as `Authorization: Bearer`.
async fn send(client: &Client, method: &str, url: &str, body: Option<Value>, bearer: Option<&str>) -> Reply {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization.iter().map(|v| ("authorization", v.as_str())).collect();
    request(client, method, url, body, &headers).await
}

async fn login(client: &Client, base: &str, email: &str, password: &str) -> String {
    let reply =
        post(client, &format!("{base}/api/users/login"), json!({"email": email, "password": password}), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["token"].as_str().unwrap().to_owned()
}

/// Polls until `token` is refused at `url`, within the 1 s cache bound (and some slack).
async fn refused_within_the_bound(client: &Client, url: &str, token: &str) {
    let since = Instant::now();
    loop {
        let reply = send(client, "GET", url, None, Some(token)).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_eq!(reply.json()["error"]["code"], "revoked_token");
            break;
        }
        assert!(since.elapsed() < Duration::from_millis(1_500), "{url} still accepts the token: {}", reply.status);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The report's five requests, ownership and revocation, through the shipped policy
/// in front of the real services.
async fn shipped_policy(services: &Services, gw: &Gateway) {
    let client = Client::new();
    let base = gw.url();
    users::ensure_admin(&services.users_state, "root@example.com", "root password".into()).await.unwrap();
    let admin = login(&client, &base, "root@example.com", "root password").await;
    // Signs up and logs in: the user's id (sign-up says nothing of the account).
    let signup = |email: &str| {
        let (client, base) = (client.clone(), base.clone());
        let body = json!({"name": "User", "email": email, "password": "correct horse"});
        let credentials = json!({"email": email, "password": "correct horse"});
        async move {
            assert_eq!(
                post(&client, &format!("{base}/api/users/signup"), body, &[]).await.status,
                StatusCode::ACCEPTED
            );
            let login = post(&client, &format!("{base}/api/users/login"), credentials, &[]).await;
            login.json()["user"]["id"].as_i64().unwrap()
        }
    };
    let ada = signup("ada@example.com").await;
    let user = login(&client, &base, "ada@example.com", "correct horse").await;

    let five = [
        ("PUT", "/api/products/1".to_owned(), Some(json!({"name": "Laptop", "price": 0.01})), StatusCode::OK),
        ("GET", "/api/users?limit=500".to_owned(), None, StatusCode::OK),
        ("PUT", "/api/users/1".to_owned(), Some(json!({"name": "A", "email": "someone@else.example"})), StatusCode::OK),
        ("DELETE", "/api/users/2".to_owned(), None, StatusCode::NO_CONTENT),
        ("POST", "/api/products".to_owned(), Some(json!({"name": "Free", "price": 0.5})), StatusCode::CREATED),
    ];
    for (method, path, body, admin_status) in five {
        let url = format!("{base}{path}");
        let none = send(&client, method, &url, body.clone(), None).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(none.headers["www-authenticate"], "Bearer");
        let forbidden = send(&client, method, &url, body.clone(), Some(&user)).await;
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(forbidden.json()["error"]["code"], "forbidden");
        let done = send(&client, method, &url, body, Some(&admin)).await;
        assert_eq!(done.status, admin_status, "{method} {path}: {}", String::from_utf8_lossy(&done.body));
    }
    // Checkout takes any valid token, as the seed says; never none.
    let order = json!({"product_id": 1, "quantity": 3});
    assert_eq!(send(&client, "POST", &format!("{base}/api/checkout"), Some(order.clone()), None).await.status, 401);
    let placed = send(&client, "POST", &format!("{base}/api/checkout"), Some(order), Some(&user)).await;
    assert_eq!((placed.status, placed.json()["total_price"].clone()), (StatusCode::CREATED, json!(0.03)));
    // Past the gateway, straight to checkout-service: naming a user is not enough.
    let forged = post(
        &client,
        &format!("{}/", services.checkout.url()),
        json!({"product_id": 1, "quantity": 1}),
        &[("x-user-id", "1")],
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&forged.body));
    let listed = send(&client, "GET", &format!("{}/", services.checkout.url()), None, Some(&user)).await;
    assert_eq!(listed.status, StatusCode::OK, "a real token works there too");
    // Reading products stays public.
    assert_eq!(send(&client, "GET", &format!("{base}/api/products/1"), None, None).await.status, StatusCode::OK);

    // Ownership: her own record, not another's.
    let bob = signup("bob2@example.com").await;
    let own = format!("{base}/api/users/{ada}");
    let other = format!("{base}/api/users/{bob}");
    assert_eq!(send(&client, "GET", &own, None, Some(&user)).await.status, StatusCode::OK);
    assert_eq!(send(&client, "GET", &other, None, Some(&user)).await.status, StatusCode::FORBIDDEN);
    let rename = json!({"name": "Bob", "email": "bob2@example.com"});
    assert_eq!(send(&client, "PUT", &other, Some(rename), Some(&user)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send(&client, "DELETE", &other, None, Some(&user)).await.status, StatusCode::FORBIDDEN);

    // Her token alone cannot change her password; with the current one it
    // can, and that revokes the token at the gateway within the bound.
    let change = json!({"name": "Ada", "email": "ada@example.com", "password": "another horse"});
    assert_eq!(send(&client, "PUT", &own, Some(change.clone()), Some(&user)).await.status, StatusCode::FORBIDDEN);
    let mut proven = change;
    proven["current_password"] = json!("correct horse");
    assert_eq!(send(&client, "PUT", &own, Some(proven), Some(&user)).await.status, StatusCode::OK);
    refused_within_the_bound(&client, &format!("{base}/api/checkout"), &user).await;

    // A deleted user's token too.
    let bob_token = login(&client, &base, "bob2@example.com", "correct horse").await;
    assert_eq!(send(&client, "GET", &format!("{base}/api/checkout"), None, Some(&bob_token)).await.status, 200);
    assert_eq!(send(&client, "DELETE", &other, None, Some(&admin)).await.status, StatusCode::NO_CONTENT);
    refused_within_the_bound(&client, &format!("{base}/api/checkout"), &bob_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_policy_with_revocations_in_redis() {
    let redis = RedisServer::start().await;
    let services = start_services(&redis).await;
    let gw = start_gateway_with(services.config(Some(&redis))).await;
    shipped_policy(&services, &gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_policy_with_one_in_process_store_as_in_the_demo() {
    let store: Arc<dyn TokenStore> = Arc::new(tower_gateway_auth::MemoryStore::new());
    let services = start_services_with(store.clone()).await;
    let gw = Gateway::serve(Plan::compile_with_store(services.config(None), Some(store)).unwrap()).await;
    shipped_policy(&services, &gw).await;
}

/// The shipped limits in front of the real user-service: password guessing is
/// slowed per account and per address, and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_limits_slow_password_guessing_and_spare_other_clients() {
    let store: Arc<dyn TokenStore> = Arc::new(tower_gateway_auth::MemoryStore::new());
    let services = start_services_with(store.clone()).await;
    let gw = Gateway::serve(Plan::compile_with_store(services.config(None), Some(store)).unwrap()).await;
    let base = gw.url();
    let attempt = async |client: &Client, email: &str, password: &str| {
        post(client, &format!("{base}/api/users/login"), json!({"email": email, "password": password}), &[]).await
    };
    let signup = async |client: &Client, email: &str| {
        let body = json!({"name": "Ann", "email": email, "password": "correct horse"});
        post(client, &format!("{base}/api/users/signup"), body, &[]).await.status
    };
    let (guesser, owner, flooder) = (
        Client::from_address("127.0.0.2".parse().unwrap()),
        Client::from_address("127.0.0.3".parse().unwrap()),
        Client::from_address("127.0.0.4".parse().unwrap()),
    );
    assert_eq!(signup(&owner, "ann@example.com").await, StatusCode::ACCEPTED);

    // Per account and address (5 at once, then 10 a minute): five wrong
    // guesses reach user-service, then the guesser is refused, in any spelling.
    let mut statuses = Vec::new();
    for email in [
        "ann@example.com",
        "ann@example.com",
        "ANN@example.com",
        " ann@example.com",
        "ann@example.com",
        "Ann@Example.com",
    ] {
        statuses.push(attempt(&guesser, email, "guess").await.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    let refused = attempt(&guesser, "ann@example.com", "correct horse").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "the guesser stays refused");
    assert_eq!(refused.headers["retry-after"], "6", "one more attempt every 6 s");
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    let fields: Vec<&str> = refused.headers.get_all("ratelimit").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(fields.contains(&r#""login-account";r=0;t=30"#), "{fields:?}");
    // The guesses spent nothing of the owner's: she logs in from her address.
    let served = attempt(&owner, "ann@example.com", "correct horse").await;
    assert_eq!(served.status, StatusCode::OK, "{}", String::from_utf8_lossy(&served.body));

    // Sign-ups naming her account (each making nothing) count against sign-ups alone.
    for _ in 0..5 {
        assert_eq!(signup(&flooder, " ANN@Example.com ").await, StatusCode::ACCEPTED);
    }
    assert_eq!(attempt(&owner, "ann@example.com", "correct horse").await.status, StatusCode::OK);

    // Per address (10 at once, then 30 a minute): a flood of accounts from one
    // address is cut off, while another address logs in.
    let mut limited_at = None;
    for i in 0..12 {
        if attempt(&flooder, &format!("nobody{i}@example.com"), "x").await.status == StatusCode::TOO_MANY_REQUESTS {
            limited_at.get_or_insert(i);
        }
    }
    assert_eq!(limited_at, Some(10), "the 11th attempt from the flooding address");
    assert_eq!(signup(&owner, "bea@example.com").await, StatusCode::ACCEPTED);
    let served = attempt(&owner, "bea@example.com", "correct horse").await;
    assert_eq!(served.status, StatusCode::OK, "{}", String::from_utf8_lossy(&served.body));

    // Sign-ups from one address (10 at once, then 20 an hour).
    let mut limited_at = None;
    for i in 0..12 {
        if signup(&guesser, &format!("new{i}@example.com")).await == StatusCode::TOO_MANY_REQUESTS {
            limited_at.get_or_insert(i);
        }
    }
    assert_eq!(limited_at, Some(10), "the 11th sign-up from one address");
}

#[tokio::test]
async fn readiness_and_metrics_live_on_the_admin_listener_only() {
    let b = backend("b").await;
    let admin = tower_gateway_tests::closed_port();
    let mut cfg = config(vec![route("/api", &[b.url()], Access::Public)], None);
    cfg.admin_listen = Some(admin.to_string());
    let gw = start_gateway_with(cfg).await;
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.get(&format!("http://{admin}/readyz")).await.map(|r| r.status).ok() != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "the admin listener did not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &format!("{}/api/x", gw.url()), &[]).await.status, StatusCode::OK);
    let metrics = get(&client, &format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&metrics.body).contains("gateway_requests_total"));
    for path in ["/metrics", "/readyz"] {
        let reply = get(&client, &format!("{}{path}", gw.url()), &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path} on the public listener");
    }
    assert_eq!(get(&client, &format!("{}/healthz", gw.url()), &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_readiness_fails_first_while_requests_are_still_served() {
    let b = backend("b").await;
    let mut cfg = config(vec![route("/api", &[b.url()], Access::Public)], None);
    cfg.drain_delay_ms = 1_000;
    let gw = start_gateway_with(cfg).await;
    let url = gw.url();
    assert_eq!(get(&Client::new(), &format!("{url}/readyz"), &[]).await.status, StatusCode::OK);
    let stopping = Instant::now();
    drop(gw); // SIGTERM, as far as serve is concerned
    loop {
        let ready = get(&Client::new(), &format!("{url}/readyz"), &[]).await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(ready.json()["reason"].as_str().unwrap().contains("draining"));
            break;
        }
        assert!(stopping.elapsed() < Duration::from_millis(500), "readiness still ok");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still serving during the delay, on new connections too, each HTTP/1.1
    // response asking the client to close so connections end between requests.
    let served = get(&Client::new(), &format!("{url}/api/x"), &[]).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.headers["connection"], "close");
    assert!(stopping.elapsed() < Duration::from_secs(1));
    // Then it stops accepting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Client::new().get(&format!("{url}/healthz")).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after the drain delay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopping.elapsed() >= Duration::from_secs(1), "stopped before the delay: {:?}", stopping.elapsed());
}

//! Rate limits through the real gateway: shared by two replicas through a real
//! Redis, through a Redis that dies and comes back, and keyed by a client
//! address that a client cannot choose for itself.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use demo_gateway::Config;
use demo_gateway::config::{
    ForwardedHeaderName, LimitConfig, LimitKey, LimitStore, Per, RouteConfig, StoreFailure, UpstreamConfig,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_gateway_tests::{Client, Gateway, RedisServer, Reply, Server, backend};

fn limit(rate: u32, per: Per, burst: u32, key: &str) -> LimitConfig {
    LimitConfig {
        rate,
        per,
        burst: Some(burst),
        key: LimitKey::One(key.into()),
        store: None,
        on_store_error: StoreFailure::Open,
    }
}

/// Public routes to `backend`: for each `(prefix, limit name, limit)`, a route at
/// the prefix counting against that limit.
fn config(backend: &Server, routes: Vec<(&str, &str, LimitConfig)>, redis: Option<&RedisServer>) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        redis_url: redis.map(RedisServer::url),
        upstreams: [(
            "backend".to_owned(),
            UpstreamConfig { endpoints: vec![backend.url()], ..UpstreamConfig::default() },
        )]
        .into(),
        limits: Default::default(),
        routes: Vec::new(),
        ..Config::default()
    };
    for (prefix, name, limit) in routes {
        config.limits.insert(name.into(), limit);
        config.routes.push(RouteConfig {
            prefix: Some(prefix.into()),
            upstream: "backend".into(),
            access: Some(demo_gateway::Access::Public),
            limits: vec![name.into()],
            ..RouteConfig::default()
        });
    }
    config
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn get(client: &Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    client.send(req.body(Full::default()).unwrap()).await.unwrap()
}

/// Sends `n` requests one after another, alternating between the gateways,
/// and counts the statuses.
async fn alternate(client: &Client, gateways: &[&Gateway], path: &str, n: usize) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        let reply = get(client, &format!("{}{path}", gateways[i % gateways.len()].url()), &[]).await;
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_draw_on_one_quota_in_redis() {
    let redis = RedisServer::start().await;
    let backend = backend("b").await;
    let slow = limit(1, Per::Minute, 20, "client_ip");
    let a = Gateway::start(config(&backend, vec![("/api", "shared", slow.clone())], Some(&redis))).await;
    let b = Gateway::start(config(&backend, vec![("/api", "shared", slow.clone())], Some(&redis))).await;
    let client = Client::new();

    // A burst of 20 and 1 a minute: 60 requests split over two replicas within a
    // minute admit 20, not 20 each.
    let started = Instant::now();
    let (ok, limited) = alternate(&client, &[&a, &b], "/api/x", 60).await;
    let refills = (started.elapsed().as_secs() / 60) as usize;
    assert_eq!((ok, limited), (20 + refills, 40 - refills));

    // The same with each replica keeping its own count: twice the quota.
    let memory = LimitConfig { store: Some(LimitStore::Memory), ..slow };
    let a = Gateway::start(config(&backend, vec![("/api", "local", memory.clone())], Some(&redis))).await;
    let b = Gateway::start(config(&backend, vec![("/api", "local", memory)], Some(&redis))).await;
    let (ok, _) = alternate(&client, &[&a, &b], "/api/x", 60).await;
    assert_eq!(ok, 40 + 2 * refills, "in-memory limits are per replica");

    // At a steady rate: 10 a second after a burst of 5, across both replicas.
    let steady = limit(10, Per::Second, 5, "client_ip");
    let a = Gateway::start(config(&backend, vec![("/api", "steady", steady.clone())], Some(&redis))).await;
    let b = Gateway::start(config(&backend, vec![("/api", "steady", steady)], Some(&redis))).await;
    let first_sent = Instant::now();
    let mut first_answered = None;
    let mut ok = 0;
    let mut last_sent = first_sent;
    while first_sent.elapsed() < Duration::from_millis(1_500) {
        last_sent = Instant::now();
        let gw = if ok % 2 == 0 { &a } else { &b };
        let status = get(&client, &format!("{}/api/x", gw.url()), &[]).await.status;
        first_answered.get_or_insert_with(Instant::now);
        ok += usize::from(status == StatusCode::OK);
    }
    let last_answered = Instant::now();
    // Every decision was made between the first request's answer... and the
    // last request's sending; the whole run bounds it the other way.
    let least = 5 + ((last_sent - first_answered.unwrap()).as_secs_f64() * 10.0).floor() as usize;
    let most = 5 + ((last_answered - first_sent).as_secs_f64() * 10.0).ceil() as usize;
    assert!((least.saturating_sub(1)..=most + 1).contains(&ok), "admitted {ok}, expected {least}..={most} (±1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_open_or_closed_as_configured_and_recovers() {
    let mut redis = RedisServer::start().await;
    let backend = backend("b").await;
    let closed = LimitConfig { on_store_error: StoreFailure::Closed, ..limit(100, Per::Second, 100, "client_ip") };
    let gw = Gateway::start(config(
        &backend,
        vec![
            ("/open", "open", limit(1, Per::Minute, 3, "client_ip")),
            ("/steady", "steady", limit(10, Per::Second, 1, "client_ip")),
            ("/closed", "closed", closed),
        ],
        Some(&redis),
    ))
    .await;
    let (one, two, three, four) = (ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4"));
    let client = |ip| Client::from_address(ip);
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let timed = async |client: &Client, path: &str| {
        let started = Instant::now();
        let reply = get(client, &format!("{}{path}", gw.url()), &[]).await;
        slowest.set(slowest.get().max(started.elapsed()));
        reply
    };

    for _ in 0..3 {
        assert_eq!(timed(&client(one), "/open").await.status, StatusCode::OK);
    }
    redis.kill();

    // Fail-open: the spent key stays spent; a new client gets the configured burst.
    let reply = timed(&client(one), "/open").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(timed(&client(two), "/open").await.status.as_u16());
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429], "the quota holds without Redis");
    // ...and keeps to about the configured rate (10/s, burst 1) while Redis is away.
    let started = Instant::now();
    let mut ok = 0;
    while started.elapsed() < Duration::from_secs(1) {
        ok += usize::from(timed(&client(three), "/steady").await.status == StatusCode::OK);
    }
    assert!((8..=13).contains(&ok), "{ok} admitted in a second at 10/s");

    // Fail-closed: 503 with a JSON error, at once.
    let reply = timed(&client(one), "/closed").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], "rate_limit_unavailable");
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(slowest.get() < Duration::from_millis(500), "no request waited on the dead Redis: {slowest:?}");

    // Redis returns: both limits go back to it by themselves.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while timed(&client(one), "/closed").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "fail-closed limit did not recover within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(timed(&client(four), "/open").await.status, StatusCode::OK);
    let mut conn = redis.connection().await;
    let stored: Option<String> =
        redis::cmd("GET").arg("tower-gateway:rl:open:127.0.0.4").query_async(&mut conn).await.unwrap();
    assert!(stored.is_some(), "decided in Redis again");

    let metrics = get(&Client::new(), &format!("{}/metrics", gw.url()), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let count = |series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(count(r#"gateway_rate_limit_decisions_total{limit="open",outcome="fallback_allowed"}"#), 3);
    assert!(count(r#"gateway_rate_limit_decisions_total{limit="closed",outcome="unavailable"}"#) >= 1);
    assert!(count(r#"gateway_rate_limit_store_errors_total{limit="open"}"#) >= 1);
    assert!(count(r#"gateway_rate_limit_decisions_total{limit="open",outcome="allowed"}"#) >= 4);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_changes_the_key_only_through_a_trusted_proxy() {
    let backend = backend("b").await;
    let once = limit(1, Per::Minute, 1, "client_ip");
    let client = Client::new();

    // Straight from the client: its X-Forwarded-For is not believed, nor passed on.
    let gw = Gateway::start(config(&backend, vec![("/api", "addr", once.clone())], None)).await;
    let first = get(&client, &format!("{}/api/x", gw.url()), &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["headers"]["x-forwarded-for"], "127.0.0.1");
    let second = get(&client, &format!("{}/api/x", gw.url()), &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS, "a new X-Forwarded-For is not a new client");

    // Behind a trusted proxy (here, loopback): the hop it appended is the client.
    let mut trusting = config(&backend, vec![("/api", "addr", once)], None);
    trusting.trusted_proxies = vec!["127.0.0.1/32".into()];
    let gw = Gateway::start(trusting).await;
    let url = format!("{}/api/x", gw.url());
    let send = async |xff: &str| get(&client, &url, &[("x-forwarded-for", xff)]).await;
    assert_eq!(send("198.51.100.1").await.status, StatusCode::OK);
    let other = send("203.0.113.66, 198.51.100.2").await;
    assert_eq!(other.status, StatusCode::OK, "another client behind the proxy");
    assert_eq!(other.json()["headers"]["x-forwarded-for"], "198.51.100.2, 127.0.0.1", "the spoofed hop is dropped");
    assert_eq!(send("198.51.100.1").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send("198.51.100.9, 198.51.100.1").await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_limit_named_by_several_routes_is_one_quota() {
    let backend = backend("b").await;
    let two = limit(2, Per::Minute, 2, "client_ip");
    let gw = Gateway::start(config(
        &backend,
        vec![("/a", "api", two.clone()), ("/b", "api", two.clone()), ("/c", "own", two)],
        None,
    ))
    .await;
    let client = Client::new();
    let mut statuses = Vec::new();
    for path in ["/a", "/b", "/a", "/b", "/c"] {
        let reply = get(&client, &format!("{}{path}/x", gw.url()), &[]).await;
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 200], "/a and /b share one quota, /c has its own");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_header_kind_names_the_client_whatever_the_entry_removes() {
    let backend = backend("b").await;
    let once = limit(1, Per::Minute, 1, "client_ip");
    let client = Client::new();
    for (kind, header, first, second) in [
        (ForwardedHeaderName::Forwarded, "forwarded", "for=198.51.100.1;proto=https", "for=\"198.51.100.2\""),
        (ForwardedHeaderName::XForwardedFor, "x-forwarded-for", "198.51.100.1", "198.51.100.2"),
    ] {
        let mut trusting = config(&backend, vec![("/api", "addr", once.clone())], None);
        trusting.trusted_proxies = vec!["127.0.0.1/32".into()];
        trusting.forwarded_header = kind;
        let gw = Gateway::start(trusting).await;
        let url = format!("{}/api/x", gw.url());
        // The proxy names the header hop-by-hop too: it is still read first.
        let send = async |value: &str| get(&client, &url, &[(header, value), ("connection", header)]).await;
        let one = send(first).await;
        assert_eq!(one.status, StatusCode::OK, "{kind:?}");
        assert_eq!(one.json()["headers"]["x-forwarded-for"], "198.51.100.1, 127.0.0.1", "{kind:?}");
        let two = send(second).await;
        assert_eq!(two.status, StatusCode::OK, "{kind:?}: another client behind the proxy has a quota of its own");
        assert_eq!(two.json()["headers"]["x-forwarded-for"], "198.51.100.2, 127.0.0.1", "{kind:?}");
        assert_eq!(send(first).await.status, StatusCode::TOO_MANY_REQUESTS, "{kind:?}: the first client again");
        // The header itself never reaches the backend.
        if kind == ForwardedHeaderName::Forwarded {
            assert!(one.json()["headers"].get("forwarded").is_none(), "{}", one.json());
        }
    }
}

//! The tower-gateway layers composed as a gateway route, in front of real
//! backends on loopback ports, reached by a real client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_gateway::balance::Endpoints;
use tower_gateway::{Proxy, RetryLayer, RetryPolicy, RoundRobinLayer, StripPrefixLayer, TimeoutLayer};
use tower_gateway_tests::{Client, Server, backend, closed_port, serve};

/// A gateway route for `/api/products` over `endpoints`, served on a loopback port.
async fn gateway(endpoints: &[String]) -> Server {
    let endpoints = Endpoints::new(endpoints).unwrap();
    let route = ServiceBuilder::new()
        .layer(StripPrefixLayer::new("/api/products"))
        .layer(RetryLayer::new(RetryPolicy::new()))
        .layer(RoundRobinLayer::new(endpoints))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(Proxy::new());
    serve(route).await
}

#[tokio::test]
async fn requests_alternate_between_backends_with_the_prefix_stripped() {
    let (a, b) = (backend("a").await, backend("b").await);
    let gw = gateway(&[a.url(), b.url()]).await;
    let client = Client::new();
    let mut order = Vec::new();
    for _ in 0..6 {
        let reply = client.get(&format!("{}/api/products/item?x=1", gw.url())).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let seen = reply.json();
        assert_eq!(seen["path"], "/item?x=1");
        assert_eq!(seen["headers"]["x-forwarded-prefix"], "/api/products");
        assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
        order.push(seen["backend"].as_str().unwrap().to_owned());
    }
    assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);

    let root = client.get(&format!("{}/api/products", gw.url())).await.unwrap();
    assert_eq!(root.json()["path"], "/");
}

#[tokio::test]
async fn escaping_paths_are_refused_before_any_backend() {
    let a = backend("a").await;
    let gw = gateway(&[a.url()]).await;
    let client = Client::new();
    for path in ["/api/products/../checkout", "/api/products/%2e%2e/checkout", "/api/products%2F..%2Fcheckout"] {
        let reply = client.get(&format!("{}{path}", gw.url())).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.json()["error"]["code"], "invalid_path", "{path}");
    }
}

#[tokio::test]
async fn a_closed_backend_costs_no_request() {
    let a = backend("a").await;
    let gw = gateway(&[format!("http://{}", closed_port()), a.url()]).await;
    let client = Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, url) = (client.clone(), format!("{}/api/products/{i}", gw.url()));
        tasks.spawn(async move {
            let req = if i % 2 == 0 {
                Request::get(&url).body(Full::default()).unwrap()
            } else {
                Request::post(&url)
                    .header("idempotency-key", format!("key-{i}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!("{{\"n\":{i}}}"))))
                    .unwrap()
            };
            (i, client.send(req).await.unwrap())
        });
    }
    let mut ok = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, reply) = joined.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", String::from_utf8_lossy(&reply.body));
        let seen = reply.json();
        assert_eq!(seen["backend"], "a");
        if i % 2 == 1 {
            assert_eq!(seen["method"], "POST");
            assert_eq!(seen["body"], format!("{{\"n\":{i}}}"), "the replayed body arrives whole");
        }
        ok += 1;
    }
    assert_eq!(ok, 200);
}

#[tokio::test]
async fn all_backends_down_is_502_within_the_backoff_bound() {
    let gw = gateway(&[format!("http://{}", closed_port()), format!("http://{}", closed_port())]).await;
    let client = Client::new();
    let start = Instant::now();
    let reply = client.get(&format!("{}/api/products/item", gw.url())).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["error"]["code"], "upstream_connect_failed");
    // Three attempts, waiting 100 ms then 200 ms, each up to 50 % longer with jitter.
    assert!(elapsed >= Duration::from_millis(300), "retried with backoff: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(450 + 1_000), "gave up within the bound: {elapsed:?}");
}

/// The route of `gateway`, as an axum user mounts it: with `nest_service`, or
/// with `route_service` on the prefix and everything under it.
#[tokio::test]
async fn the_prefix_is_stripped_once_under_either_axum_mount() {
    let a = backend("a").await;
    let route = || {
        ServiceBuilder::new()
            .layer(StripPrefixLayer::new("/api/products"))
            .layer(RoundRobinLayer::new(Endpoints::new([a.url()]).unwrap()))
            .service(Proxy::new())
    };
    let nested = serve(axum::Router::new().nest_service("/api/products", route())).await;
    let routed = serve(
        axum::Router::new().route_service("/api/products", route()).route_service("/api/products/{*rest}", route()),
    )
    .await;
    let client = Client::new();
    for gw in [&nested, &routed] {
        for (path, seen) in [
            ("/api/products/item?x=1", "/item?x=1"),
            ("/api/products", "/"),
            // The prefix spelled again below the mount is part of the path.
            ("/api/products/api/products/x", "/api/products/x"),
        ] {
            let reply = client.get(&format!("{}{path}", gw.url())).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            let json = reply.json();
            assert_eq!(json["path"], seen, "{path} under {}", gw.url());
            assert_eq!(json["headers"]["x-forwarded-prefix"], "/api/products", "{path}");
        }
        let refused = client.get(&format!("{}/api/products/%2e%2e/checkout", gw.url())).await.unwrap();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }
}

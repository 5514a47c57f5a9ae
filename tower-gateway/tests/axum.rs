//! A route mounted in an axum app the way the README and the crate docs show,
//! over real sockets: the backend gets the path without the prefix, the
//! prefix in `X-Forwarded-Prefix`, and (with the `axum` feature, which the
//! workspace's test crate turns on) the client's address in `X-Forwarded-For`
//! from axum's `ConnectInfo`, never the client's own claim.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;
use tower_gateway::balance::Endpoints;
use tower_gateway::{Proxy, RoundRobinLayer, StripPrefixLayer};

/// A backend that answers with what it was sent: the target, then the
/// forwarding headers, one per line.
async fn echo_backend() -> SocketAddr {
    let app = Router::new().fallback(get(|uri: http::Uri, headers: HeaderMap| async move {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        format!("target={uri}\nprefix={}\nfor={}\n", header("x-forwarded-prefix"), header("x-forwarded-for"))
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The README's gateway: one route, mounted with `route_service` (axum's
/// `nest_service` strips the prefix itself, and `StripPrefixLayer` would then
/// strip a second one).
async fn gateway(backend: SocketAddr) -> SocketAddr {
    let products = Endpoints::new([format!("http://{backend}")]).unwrap();
    let route = ServiceBuilder::new()
        .layer(StripPrefixLayer::new("/api/products"))
        .layer(RoundRobinLayer::new(products))
        .service(Proxy::new());
    let app = Router::new()
        .route_service("/api/products", route.clone())
        .route_service("/api/products/{*rest}", route)
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
    addr
}

async fn get_raw(addr: SocketAddr, target: &str, extra: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_documented_axum_mount_strips_the_prefix_once_and_forwards_it() {
    let gateway = gateway(echo_backend().await).await;

    let response = get_raw(gateway, "/api/products/api/products/x?y=2", "X-Forwarded-Prefix: /evil\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("target=/api/products/x?y=2\n"), "{response}");
    assert!(response.contains("prefix=/api/products\n"), "{response}");

    let response = get_raw(gateway, "/api/products", "").await;
    assert!(response.contains("target=/\n"), "{response}");

    let response = get_raw(gateway, "/api/products/42", "").await;
    assert!(response.contains("target=/42\n"), "{response}");

    // Not the route's: axum answers, the backend never sees it.
    let response = get_raw(gateway, "/api/productsX", "").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn with_the_axum_feature_x_forwarded_for_is_the_peer_from_connect_info() {
    let gateway = gateway(echo_backend().await).await;
    let response = get_raw(gateway, "/api/products/1", "X-Forwarded-For: 6.6.6.6\r\n").await;
    assert!(response.contains("for=127.0.0.1\n"), "{response}");
}

#[cfg(not(feature = "axum"))]
#[tokio::test]
async fn without_a_peer_address_no_client_x_forwarded_for_passes() {
    let gateway = gateway(echo_backend().await).await;
    let response = get_raw(gateway, "/api/products/1", "X-Forwarded-For: 6.6.6.6\r\n").await;
    assert!(response.contains("for=-\n"), "{response}");
}

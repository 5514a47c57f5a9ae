//! A gateway route in an axum app, end to end on loopback: a backend, the
//! gateway in front of it, one request through both. Exits when done.
//!
//! `cargo run -p tower-gateway --features axum --example axum_route`

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower_gateway::balance::Endpoints;
use tower_gateway::{Proxy, RetryLayer, RetryPolicy, RoundRobinLayer, StripPrefixLayer};

async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The backend says what it was sent.
    let backend = serve(Router::new().fallback(get(|uri: http::Uri, headers: HeaderMap| async move {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        format!("backend saw {uri}, prefix {}, client {}", header("x-forwarded-prefix"), header("x-forwarded-for"))
    })))
    .await?;

    let route = ServiceBuilder::new()
        .layer(StripPrefixLayer::new("/api/products"))
        .layer(RetryLayer::new(RetryPolicy::new()))
        .layer(RoundRobinLayer::new(Endpoints::new([format!("http://{backend}")])?))
        .service(Proxy::new());
    let gateway = serve(
        Router::new().route_service("/api/products", route.clone()).route_service("/api/products/{*rest}", route),
    )
    .await?;

    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(format!("http://{gateway}/api/products/42?color=red").parse()?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status}: {}", String::from_utf8_lossy(&body));
    assert!(status.is_success());
    Ok(())
}

//! A gateway route on a plain hyper server: the peer address inserted where
//! the connection is accepted (for `X-Forwarded-For`), tower-http's request
//! body timeout in front. One request through it, then exits.
//!
//! `cargo run -p tower-gateway --example hyper_server`

use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::{ServiceBuilder, ServiceExt};
use tower_gateway::balance::Endpoints;
use tower_gateway::{PeerAddr, Proxy, RoundRobinLayer, StripPrefixLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // A backend echoing the request body and who sent it.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend.local_addr()?;
    let echo = axum::Router::new().fallback(|headers: http::HeaderMap, body: String| async move {
        let client = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        format!("backend got {body:?} from {client}")
    });
    tokio::spawn(async move { axum::serve(backend, echo).await });

    let route = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(10)))
        .layer(StripPrefixLayer::new("/api"))
        .layer(RoundRobinLayer::new(Endpoints::new([format!("http://{backend_addr}")])?))
        .service(Proxy::new());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let svc = route.clone().map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });

    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{gateway}/api/echo")).body(Full::from("hello"))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status}: {}", String::from_utf8_lossy(&body));
    assert!(status.is_success());
    Ok(())
}

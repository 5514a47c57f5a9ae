//! A route on a plain hyper server, as the `PeerAddr` docs show it: tower-http's
//! `RequestBodyTimeoutLayer` in front (its request body is not `Unpin`), the
//! peer address inserted where the connection is accepted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::{HeaderMap, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::balance::Endpoints;
use tower_gateway::{PeerAddr, Proxy, RoundRobinLayer, StripPrefixLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

async fn echo_backend() -> SocketAddr {
    let app = Router::new().fallback(post(|uri: http::Uri, headers: HeaderMap, body: String| async move {
        let forwarded_for = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        format!("target={uri}\nfor={forwarded_for}\nbody={body}\n")
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_route_behind_a_request_body_timeout_on_plain_hyper() {
    let backend = echo_backend().await;
    let route = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(5)))
        .layer(StripPrefixLayer::new("/api/orders"))
        .layer(RoundRobinLayer::new(Endpoints::new([format!("http://{backend}")]).unwrap()))
        .service(Proxy::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = route.clone().map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            });
            tokio::spawn(async move {
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await
            });
        }
    });

    let mut stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    stream
        .write_all(b"POST /api/orders/7 HTTP/1.1\r\nHost: g\r\nX-Forwarded-For: 6.6.6.6\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("target=/7\n"), "{response}");
    assert!(response.contains("for=127.0.0.1\n"), "{response}");
    assert!(response.contains("body=hello\n"), "{response}");
}

/// The same stack is a `Service` over any request body, `Unpin` or not.
#[allow(dead_code)]
fn accepts_any_body<B>()
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn is_service<S: Service<Request<B>, Error = Infallible>, B>(_: &S) {}
    is_service::<_, B>(&Proxy::<B>::new());
}

//! Back-pressure: every layer is ready only when its inner service is, so a
//! full inner service (a concurrency limit, a saturated pool) holds callers
//! back through the whole stack. Each layer over a `tower-test` mock that is
//! not ready, then ready for exactly one request, which passes through.

use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::Layer;
use tower_gateway::balance::Endpoints;
use tower_gateway::rate_limit::key::Global;
use tower_gateway::rate_limit::{RateLimitLayer, ReadJsonLayer};
use tower_gateway::{
    ClientAddrLayer, Limiter, Quota, RetryLayer, RetryPolicy, RoundRobinLayer, StripPrefixLayer, TimeoutLayer,
};
use tower_service::Service;
use tower_test::mock;

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

/// Not ready while the mock allows nothing; ready once it allows one; that
/// request reaches the mock and its response comes back through the layer.
async fn holds_back<L, T, B>(layer: L, path: &str)
where
    L: Layer<mock::Mock<T, Response<Full<Bytes>>>>,
    L::Service: Service<Request<Full<Bytes>>, Response = Response<B>>,
    <L::Service as Service<Request<Full<Bytes>>>>::Error: std::fmt::Debug,
{
    let (mut svc, mut handle) = mock::spawn_layer::<T, Response<Full<Bytes>>, _>(layer);
    handle.allow(0);
    assert!(svc.poll_ready().is_pending(), "ready while the inner service is not");
    handle.allow(1);
    assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))), "not ready once the inner service is");

    let (response, ()) = tokio::join!(svc.call(get(path)), async {
        let (_, send) = handle.next_request().await.expect("the request reached the inner service");
        send.send_response(Response::new(Full::new(Bytes::from_static(b"inner"))));
    });
    assert!(response.unwrap().status().is_success());

    // The one permit is spent: not ready again until the inner service is.
    assert!(svc.poll_ready().is_pending(), "ready again without a new permit");
}

#[tokio::test]
async fn strip_prefix() {
    holds_back::<_, Request<Full<Bytes>>, _>(StripPrefixLayer::new("/api"), "/api/x").await;
}

#[tokio::test]
async fn round_robin() {
    let endpoints = Endpoints::new(["http://127.0.0.1:1"]).unwrap();
    holds_back::<_, Request<Full<Bytes>>, _>(RoundRobinLayer::new(endpoints), "/x").await;
}

#[tokio::test]
async fn retry() {
    holds_back::<_, Request<tower_gateway::retry::ReplayBody<Full<Bytes>>>, _>(
        RetryLayer::new(RetryPolicy::new()),
        "/x",
    )
    .await;
}

#[tokio::test]
async fn timeout() {
    holds_back::<_, Request<Full<Bytes>>, _>(TimeoutLayer::new(Duration::from_secs(5)), "/x").await;
}

#[tokio::test]
async fn rate_limit() {
    let limiter = Limiter::new("plenty", Quota::per_second(1000));
    holds_back::<_, Request<Full<Bytes>>, _>(RateLimitLayer::new(limiter, Global), "/x").await;
}

#[tokio::test]
async fn read_json() {
    holds_back::<_, Request<Full<Bytes>>, _>(ReadJsonLayer::new(["email"]), "/x").await;
}

#[tokio::test]
async fn client_addr() {
    holds_back::<_, Request<Full<Bytes>>, _>(ClientAddrLayer::new(), "/x").await;
}

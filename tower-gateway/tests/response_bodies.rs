//! Every layer over inner services answering the bodies Rust services use —
//! `axum::body::Body`, `Full<Bytes>`, `BoxBody` and `String` — with nothing
//! asked of them but to be a body: the inner body passes through untouched and
//! the layer's own refusal is its JSON. And tower-http's `TraceLayer` fits just
//! above `Proxy`.

use std::convert::Infallible;
use std::fmt::Debug;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_gateway::balance::Endpoints;
use tower_gateway::rate_limit::key::Global;
use tower_gateway::rate_limit::{RateLimitLayer, ReadJsonLayer};
use tower_gateway::{Limiter, Proxy, Quota, RetryLayer, RetryPolicy, RoundRobinLayer, StripPrefixLayer};

/// An inner service that answers 200 with `make()` whatever it is sent.
fn answering<Req, B>(
    make: fn() -> B,
) -> impl Service<Req, Response = Response<B>, Error = Infallible, Future: Send> + Clone + Send + 'static
where
    Req: Send + 'static,
    B: Send + 'static,
{
    service_fn(move |_: Req| async move { Ok::<_, Infallible>(Response::new(make())) })
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

async fn text<B>(response: Response<B>) -> (StatusCode, String)
where
    B: http_body::Body,
    B::Error: Debug,
{
    let status = response.status();
    (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
}

fn code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["error"]["code"].as_str().unwrap().to_owned()
}

async fn every_layer_over<B>(make: fn() -> B)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Debug,
{
    // StripPrefix: passes, and refuses a dot segment with its JSON.
    let svc = StripPrefixLayer::new("/api").layer(answering(make));
    assert_eq!(text(svc.clone().oneshot(get("/api/x")).await.unwrap()).await, (StatusCode::OK, "inner".into()));
    let (status, body) = text(svc.oneshot(get("/api/%2e%2e/x")).await.unwrap()).await;
    assert_eq!((status, code(&body).as_str()), (StatusCode::BAD_REQUEST, "invalid_path"));

    // RoundRobin: passes.
    let endpoints = Endpoints::new(["http://127.0.0.1:1"]).unwrap();
    let svc = RoundRobinLayer::new(endpoints).layer(answering(make));
    assert_eq!(text(svc.oneshot(get("/x")).await.unwrap()).await, (StatusCode::OK, "inner".into()));

    // Retry: passes.
    let svc = RetryLayer::new(RetryPolicy::new()).layer(answering(make));
    assert_eq!(text(svc.oneshot(get("/x")).await.unwrap()).await, (StatusCode::OK, "inner".into()));

    // RateLimit: the first passes, the second is its 429.
    let svc = RateLimitLayer::new(Limiter::new("one", Quota::per_minute(1)), Global).layer(answering(make));
    assert_eq!(text(svc.clone().oneshot(get("/x")).await.unwrap()).await, (StatusCode::OK, "inner".into()));
    let (status, body) = text(svc.oneshot(get("/x")).await.unwrap()).await;
    assert_eq!((status, code(&body).as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));

    // ReadJson: passes other bodies, and refuses a JSON body too big with its 413.
    let svc = ReadJsonLayer::new(["email"]).max_bytes(8).layer(answering(make));
    assert_eq!(text(svc.clone().oneshot(get("/x")).await.unwrap()).await, (StatusCode::OK, "inner".into()));
    let big = Request::post("/x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"email":"a@example.com"}"#)))
        .unwrap();
    let (status, body) = text(svc.oneshot(big).await.unwrap()).await;
    assert_eq!((status, code(&body).as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
}

#[tokio::test]
async fn over_axum_bodies() {
    every_layer_over(|| axum::body::Body::from("inner")).await;
}

#[tokio::test]
async fn over_full_bodies() {
    every_layer_over(|| Full::new(Bytes::from_static(b"inner"))).await;
}

#[tokio::test]
async fn over_box_bodies() {
    every_layer_over(|| Full::new(Bytes::from_static(b"inner")).map_err(|never| match never {}).boxed()).await;
}

#[tokio::test]
async fn over_string_bodies() {
    every_layer_over(|| String::from("inner")).await;
}

#[tokio::test]
async fn trace_layer_just_above_proxy() {
    let route = ServiceBuilder::new()
        .layer(StripPrefixLayer::new("/api"))
        .layer(RoundRobinLayer::new(Endpoints::new(["http://127.0.0.1:1"]).unwrap()))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .service(Proxy::new());
    // Nothing listens on port 1: the proxy's 502, through the trace layer's body.
    let (status, body) = text(route.oneshot(get("/api/x")).await.unwrap()).await;
    assert_eq!((status, code(&body).as_str()), (StatusCode::BAD_GATEWAY, "upstream_connect_failed"));
}

//! `JwtAuthLayer` over inner services answering `axum::body::Body`,
//! `Full<Bytes>`, `BoxBody` and `String`: a valid token passes the inner body
//! through untouched, a missing one gets the layer's JSON 401.

use std::convert::Infallible;
use std::fmt::Debug;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_gateway_auth::{Algorithm, Authenticator, JwtAuthLayer, Key, TokenIssuer};

const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";

async fn check_over<B>(make: fn() -> B)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Debug,
{
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    let token = TokenIssuer::hmac(Algorithm::HS256, SECRET).unwrap().issue("42", None, &[]).unwrap();
    let svc = JwtAuthLayer::new(auth)
        .layer(service_fn(move |_: Request<()>| async move { Ok::<_, Infallible>(Response::new(make())) }));

    let with_token = Request::get("/").header(header::AUTHORIZATION, format!("Bearer {token}")).body(()).unwrap();
    let response = svc.clone().oneshot(with_token).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "inner");

    let response = svc.oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "missing_token");
}

#[tokio::test]
async fn over_axum_bodies() {
    check_over(|| axum::body::Body::from("inner")).await;
}

#[tokio::test]
async fn over_full_bodies() {
    check_over(|| Full::new(Bytes::from_static(b"inner"))).await;
}

#[tokio::test]
async fn over_box_bodies() {
    check_over(|| Full::new(Bytes::from_static(b"inner")).map_err(|never| match never {}).boxed()).await;
}

#[tokio::test]
async fn over_string_bodies() {
    check_over(|| String::from("inner")).await;
}

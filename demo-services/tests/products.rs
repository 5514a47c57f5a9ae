//! product-service through `app(...)` with `oneshot`, on a temporary database.

mod common;

use common::{Backend, assert_error, call, call_raw};
use demo_services::products::{self, ProductsState};
use http::{Method, StatusCode};
use serde_json::json;

async fn app(url: &str) -> axum::Router {
    products::app(ProductsState::connect(url).await.unwrap())
}

async fn crud_round_trip(backend: Backend) {
    let (_dir, url) = backend.database("products.db").await;
    let app = app(&url).await;

    let (status, list) = call(&app, Method::GET, "/", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 4, "the seed's products");
    assert_eq!(list[0], json!({"id": 1, "name": "Laptop", "price": 999.99}));

    let (status, created) = call(&app, Method::POST, "/", Some(json!({"name": " Mouse ", "price": 19.99})), &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created, json!({"id": 5, "name": "Mouse", "price": 19.99}));

    assert_eq!(call(&app, Method::GET, "/5", None, &[]).await, (StatusCode::OK, created.clone()));

    let (status, replaced) =
        call(&app, Method::PUT, "/5", Some(json!({"name": "Mouse Pro", "price": "24.50"})), &[]).await;
    assert_eq!((status, replaced), (StatusCode::OK, json!({"id": 5, "name": "Mouse Pro", "price": 24.5})));

    assert_eq!(call(&app, Method::DELETE, "/5", None, &[]).await.0, StatusCode::NO_CONTENT);
    assert_error(&call(&app, Method::GET, "/5", None, &[]).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&call(&app, Method::DELETE, "/5", None, &[]).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &call(&app, Method::PUT, "/99", Some(json!({"name": "x", "price": 1})), &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

async fn list_pages(backend: Backend) {
    let (_dir, url) = backend.database("products.db").await;
    let app = app(&url).await;
    let (_, page) = call(&app, Method::GET, "/?limit=2&offset=1", None, &[]).await;
    let ids: Vec<i64> = page.as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [2, 3]);
    assert_error(
        &call(&app, Method::GET, "/?limit=0", None, &[]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_error(
        &call(&app, Method::GET, "/?limit=501", None, &[]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_error(&call(&app, Method::GET, "/?limit=abc", None, &[]).await, StatusCode::BAD_REQUEST, "bad_request");
    assert_error(&call(&app, Method::GET, "/?offset=-1", None, &[]).await, StatusCode::BAD_REQUEST, "bad_request");
}

async fn bad_input_gets_json_errors_never_500(backend: Backend) {
    let (_dir, url) = backend.database("products.db").await;
    let app = app(&url).await;
    let bad_request = StatusCode::BAD_REQUEST;
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    for (body, status) in [
        (json!({"name": "", "price": 1}), invalid),
        (json!({"name": "   ", "price": 1}), invalid),
        (json!({"name": "x".repeat(201), "price": 1}), invalid),
        (json!({"name": "Free", "price": 0}), invalid),
        (json!({"name": "Huge", "price": 1_000_000.01}), invalid),
        (json!({"name": "Neg", "price": -1}), bad_request),
        (json!({"name": "Fraction", "price": 1.001}), bad_request),
        (json!({"name": "Str", "price": "abc"}), bad_request),
        (json!({"name": 5, "price": 1}), bad_request),
        (json!({"price": 1}), bad_request),
        (json!({"name": "x", "price": 1, "extra": true}), bad_request),
        (json!([1, 2]), bad_request),
    ] {
        let got = call(&app, Method::POST, "/", Some(body.clone()), &[]).await;
        assert_eq!(got.0, status, "{body}: {}", got.1);
        assert!(got.1["error"]["code"].is_string(), "{body}");
    }
    assert_error(
        &call_raw(&app, Method::POST, "/", Some("application/json"), "{\"name\":").await,
        bad_request,
        "bad_request",
    );
    assert_error(
        &call_raw(&app, Method::POST, "/", None, "{}").await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let big = Box::leak(format!("{{\"name\":\"{}\",\"price\":1}}", "x".repeat(70 * 1024)).into_boxed_str());
    assert_error(
        &call_raw(&app, Method::POST, "/", Some("application/json"), big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    assert_error(&call(&app, Method::GET, "/abc", None, &[]).await, bad_request, "bad_request");
    assert_error(&call(&app, Method::GET, "/99999999999999999999", None, &[]).await, bad_request, "bad_request");
    assert_error(&call(&app, Method::GET, "/1/extra", None, &[]).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &call(&app, Method::PATCH, "/1", None, &[]).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

async fn health_and_readiness(backend: Backend) {
    let (_dir, url) = backend.database("products.db").await;
    let app = app(&url).await;
    assert_eq!(call(&app, Method::GET, "/healthz", None, &[]).await.0, StatusCode::OK);
    assert_eq!(call(&app, Method::GET, "/readyz", None, &[]).await.0, StatusCode::OK);
}

async fn restart_keeps_data_and_does_not_reseed(backend: Backend) {
    let (_dir, url) = backend.database("products.db").await;
    let state = ProductsState::connect(&url).await.unwrap();
    let app = products::app(state.clone());
    call(&app, Method::POST, "/", Some(json!({"name": "Kept", "price": 3.5})), &[]).await;
    call(&app, Method::DELETE, "/1", None, &[]).await;
    state.db.close().await;

    let app = products::app(ProductsState::connect(&url).await.unwrap());
    let (_, list) = call(&app, Method::GET, "/", None, &[]).await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Smartphone", "Headphones", "Keyboard", "Kept"], "the deleted seed row stays deleted");
}

async fn with_a_key_only_an_admin_writes_and_anyone_reads(backend: Backend) {
    use tower_gateway_auth::{Algorithm, Authenticator, Key, TokenIssuer};
    const SECRET: &[u8] = b"a products test secret of 32+ bytes";
    let (_dir, url) = backend.database("products.db").await;
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    let app = products::app(ProductsState::connect(&url).await.unwrap().with_auth(auth));
    let issuer = TokenIssuer::hmac(Algorithm::HS256, SECRET).unwrap();
    let bearer = |roles: &[String]| format!("Bearer {}", issuer.issue("7", None, roles).unwrap());
    let (user, admin) = (bearer(&[]), bearer(&["admin".to_owned()]));
    let body = || Some(json!({"name": "Pen", "price": 1.5}));
    for (method, path) in [(Method::POST, "/"), (Method::PUT, "/1"), (Method::DELETE, "/2")] {
        let (status, _) = call(&app, method.clone(), path, body(), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a token");
        let forged = [("x-user-id", "1"), ("authorization", user.as_str())];
        let (status, _) = call(&app, method.clone(), path, body(), &forged).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} with a user's token");
    }
    assert_eq!(call(&app, Method::GET, "/1", None, &[]).await.0, StatusCode::OK, "reading is open");
    let as_admin = [("authorization", admin.as_str())];
    assert_eq!(call(&app, Method::POST, "/", body(), &as_admin).await.0, StatusCode::CREATED);
    assert_eq!(call(&app, Method::PUT, "/1", body(), &as_admin).await.0, StatusCode::OK);
    assert_eq!(call(&app, Method::DELETE, "/2", None, &as_admin).await.0, StatusCode::NO_CONTENT);
}

common::on_both_databases!(
    crud_round_trip,
    list_pages,
    bad_input_gets_json_errors_never_500,
    health_and_readiness,
    restart_keeps_data_and_does_not_reseed,
    with_a_key_only_an_admin_writes_and_anyone_reads,
);

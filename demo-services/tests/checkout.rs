//! checkout-service through `app(...)` with `oneshot`, on a temporary database,
//! pricing orders from a product-service served on a loopback port.

mod common;

use std::collections::HashSet;

use common::{Backend, InProcess, TestDb, assert_error, call, serve};
use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::products::{self, ProductsState};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tower_gateway::balance::Endpoints;

struct Fixture {
    app: axum::Router,
    state: CheckoutState,
    _products: InProcess,
    _dirs: (TestDb, TestDb),
}

async fn fixture(backend: Backend) -> Fixture {
    let (products_dir, products_url) = backend.database("products.db").await;
    let products = serve(products::app(ProductsState::connect(&products_url).await.unwrap())).await;
    let (orders_dir, orders_url) = backend.database("orders.db").await;
    let endpoints = Endpoints::new([format!("http://{}", products.addr)]).unwrap();
    let state = CheckoutState {
        db: checkout::connect(&orders_url).await.unwrap(),
        products: ProductClient::new(endpoints),
        auth: None,
        inventory: None,
    };
    Fixture { app: checkout::app(state.clone()), state, _products: products, _dirs: (products_dir, orders_dir) }
}

async fn order(app: &axum::Router, user: &str, body: Value, key: Option<&str>) -> (StatusCode, Value) {
    let mut headers = vec![("x-user-id", user)];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    call(app, Method::POST, "/", Some(body), &headers).await
}

async fn count_orders(state: &CheckoutState) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&state.db).await.unwrap()
}

async fn an_order_is_priced_from_product_service(backend: Backend) {
    let f = fixture(backend).await;
    let (status, created) = order(&f.app, "7", json!({"product_id": 3, "quantity": 2}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created,
        json!({"id": 1, "user_id": 7, "product_id": 3, "quantity": 2, "total_price": 159.8, "status": "confirmed"})
    );

    assert_eq!(call(&f.app, Method::GET, "/1", None, &[("x-user-id", "7")]).await, (StatusCode::OK, created.clone()));
    assert_eq!(call(&f.app, Method::GET, "/", None, &[("x-user-id", "7")]).await, (StatusCode::OK, json!([created])));
    // Someone else's order does not exist for them.
    assert_error(
        &call(&f.app, Method::GET, "/1", None, &[("x-user-id", "8")]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(call(&f.app, Method::GET, "/", None, &[("x-user-id", "8")]).await, (StatusCode::OK, json!([])));
}

async fn requests_without_the_gateways_identity_are_refused(backend: Backend) {
    let f = fixture(backend).await;
    for headers in [vec![], vec![("x-user-id", "abc")], vec![("x-user-id", "0")], vec![("x-user-id", "-3")]] {
        let got = call(&f.app, Method::POST, "/", Some(json!({"product_id": 1, "quantity": 1})), &headers).await;
        assert_error(&got, StatusCode::UNAUTHORIZED, "missing_identity");
        assert_error(
            &call(&f.app, Method::GET, "/", None, &headers).await,
            StatusCode::UNAUTHORIZED,
            "missing_identity",
        );
    }
    assert_eq!(count_orders(&f.state).await, 0);
}

async fn bad_orders_get_json_errors(backend: Backend) {
    let f = fixture(backend).await;
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    for body in [
        json!({"product_id": 1, "quantity": 0}),
        json!({"product_id": 1, "quantity": 1001}),
        json!({"product_id": 0, "quantity": 1}),
        json!({"product_id": 999, "quantity": 1}),
    ] {
        assert_error(&order(&f.app, "1", body, None).await, invalid, "validation_failed");
    }
    for body in
        [json!({"product_id": "1", "quantity": 1}), json!({"product_id": 1}), json!({"product_id": 1, "quantity": 1.5})]
    {
        assert_error(&order(&f.app, "1", body, None).await, StatusCode::BAD_REQUEST, "bad_request");
    }
    let long_key = "k".repeat(256);
    assert_error(
        &order(&f.app, "1", json!({"product_id": 1, "quantity": 1}), Some(&long_key)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &call(&f.app, Method::GET, "/x", None, &[("x-user-id", "1")]).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_eq!(count_orders(&f.state).await, 0);
}

async fn same_key_same_body_replays_the_stored_response(backend: Backend) {
    let f = fixture(backend).await;
    let body = json!({"product_id": 2, "quantity": 1});
    let first = order(&f.app, "5", body.clone(), Some("key-1")).await;
    let second = order(&f.app, "5", body.clone(), Some("key-1")).await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(first, second);
    assert_eq!(count_orders(&f.state).await, 1);
    // The same key from another user is another key.
    assert_eq!(order(&f.app, "6", body, Some("key-1")).await.0, StatusCode::CREATED);
    assert_eq!(count_orders(&f.state).await, 2);
}

async fn same_key_other_body_is_422(backend: Backend) {
    let f = fixture(backend).await;
    assert_eq!(order(&f.app, "5", json!({"product_id": 2, "quantity": 1}), Some("key-2")).await.0, StatusCode::CREATED);
    let other = order(&f.app, "5", json!({"product_id": 2, "quantity": 3}), Some("key-2")).await;
    assert_error(&other, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(count_orders(&f.state).await, 1);
}

async fn fifty_concurrent_duplicates_make_exactly_one_order(backend: Backend) {
    let f = fixture(backend).await;
    let body = json!({"product_id": 1, "quantity": 1});
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (app, body) = (f.app.clone(), body.clone());
            tokio::spawn(async move { order(&app, "9", body, Some("dup")).await })
        })
        .collect();
    let mut created = HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => {
                created.insert(body.to_string());
            }
            StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "conflict"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created.len(), 1, "every 201 is the same order: {created:?}");
    assert_eq!(count_orders(&f.state).await, 1);
}

async fn product_service_down_is_503_and_the_key_can_be_used_again(backend: Backend) {
    let (products_dir, products_url) = backend.database("products.db").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_orders_dir, orders_url) = backend.database("orders.db").await;
    let endpoints = Endpoints::new([format!("http://{closed}")]).unwrap();
    let state = CheckoutState {
        db: checkout::connect(&orders_url).await.unwrap(),
        products: ProductClient::new(endpoints.clone()),
        auth: None,
        inventory: None,
    };
    let app = checkout::app(state.clone());
    let body = json!({"product_id": 1, "quantity": 1});
    assert_error(&order(&app, "3", body.clone(), Some("k")).await, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(count_orders(&state).await, 0);

    let products = serve(products::app(ProductsState::connect(&products_url).await.unwrap())).await;
    endpoints.replace([format!("http://{}", products.addr)]).unwrap();
    assert_eq!(order(&app, "3", body, Some("k")).await.0, StatusCode::CREATED);
    assert_eq!(count_orders(&state).await, 1);
    drop(products_dir);
}

async fn two_hundred_checkouts_from_twenty_tasks_lose_nothing(backend: Backend) {
    let f = fixture(backend).await;
    let tasks: Vec<_> = (0..20)
        .map(|task| {
            let app = f.app.clone();
            tokio::spawn(async move {
                let mut expected = 0i64;
                for i in 0..10 {
                    let (product, quantity, price_cents) = [(1, 1, 99999), (3, 2, 7990), (4, 3, 4950)][(task + i) % 3];
                    let key = format!("t{task}-{i}");
                    let (status, body) = order(
                        &app,
                        &(task + 1).to_string(),
                        json!({"product_id": product, "quantity": quantity}),
                        Some(&key),
                    )
                    .await;
                    assert_eq!(status, StatusCode::CREATED, "{body}");
                    expected += price_cents * quantity;
                }
                expected
            })
        })
        .collect();
    let mut expected_total = 0;
    for task in tasks {
        expected_total += task.await.unwrap();
    }
    assert_eq!(count_orders(&f.state).await, 200);
    let total: i64 =
        sqlx::query_scalar("SELECT CAST(SUM(total_cents) AS BIGINT) FROM orders").fetch_one(&f.state.db).await.unwrap();
    assert_eq!(total, expected_total);
    let wrong: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE total_cents != quantity * CASE product_id WHEN 1 THEN 99999 WHEN 3 THEN 7990 WHEN 4 THEN 4950 END",
    )
    .fetch_one(&f.state.db)
    .await
    .unwrap();
    assert_eq!(wrong, 0);
}

async fn restart_keeps_orders(backend: Backend) {
    let (products_dir, products_url) = backend.database("products.db").await;
    let products = serve(products::app(ProductsState::connect(&products_url).await.unwrap())).await;
    let endpoints = Endpoints::new([format!("http://{}", products.addr)]).unwrap();
    let (_dir, url) = backend.database("orders.db").await;
    let db = checkout::connect(&url).await.unwrap();
    let app = checkout::app(CheckoutState {
        db: db.clone(),
        products: ProductClient::new(endpoints.clone()),
        auth: None,
        inventory: None,
    });
    let (_, created) = order(&app, "1", json!({"product_id": 2, "quantity": 1}), Some("k")).await;
    db.close().await;

    let app = checkout::app(CheckoutState {
        db: checkout::connect(&url).await.unwrap(),
        products: ProductClient::new(endpoints),
        auth: None,
        inventory: None,
    });
    assert_eq!(call(&app, Method::GET, "/", None, &[("x-user-id", "1")]).await.1, json!([created.clone()]));
    assert_eq!(
        order(&app, "1", json!({"product_id": 2, "quantity": 1}), Some("k")).await.1,
        created,
        "the stored response survives too"
    );
    drop(products_dir);
}

async fn not_ready_without_a_product_endpoint(backend: Backend) {
    let (_dir, url) = backend.database("orders.db").await;
    let endpoints = Endpoints::new(Vec::<String>::new()).unwrap();
    let app = checkout::app(CheckoutState {
        db: checkout::connect(&url).await.unwrap(),
        products: ProductClient::new(endpoints.clone()),
        auth: None,
        inventory: None,
    });
    let (status, body) = call(&app, Method::GET, "/readyz", None, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "no product-service endpoint");
    endpoints.replace(["http://127.0.0.1:1"]).unwrap();
    assert_eq!(call(&app, Method::GET, "/readyz", None, &[]).await.0, StatusCode::OK);
}

common::on_both_databases!(
    an_order_is_priced_from_product_service,
    requests_without_the_gateways_identity_are_refused,
    bad_orders_get_json_errors,
    same_key_same_body_replays_the_stored_response,
    same_key_other_body_is_422,
    fifty_concurrent_duplicates_make_exactly_one_order(flavor = "multi_thread", worker_threads = 2),
    product_service_down_is_503_and_the_key_can_be_used_again,
    two_hundred_checkouts_from_twenty_tasks_lose_nothing(flavor = "multi_thread", worker_threads = 2),
    restart_keeps_orders,
    not_ready_without_a_product_endpoint,
);

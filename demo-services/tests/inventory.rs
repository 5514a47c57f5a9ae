//! inventory-service over gRPC on a loopback port, and checkout-service
//! reserving from it through tower-gateway's stack: stock never oversold, a
//! checkout past the stock a clear `409`, a retried checkout reserving once.

mod common;

use std::sync::Arc;

use common::{Backend, InProcess, TestDb, call, serve};
use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::inventory::pb::inventory_client::InventoryClient as GrpcClient;
use demo_services::inventory::pb::{GetStockRequest, ReserveRequest, RestockRequest};
use demo_services::inventory::{self, InventoryClient, InventoryState};
use demo_services::products::{self, ProductsState};
use http::{Method, StatusCode};
use serde_json::json;
use tonic::transport::Channel;
use tower_gateway::balance::Endpoints;

struct Fixture {
    checkout: axum::Router,
    orders: sqlx::AnyPool,
    grpc: GrpcClient<Channel>,
    at: String,
    _servers: (InProcess, tokio::task::JoinHandle<()>),
    _dirs: (TestDb, TestDb, TestDb),
}

async fn fixture(backend: Backend) -> Fixture {
    let (products_dir, products_url) = backend.database("products.db").await;
    let products = serve(products::app(ProductsState::connect(&products_url).await.unwrap())).await;
    let (inventory_dir, inventory_url) = backend.database("inventory.db").await;
    let state = InventoryState::connect(&inventory_url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inventory_at = format!("http://{}", listener.local_addr().unwrap());
    let inventory = tokio::spawn(async move {
        inventory::serve(state, listener, std::future::pending()).await.unwrap();
    });
    let (orders_dir, orders_url) = backend.database("orders.db").await;
    let orders = checkout::connect(&orders_url).await.unwrap();
    let state = CheckoutState {
        db: orders.clone(),
        products: ProductClient::new(Endpoints::new([format!("http://{}", products.addr)]).unwrap()),
        auth: None,
        inventory: Some(InventoryClient::new(Endpoints::new([inventory_at.clone()]).unwrap())),
    };
    let grpc = GrpcClient::new(Channel::from_shared(inventory_at.clone()).unwrap().connect().await.unwrap());
    Fixture {
        checkout: checkout::app(state),
        orders,
        grpc,
        at: inventory_at,
        _servers: (products, inventory),
        _dirs: (products_dir, inventory_dir, orders_dir),
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self._servers.1.abort();
    }
}

async fn available(f: &Fixture, product_id: i64) -> i64 {
    f.grpc.clone().get_stock(GetStockRequest { product_id }).await.unwrap().into_inner().available
}

async fn orders(f: &Fixture) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&f.orders).await.unwrap()
}

async fn fifty_concurrent_checkouts_of_the_last_ten_items_sell_exactly_ten(backend: Backend) {
    let f = Arc::new(fixture(backend).await);
    // The seeded stock of product 2, down to the last 10.
    let quantity = available(&f, 2).await - 10;
    let reserve = ReserveRequest { order_key: "stocktake".into(), product_id: 2, quantity };
    assert_eq!(f.grpc.clone().reserve(reserve).await.unwrap().into_inner().remaining, 10);

    let attempts = (0..50).map(|i| {
        let f = f.clone();
        tokio::spawn(async move {
            let key = format!("buy-{i}");
            let headers = [("x-user-id", "7"), ("idempotency-key", key.as_str())];
            call(&f.checkout, Method::POST, "/", Some(json!({"product_id": 2, "quantity": 1})), &headers).await
        })
    });
    let mut created = 0;
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["code"], "out_of_stock", "{body}");
                assert!(body["error"]["message"].as_str().unwrap().contains("left"), "{body}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(orders(&f).await, 10);
    assert_eq!(available(&f, 2).await, 0, "never below zero");

    // Past the stock, a clear 409 and no order.
    let (status, body) =
        call(&f.checkout, Method::POST, "/", Some(json!({"product_id": 2, "quantity": 1})), &[("x-user-id", "8")])
            .await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("out_of_stock")));
    assert_eq!(orders(&f).await, 10);
}

async fn a_retried_checkout_reserves_once_and_a_restock_sells_again(backend: Backend) {
    let f = fixture(backend).await;
    let before = available(&f, 3).await;
    let headers = [("x-user-id", "7"), ("idempotency-key", "once")];
    let body = json!({"product_id": 3, "quantity": 4});
    let (first, order) = call(&f.checkout, Method::POST, "/", Some(body.clone()), &headers).await;
    assert_eq!(first, StatusCode::CREATED, "{order}");
    let (again, replayed) = call(&f.checkout, Method::POST, "/", Some(body), &headers).await;
    assert_eq!((again, &replayed), (StatusCode::CREATED, &order));
    assert_eq!(available(&f, 3).await, before - 4, "one reservation");

    // A reservation retried with its key takes nothing more; another product under it is refused.
    let retry = ReserveRequest { order_key: "k".into(), product_id: 1, quantity: 2 };
    let first = f.grpc.clone().reserve(retry.clone()).await.unwrap().into_inner();
    assert_eq!(f.grpc.clone().reserve(retry).await.unwrap().into_inner(), first);
    let other = ReserveRequest { order_key: "k".into(), product_id: 1, quantity: 3 };
    assert_eq!(f.grpc.clone().reserve(other).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Unknown products and bad quantities are refused by status.
    let unknown = GetStockRequest { product_id: 99 };
    assert_eq!(f.grpc.clone().get_stock(unknown).await.unwrap_err().code(), tonic::Code::NotFound);
    let zero = ReserveRequest { order_key: "z".into(), product_id: 1, quantity: 0 };
    assert_eq!(f.grpc.clone().reserve(zero).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let restocked = f.grpc.clone().restock(RestockRequest { product_id: 3, quantity: 6 }).await.unwrap().into_inner();
    assert_eq!(restocked.available, before + 2);
}

async fn health_says_serving_for_the_inventory_service(backend: Backend) {
    let f = fixture(backend).await;
    let channel = Channel::from_shared(f.at.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let asked = tonic_health::pb::HealthCheckRequest { service: inventory::SERVICE_NAME.into() };
    let status = health.check(asked).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::ServingStatus::Serving as i32);
}

common::on_both_databases!(
    fifty_concurrent_checkouts_of_the_last_ten_items_sell_exactly_ten,
    a_retried_checkout_reserves_once_and_a_restock_sells_again,
    health_says_serving_for_the_inventory_service,
);

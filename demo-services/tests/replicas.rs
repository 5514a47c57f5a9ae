//! Replicas as separate processes: two product-service binaries on one database
//! file, and checkout pricing through them while one is killed.

mod common;

use common::{Backend, HttpClient, Process, call};
use demo_services::checkout::{self, CheckoutState, ProductClient};
use http::{Method, StatusCode};
use serde_json::json;
use tower_gateway::balance::Endpoints;

const PRODUCT_SERVICE: &str = env!("CARGO_BIN_EXE_product-service");

const SECRET: &str = "a replicas test secret of 32+ bytes";

/// The environment of a product-service on `url`, verifying writers with
/// [`SECRET`] (written into `dir`); and a client with an admin's token.
fn product_service(url: &str, dir: &std::path::Path) -> ([(&'static str, String); 3], HttpClient) {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let issuer = tower_gateway_auth::TokenIssuer::hmac(tower_gateway_auth::Algorithm::HS256, SECRET.as_bytes())
        .unwrap()
        // The issuer and audience the binaries require by default.
        .issuer("user-service")
        .audience("tower-gateway");
    let token = issuer.issue("1", None, &["admin".to_owned()]).unwrap();
    let env = [
        ("DATABASE_URL", url.to_owned()),
        ("JWT_ALGORITHM", "HS256".to_owned()),
        ("JWT_SECRET_FILE", secret.display().to_string()),
    ];
    (env, HttpClient::new().bearer(&token))
}

async fn two_processes_share_one_database(backend: Backend) {
    let (dir, url) = backend.database("products.db").await;
    let (env, client) = product_service(&url, dir.path());
    // Started together: both migrate the new file at once.
    let (a, b) = tokio::join!(Process::start(PRODUCT_SERVICE, &env), Process::start(PRODUCT_SERVICE, &env));
    // Writes need the admin's token: without one, refused.
    let (status, _) = HttpClient::new()
        .send(Method::POST, &format!("{}/", a.url()), Some(json!({"name": "X", "price": 1})))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, created) = client
        .send(Method::POST, &format!("{}/", a.url()), Some(json!({"name": "Shared", "price": 12.5})))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(client.get(&format!("{}/{id}", b.url())).await.unwrap(), (StatusCode::OK, created));

    // 100 writes through each replica at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, base) = (client.clone(), if i % 2 == 0 { a.url() } else { b.url() });
        tasks.spawn(async move {
            client
                .send(Method::POST, &format!("{base}/"), Some(json!({"name": format!("p{i}"), "price": 1})))
                .await
                .unwrap()
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(ids.insert(body["id"].as_i64().unwrap()));
    }
    for base in [a.url(), b.url()] {
        let (_, all) = client.get(&format!("{base}/?limit=500")).await.unwrap();
        assert_eq!(all.as_array().unwrap().len(), 4 + 1 + 200, "every write is seen through {base}");
    }
}

/// A `DATABASE_URL` the services cannot serve stops them at start, saying so,
/// and makes nothing: not a SQLite file named after the URL.
#[test]
fn a_database_url_of_another_kind_stops_the_service_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["mysql://root@127.0.0.1:3306/products", "products.db", "http://db/products"] {
        let out = std::process::Command::new(PRODUCT_SERVICE)
            .current_dir(dir.path())
            .env("DATABASE_URL", url)
            .env("JWT_ALGORITHM", "HS256")
            .env("JWT_SECRET", SECRET)
            .env("PORT", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {stderr}");
        assert!(stderr.contains("DATABASE_URL must be sqlite://PATH or postgres://"), "{url}: {stderr}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{url}: nothing made");
    }
    // A Postgres that does not answer: said, with the URL's password masked.
    let out = std::process::Command::new(PRODUCT_SERVICE)
        .current_dir(dir.path())
        .env("DATABASE_URL", "postgres://shop:s3cret@127.0.0.1:1/products")
        .env("DATABASE_ACQUIRE_TIMEOUT_MS", "300")
        .env("PORT", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("postgres://shop:********@127.0.0.1:1/products"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

async fn checkout_keeps_pricing_with_one_product_instance_killed(backend: Backend) {
    let (dir, products_url) = backend.database("products.db").await;
    let (env, _) = product_service(&products_url, dir.path());
    let (a, mut b) = tokio::join!(Process::start(PRODUCT_SERVICE, &env), Process::start(PRODUCT_SERVICE, &env));
    let (_orders_dir, orders_url) = backend.database("orders.db").await;
    let endpoints = Endpoints::new([a.url(), b.url()]).unwrap();
    let state = CheckoutState {
        db: checkout::connect(&orders_url).await.unwrap(),
        products: ProductClient::new(endpoints),
        auth: None,
        inventory: None,
    };
    let app = checkout::app(state.clone());

    let buy = |n: usize| {
        let app = app.clone();
        async move {
            let key = format!("k{n}");
            call(
                &app,
                Method::POST,
                "/",
                Some(json!({"product_id": 2, "quantity": 1})),
                &[("x-user-id", "1"), ("idempotency-key", &key)],
            )
            .await
        }
    };
    for n in 0..10 {
        assert_eq!(buy(n).await.0, StatusCode::CREATED);
    }
    b.kill();
    for n in 10..30 {
        let (status, body) = buy(n).await;
        assert_eq!(status, StatusCode::CREATED, "order {n} after the kill: {body}");
        assert_eq!(body["total_price"], json!(599.0));
    }
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&state.db).await.unwrap();
    assert_eq!(count, 30);
    drop(a);
}

common::on_both_databases!(
    two_processes_share_one_database(flavor = "multi_thread", worker_threads = 2),
    checkout_keeps_pricing_with_one_product_instance_killed(flavor = "multi_thread", worker_threads = 2),
);

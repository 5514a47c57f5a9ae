//! checkout-service: `PORT` (default 3005), `DATABASE_URL` (default
//! `sqlite://data/orders.db`), `PRODUCT_SERVICE_URLS` (comma-separated, default
//! `http://127.0.0.1:3001,http://127.0.0.1:3003`).

use std::process::ExitCode;

use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::server;
use tower_gateway::balance::Endpoints;

#[tokio::main]
async fn main() -> ExitCode {
    const NAME: &str = "checkout-service";
    server::init_tracing();
    let urls = server::env_or("PRODUCT_SERVICE_URLS", "http://127.0.0.1:3001,http://127.0.0.1:3003");
    let endpoints = match Endpoints::new(urls.split(',').map(str::trim).filter(|u| !u.is_empty())) {
        Ok(endpoints) => endpoints,
        Err(err) => return server::fail(NAME, &format!("PRODUCT_SERVICE_URLS: {err}")),
    };
    let url = server::database_url("orders.db");
    let db = match checkout::connect(&url).await {
        Ok(db) => db,
        Err(err) => return server::fail(NAME, &format!("database {url}: {err}")),
    };
    let state = CheckoutState { db, products: ProductClient::new(endpoints) };
    server::run(NAME, checkout::app(state), 3005).await
}

//! checkout-service: `PORT` (default 3005), `DATABASE_URL` (default
//! `sqlite://data/orders.db`), and the product instances: `PRODUCT_SERVICE_DNS`
//! (`host:port`, re-resolved every 5 s, e.g. Swarm's `tasks.product-service:3001`)
//! or `PRODUCT_SERVICE_URLS` (comma-separated, default
//! `http://127.0.0.1:3001,http://127.0.0.1:3003`).

use std::process::ExitCode;

use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::server;
use std::time::Duration;

use tower_gateway::balance::{Endpoints, dns};

#[tokio::main]
async fn main() -> ExitCode {
    const NAME: &str = "checkout-service";
    demo_gateway::init_tracing();
    let endpoints = match std::env::var("PRODUCT_SERVICE_DNS").ok().filter(|v| !v.is_empty()) {
        Some(name) => {
            let endpoints = Endpoints::new(Vec::<String>::new()).expect("an empty set is valid");
            if let Err(err) = dns::resolve(&name, &endpoints).await {
                tracing::warn!(%name, %err, "no product-service instance in DNS yet");
            }
            tokio::spawn(dns::watch(name, endpoints.clone(), Duration::from_secs(5)));
            endpoints
        }
        None => {
            let urls = server::env_or("PRODUCT_SERVICE_URLS", "http://127.0.0.1:3001,http://127.0.0.1:3003");
            match Endpoints::new(urls.split(',').map(str::trim).filter(|u| !u.is_empty())) {
                Ok(endpoints) => endpoints,
                Err(err) => return server::fail(NAME, &format!("PRODUCT_SERVICE_URLS: {err}")),
            }
        }
    };
    let url = server::database_url("orders.db");
    let db = match checkout::connect(&url).await {
        Ok(db) => db,
        Err(err) => return server::fail(NAME, &format!("database {url}: {err}")),
    };
    let state = CheckoutState { db, products: ProductClient::new(endpoints) };
    server::run(NAME, checkout::app(state), 3005).await
}

//! checkout-service: `PORT` (default 3005), `DATABASE_URL` (default
//! `sqlite://data/orders.db`), and the product instances: `PRODUCT_SERVICE_DNS`
//! (`host:port`, re-resolved every 5 s, e.g. Swarm's `tasks.product-service:3001`)
//! or `PRODUCT_SERVICE_URLS` (comma-separated, default
//! `http://127.0.0.1:3001,http://127.0.0.1:3003`); and the key that verifies the
//! tokens the gateway forwards, as the gateway reads it (`JWT_ALGORITHM` with
//! `JWT_PUBLIC_KEY_FILE`, or `JWT_SECRET_FILE`; `JWT_ISSUER`, `JWT_AUDIENCE`), with
//! revocations in `REDIS_URL` (in memory without it). Stock is reserved in
//! inventory-service when `INVENTORY_SERVICE_DNS` (`tasks.inventory-service:50051`)
//! or `INVENTORY_SERVICE_URLS` names it; without either, stock is not kept. It will not start without a
//! key: a service that trusted `x-user-id` would let anything on its network act
//! as any user.

use std::process::ExitCode;

use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::inventory::InventoryClient;
use demo_services::server;
use std::time::Duration;

use tower_gateway::balance::dns::{Discovered, Source};

#[tokio::main]
async fn main() -> ExitCode {
    const NAME: &str = "checkout-service";
    let Some(telemetry) = server::telemetry(NAME) else {
        return ExitCode::from(2);
    };
    let source = match std::env::var("PRODUCT_SERVICE_DNS").ok().filter(|v| !v.is_empty()) {
        Some(name) => Source::Dns { name, every: Duration::from_secs(5) },
        None => {
            let urls = server::env_or("PRODUCT_SERVICE_URLS", "http://127.0.0.1:3001,http://127.0.0.1:3003");
            Source::Static(urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect())
        }
    };
    let products = match Discovered::new(source) {
        Ok(products) => products,
        Err(err) => return server::fail(NAME, &format!("PRODUCT_SERVICE_URLS: {err}")),
    };
    if let Err(err) = products.first_lookup().await {
        tracing::warn!(%err, "no product-service instance in DNS yet");
    }
    let inventory = match inventory_source() {
        None => None,
        Some(source) => match Discovered::new(source) {
            Ok(inventory) => Some(inventory),
            Err(err) => return server::fail(NAME, &format!("INVENTORY_SERVICE_URLS: {err}")),
        },
    };
    if let Some(inventory) = &inventory
        && let Err(err) = inventory.first_lookup().await
    {
        tracing::warn!(%err, "no inventory-service instance in DNS yet");
    }
    let url = match server::database_url("orders.db") {
        Ok(url) => url,
        Err(err) => return server::fail(NAME, &err),
    };
    let db = match checkout::connect(&url).await {
        Ok(db) => db,
        Err(err) => return server::fail(NAME, &format!("database {}: {err}", demo_common::mask_url_password(&url))),
    };
    let keys = match server::keys_from_env() {
        Ok(keys) => keys,
        Err(err) => return server::fail(NAME, &err),
    };
    if !keys.is_set() {
        return server::fail(NAME, "a JWT key is required (JWT_ALGORITHM and JWT_PUBLIC_KEY_FILE, or JWT_SECRET_FILE)");
    }
    let auth = match server::authenticator_from_env(&keys) {
        Ok(auth) => auth,
        Err(err) => return server::fail(NAME, &err),
    };
    let state = CheckoutState {
        db,
        products: ProductClient::new(products.endpoints().clone()),
        auth: Some(auth),
        inventory: inventory.as_ref().map(|i| InventoryClient::new(i.endpoints().clone())),
    };
    // `products` lives until the service ends: its DNS watcher with it.
    let code = server::run(NAME, checkout::app(state), 3005).await;
    // What is queued is sent before the process ends.
    telemetry.shutdown();
    code
}

/// Where inventory-service is, if anywhere.
fn inventory_source() -> Option<Source> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(name) = env("INVENTORY_SERVICE_DNS") {
        return Some(Source::Dns { name, every: Duration::from_secs(5) });
    }
    let urls = env("INVENTORY_SERVICE_URLS")?;
    Some(Source::Static(urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()))
}

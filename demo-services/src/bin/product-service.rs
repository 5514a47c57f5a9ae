//! product-service: `PORT` (default 3001), `DATABASE_URL` (default `sqlite://data/products.db`).

use std::process::ExitCode;

use demo_services::products::{self, ProductsState};
use demo_services::server;

#[tokio::main]
async fn main() -> ExitCode {
    demo_gateway::init_tracing();
    let url = server::database_url("products.db");
    let state = match ProductsState::connect(&url).await {
        Ok(state) => state,
        Err(err) => return server::fail("product-service", &format!("database {url}: {err}")),
    };
    server::run("product-service", products::app(state), 3001).await
}

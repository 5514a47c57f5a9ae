//! inventory-service: gRPC on `PORT` (default 50051; h2c), `DATABASE_URL`
//! (default `sqlite://data/inventory.db`). Serves `inventory.v1.Inventory`,
//! `grpc.health.v1.Health` and server reflection until SIGINT/SIGTERM. Who may
//! call which method is the gateway's route policy (its network is the
//! services' own); `Restock` is for `admin` there.

use std::process::ExitCode;

use demo_services::inventory::{self, InventoryState};
use demo_services::server;

#[tokio::main]
async fn main() -> ExitCode {
    const NAME: &str = "inventory-service";
    let Some(telemetry) = server::telemetry(NAME) else {
        return ExitCode::from(2);
    };
    let url = match server::database_url("inventory.db") {
        Ok(url) => url,
        Err(err) => return server::fail(NAME, &err),
    };
    let state = match InventoryState::connect(&url).await {
        Ok(state) => state,
        Err(err) => return server::fail(NAME, &format!("database {}: {err}", demo_common::mask_url_password(&url))),
    };
    let addr = match server::listen_addr(50051) {
        Ok(addr) => addr,
        Err(err) => return server::fail(NAME, &err),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => return server::fail(NAME, &format!("cannot listen on {addr}: {err}")),
    };
    tracing::info!(service = NAME, %addr, "listening (gRPC, h2c)");
    let code = match inventory::serve(state, listener, demo_common::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => server::fail(NAME, &err.to_string()),
    };
    telemetry.shutdown();
    code
}

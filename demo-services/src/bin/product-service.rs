//! product-service: `PORT` (default 3001), `DATABASE_URL` (default
//! `sqlite://data/products.db`), and the key that verifies the tokens of
//! writers, as the gateway reads it (`JWT_ALGORITHM` with `JWT_PUBLIC_KEY_FILE`,
//! or `JWT_SECRET_FILE`; `JWT_ISSUER`, `JWT_AUDIENCE`), with revocations in
//! `REDIS_URL` (in memory without it). It will not start without a key: its
//! catalogue would be open to anything on its network.

use std::process::ExitCode;

use demo_services::products::{self, ProductsState};
use demo_services::server;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(telemetry) = server::telemetry("product-service") else {
        return ExitCode::from(2);
    };
    let url = match server::database_url("products.db") {
        Ok(url) => url,
        Err(err) => return server::fail("product-service", &err),
    };
    let state = match ProductsState::connect(&url).await {
        Ok(state) => state,
        Err(err) => {
            return server::fail(
                "product-service",
                &format!("database {}: {err}", demo_common::mask_url_password(&url)),
            );
        }
    };
    let keys = match server::keys_from_env() {
        Ok(keys) if keys.is_set() => keys,
        Ok(_) => {
            let why = "a JWT key is required (JWT_ALGORITHM and JWT_PUBLIC_KEY_FILE, or JWT_SECRET_FILE)";
            return server::fail("product-service", why);
        }
        Err(err) => return server::fail("product-service", &err),
    };
    let state = match server::authenticator_from_env(&keys) {
        Ok(auth) => state.with_auth(auth),
        Err(err) => return server::fail("product-service", &err),
    };
    let code = server::run("product-service", products::app(state), 3001).await;
    // What is queued is sent before the process ends.
    telemetry.shutdown();
    code
}

//! user-service: `PORT` (default 3002), `DATABASE_URL` (default `sqlite://data/users.db`),
//! the JWT key (`JWT_SECRET_FILE`, `JWT_SECRET`, or `JWT_ALGORITHM` with
//! `JWT_PRIVATE_KEY_FILE` and `JWT_PUBLIC_KEY_FILE`), and `REDIS_URL` for the token
//! store that logout revokes in (in memory without it).

use std::process::ExitCode;
use std::sync::Arc;

use demo_services::jwt::JwtSettings;
use demo_services::server;
use demo_services::users::{self, Passwords, UsersState};
use tower_gateway_auth::{MemoryStore, RedisStore, TokenStore};

#[tokio::main]
async fn main() -> ExitCode {
    const NAME: &str = "user-service";
    server::init_tracing();
    let jwt = match JwtSettings::from_env() {
        Ok(Some(jwt)) => jwt,
        Ok(None) => return server::fail(NAME, "no JWT key: set JWT_SECRET_FILE (or JWT_SECRET, at least 32 bytes)"),
        Err(err) => return server::fail(NAME, &err),
    };
    let store: Arc<dyn TokenStore> = match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => match RedisStore::new(url) {
            Ok(store) => Arc::new(store),
            Err(err) => return server::fail(NAME, &format!("REDIS_URL: {err}")),
        },
        None => {
            tracing::warn!("REDIS_URL is not set: logout revokes tokens in this process only");
            Arc::new(MemoryStore::new())
        }
    };
    let auth = match jwt.authenticator().store(store).build() {
        Ok(auth) => auth,
        Err(err) => return server::fail(NAME, &err.to_string()),
    };
    let url = server::database_url("users.db");
    let db = match users::connect(&url).await {
        Ok(db) => db,
        Err(err) => return server::fail(NAME, &format!("database {url}: {err}")),
    };
    let state = UsersState { db, jwt: Arc::new(jwt), auth, passwords: Passwords::new(argon2::Params::default()) };
    server::run(NAME, users::app(state), 3002).await
}

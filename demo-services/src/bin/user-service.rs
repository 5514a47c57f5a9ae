//! user-service: `PORT` (default 3002), `DATABASE_URL` (default `sqlite://data/users.db`),
//! the token key as the gateway reads it (`JWT_ALGORITHM` with `JWT_PRIVATE_KEY_FILE` and
//! `JWT_PUBLIC_KEY_FILE`, or `JWT_SECRET_FILE`; `JWT_ISSUER` default `user-service`,
//! `JWT_AUDIENCE` default `tower-gateway`, `JWT_TTL_SECS` default 900), `REDIS_URL` for
//! the token store (in memory without it), the first admin: `ADMIN_EMAIL` with
//! `ADMIN_PASSWORD_FILE`, created or promoted at start-up, and
//! `PASSWORD_HASH_MEMORY_MB` (default 64): what the Argon2 hashes running at once
//! may use, which bounds how many run.
//!
//! With `KEY_ENCRYPTION_KEY_FILE` (a secret of at least 32 bytes) the service
//! needs no key file: it keeps Ed25519 signing keys in its database, sealed with
//! that secret, rotates them every `KEY_ROTATION_SECS` (default 86400; 0: only
//! on `POST /keys/rotate`) and publishes them at `/.well-known/jwks.json`, which
//! verifiers reach at `JWKS_URI` (default `http://127.0.0.1:$PORT/.well-known/jwks.json`).
//! It then verifies tokens with that published set too, unless `JWT_JWKS_URL` or
//! `JWT_DISCOVERY_URL` says where else.

use std::process::ExitCode;
use std::sync::Arc;

use demo_services::server;
use demo_services::signing::{SealingKey, SigningKeys};
use demo_services::users::{self, Passwords, Tokens, UsersState};
use std::time::Duration;
use tower_gateway_auth::read_secret_file;

#[tokio::main]
async fn main() -> ExitCode {
    const NAME: &str = "user-service";
    let Some(telemetry) = server::telemetry(NAME) else {
        return ExitCode::from(2);
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut keys = match server::keys_from_env() {
        Ok(keys) => keys,
        Err(err) => return server::fail(NAME, &err),
    };
    let url = match server::database_url("users.db") {
        Ok(url) => url,
        Err(err) => return server::fail(NAME, &err),
    };
    let db = match users::connect(&url).await {
        Ok(db) => db,
        Err(err) => return server::fail(NAME, &format!("database {}: {err}", demo_common::mask_url_password(&url))),
    };
    let tokens = match env("KEY_ENCRYPTION_KEY_FILE") {
        Some(path) => {
            let sealing = match read_secret_file(path.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|secret| SealingKey::new(&secret).map_err(|e| e.to_string()))
            {
                Ok(sealing) => sealing,
                Err(err) => return server::fail(NAME, &format!("KEY_ENCRYPTION_KEY_FILE {path}: {err}")),
            };
            let port = server::env_or("PORT", "3002");
            let jwks_uri = env("JWKS_URI").unwrap_or_else(|| format!("http://127.0.0.1:{port}/.well-known/jwks.json"));
            if !keys.is_remote() {
                keys.jwks_url = Some(jwks_uri.clone());
            }
            let signing = match SigningKeys::open(db.clone(), sealing, keys.clone()).await {
                Ok(signing) => signing,
                Err(err) => return server::fail(NAME, &err.to_string()),
            };
            let every = match env("KEY_ROTATION_SECS").map(|s| s.parse::<u64>()) {
                None => 86_400,
                Some(Ok(secs)) => secs,
                Some(Err(_)) => return server::fail(NAME, "KEY_ROTATION_SECS: a number of seconds"),
            };
            if every > 0 {
                signing.rotate_every(Duration::from_secs(every));
            }
            tracing::info!(%jwks_uri, rotation_secs = every, "signing keys in the database, published");
            Tokens::Rotating { keys: signing, jwks_uri }
        }
        None => match keys.token_issuer() {
            Ok(tokens) => Tokens::Fixed(Arc::new(tokens)),
            Err(err) => return server::fail(NAME, &format!("JWT key: {err}")),
        },
    };
    let auth = match server::authenticator_from_env(&keys) {
        Ok(auth) => auth,
        Err(err) => return server::fail(NAME, &err),
    };
    let budget = match env("PASSWORD_HASH_MEMORY_MB").map(|mb| mb.parse::<usize>()) {
        None => users::DEFAULT_HASH_MEMORY,
        Some(Ok(mb)) if mb > 0 => mb * 1024 * 1024,
        Some(_) => return server::fail(NAME, "PASSWORD_HASH_MEMORY_MB: a positive number of MiB"),
    };
    let passwords = Passwords::with_memory_budget(argon2::Params::default(), budget);
    let (logins, changes) = passwords.concurrency();
    tracing::info!(logins, changes, "password hashing bounded: hashes at once");
    let state = UsersState { db, tokens, auth, passwords };
    if let Some(email) = env("ADMIN_EMAIL") {
        let Some(path) = env("ADMIN_PASSWORD_FILE") else {
            return server::fail(NAME, "ADMIN_EMAIL needs ADMIN_PASSWORD_FILE");
        };
        let password = match read_secret_file(path.as_ref()).map(String::from_utf8) {
            Ok(Ok(password)) => password,
            Ok(Err(_)) => return server::fail(NAME, &format!("ADMIN_PASSWORD_FILE {path}: not UTF-8")),
            Err(err) => return server::fail(NAME, &format!("ADMIN_PASSWORD_FILE {path}: {err}")),
        };
        match users::ensure_admin(&state, &email, password).await {
            Ok(user) => tracing::info!(id = user.id, %email, "admin ready"),
            Err(err) => return server::fail(NAME, &format!("ADMIN_EMAIL {email}: {err:?}")),
        }
    }
    let code = server::run(NAME, users::app(state), 3002).await;
    // What is queued is sent before the process ends.
    telemetry.shutdown();
    code
}

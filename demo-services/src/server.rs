//! Running a service: configuration from the environment, logs, routes every
//! service has, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::AnyPool;
use tokio::net::TcpListener;

use tower_gateway::telemetry::TraceContextLayer;

use crate::error::ApiError;

/// The largest request body a service reads.
pub const MAX_BODY: usize = 64 * 1024;

/// The environment variable `name`, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// `DATABASE_URL` — `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`;
/// anything else stops the service at start —, or the URL in the file
/// `DATABASE_URL_FILE` names (a Docker secret: the URL carries the password),
/// or `sqlite://$DATA_DIR/<file>` (`DATA_DIR` defaults to `data`).
/// `DATABASE_MAX_CONNECTIONS` (default 8) and `DATABASE_ACQUIRE_TIMEOUT_MS`
/// (default 5000) bound its pool.
pub fn database_url(file: &str) -> Result<String, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("DATABASE_URL"), var("DATABASE_URL_FILE")) {
        (Some(_), Some(_)) => Err("give DATABASE_URL or DATABASE_URL_FILE, not both".into()),
        (Some(url), None) => Ok(url),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|url| url.trim().to_owned())
            .map_err(|err| format!("DATABASE_URL_FILE {path}: {err}")),
        (None, None) => Ok(format!("sqlite://{}/{file}", env_or("DATA_DIR", "data"))),
    }
}

/// `HOST:PORT` to listen on: `HOST` defaults to 127.0.0.1 — the services are
/// meant to be reached through the gateway only — and `PORT` to `port`.
pub fn listen_addr(port: u16) -> Result<SocketAddr, String> {
    let host = env_or("HOST", "127.0.0.1");
    let port = env_or("PORT", &port.to_string());
    format!("{host}:{port}").parse().map_err(|e| format!("HOST/PORT {host}:{port}: {e}"))
}

/// What `/readyz` checks: the database answers, and every upstream the service
/// calls has at least one endpoint.
#[derive(Debug, Clone)]
pub struct Readiness {
    db: AnyPool,
    upstreams: Vec<(&'static str, tower_gateway::balance::Endpoints)>,
}

impl Readiness {
    /// Ready when `db` answers.
    pub fn db(db: AnyPool) -> Self {
        Self { db, upstreams: Vec::new() }
    }

    /// And when `name` has an endpoint.
    pub fn upstream(mut self, name: &'static str, endpoints: tower_gateway::balance::Endpoints) -> Self {
        self.upstreams.push((name, endpoints));
        self
    }

    async fn check(&self) -> Result<(), String> {
        if !crate::db::ping(&self.db).await {
            return Err("database unreachable".into());
        }
        match self.upstreams.iter().find(|(_, endpoints)| endpoints.is_empty()) {
            Some((name, _)) => Err(format!("no {name} endpoint")),
            None => Ok(()),
        }
    }
}

/// `/healthz`, `/readyz`, JSON 404 and 405, and the body cap, around `routes`.
pub fn with_common<S: Clone + Send + Sync + 'static>(routes: Router<S>, state: S, ready: Readiness) -> Router {
    routes
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(move || readyz(ready.clone())))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // The request's span, continuing the trace of whoever called: the
        // gateway's attempt, or checkout-service's call for a price.
        .layer(TraceContextLayer::new().skip_paths(["/healthz", "/readyz"]))
        .with_state(state)
}

async fn readyz(ready: Readiness) -> impl IntoResponse {
    match ready.check().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ready" }))),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "not ready", "reason": reason })))
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Starts the log, and the export of spans as `name` when `OTEL_*` says where
/// (see [`demo_common::telemetry`]); `None` after printing why it cannot.
pub fn telemetry(name: &str) -> Option<demo_common::telemetry::Telemetry> {
    let config = demo_common::telemetry::TelemetryConfig::default().with_env(|name| std::env::var(name).ok());
    match config.map_err(|e| e.to_string()).and_then(|config| demo_common::telemetry::init(name, &config)) {
        Ok(telemetry) => Some(telemetry),
        Err(err) => {
            eprintln!("{name}: {err}");
            None
        }
    }
}

/// Serves `app` on `HOST:PORT` (default port `port`) until SIGINT/SIGTERM.
pub async fn run(name: &str, app: Router, port: u16) -> std::process::ExitCode {
    let addr = match listen_addr(port) {
        Ok(addr) => addr,
        Err(err) => return fail(name, &err),
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => return fail(name, &format!("cannot listen on {addr}: {err}")),
    };
    tracing::info!(service = name, %addr, "listening");
    match serve(listener, app, demo_common::shutdown_signal()).await {
        Ok(()) => {
            tracing::info!(service = name, "stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => fail(name, &err.to_string()),
    }
}

/// The key configuration every service that checks tokens reads: the shipped
/// issuer and audience, then the `JWT_*` environment.
pub fn keys_from_env() -> Result<tower_gateway_auth::KeyConfig, String> {
    let mut keys = demo_common::shipped_jwt();
    keys.apply_env(|name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .map_err(|err| format!("JWT key: {err}"))?;
    Ok(keys)
}

/// The token check of a service: `keys`, with revocations in Redis (`REDIS_URL`
/// or `REDIS_URL_FILE`), or in this process without either.
pub fn authenticator_from_env(
    keys: &tower_gateway_auth::KeyConfig,
) -> Result<tower_gateway_auth::Authenticator, String> {
    use std::sync::Arc;
    use tower_gateway_auth::{MemoryStore, RedisStore, TokenStore};
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let store: Arc<dyn TokenStore> = match demo_common::redis_url_from_env(env).map_err(|e| e.to_string())? {
        Some(url) => Arc::new(RedisStore::new(url).map_err(|err| format!("REDIS_URL: {err}"))?),
        None => {
            tracing::warn!("no REDIS_URL: revocations are kept in this process only");
            Arc::new(MemoryStore::new())
        }
    };
    let builder = keys.authenticator().map_err(|err| format!("JWT key: {err}"))?;
    builder.store(store).build().map_err(|err| format!("JWT key: {err}"))
}

/// Prints `message` and gives the exit code for a configuration error (2).
pub fn fail(name: &str, message: &str) -> std::process::ExitCode {
    eprintln!("{name}: {message}");
    std::process::ExitCode::from(2)
}

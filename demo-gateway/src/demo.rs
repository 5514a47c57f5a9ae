//! The one-command demo: the whole seed system in this process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use demo_services::checkout::{self, CheckoutState, ProductClient};
use demo_services::jwt::JwtSettings;
use demo_services::products::{self, ProductsState};
use demo_services::users::{self, Passwords, UsersState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_gateway::balance::Endpoints;
use tower_gateway_auth::{MemoryStore, RedisStore, TokenStore};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::server;

/// A secret for this run: 32 random bytes, hex-encoded.
fn random_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| format!("{name} cannot listen on {addr}: {e}"))
}

/// Runs the demo until Ctrl-C. `config` may replace the gateway's defaults (its
/// endpoints should still be the demo's ports).
pub async fn run(config: Option<&Path>) -> ExitCode {
    match start(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo-gateway demo: {err}");
            ExitCode::from(2)
        }
    }
}

async fn start(config_path: Option<&Path>) -> Result<(), String> {
    let data_dir = demo_services::server::env_or("DATA_DIR", "data");
    let db = |file: &str| format!("sqlite://{data_dir}/{file}");
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());

    let (secret, secret_source) = match env("JWT_SECRET_FILE") {
        Some(path) => {
            let bytes = demo_services::jwt::read_secret_file(Path::new(&path))
                .map_err(|e| format!("JWT_SECRET_FILE {path}: {e}"))?;
            let secret = String::from_utf8(bytes).map_err(|_| format!("JWT_SECRET_FILE {path}: not UTF-8 text"))?;
            (secret, "JWT_SECRET_FILE")
        }
        None => (random_secret(), "generated for this run"),
    };
    let jwt = JwtSettings::hs256(secret.as_bytes())?;
    let (store, store_name): (Arc<dyn TokenStore>, String) = match env("REDIS_URL") {
        Some(url) => {
            (Arc::new(RedisStore::new(url.clone()).map_err(|e| format!("REDIS_URL: {e}"))?), format!("Redis at {url}"))
        }
        None => (Arc::new(MemoryStore::new()), "in memory".to_owned()),
    };
    // One authenticator for the gateway and the user service: a logout revokes at the gateway at once.
    let auth = jwt.authenticator().store(store).build().map_err(|e| e.to_string())?;

    let mut config = Config::load(config_path, |name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
    config.jwt.secret = Some(secret);
    config.jwt.secret_file = None;
    let settings = config.validate().map_err(|e| e.to_string())?;

    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut table = Vec::new();

    for port in [3001, 3003] {
        let listener = bind("product-service", local(port)).await?;
        let state = ProductsState::connect(&db("products.db")).await.map_err(|e| format!("products.db: {e}"))?;
        tasks.spawn(demo_services::server::serve(listener, products::app(state), stopped()));
        table.push(("product-service", port));
    }
    let passwords = Passwords::new(argon2::Params::default());
    let jwt = Arc::new(jwt);
    for port in [3002, 3004] {
        let listener = bind("user-service", local(port)).await?;
        let db = users::connect(&db("users.db")).await.map_err(|e| format!("users.db: {e}"))?;
        let state = UsersState { db, jwt: jwt.clone(), auth: auth.clone(), passwords: passwords.clone() };
        tasks.spawn(demo_services::server::serve(listener, users::app(state), stopped()));
        table.push(("user-service", port));
    }
    {
        let listener = bind("checkout-service", local(3005)).await?;
        let endpoints =
            Endpoints::new(["http://127.0.0.1:3001", "http://127.0.0.1:3003"]).map_err(|e| e.to_string())?;
        let db = checkout::connect(&db("orders.db")).await.map_err(|e| format!("orders.db: {e}"))?;
        let state = CheckoutState { db, products: ProductClient::new(endpoints) };
        tasks.spawn(demo_services::server::serve(listener, checkout::app(state), stopped()));
        table.push(("checkout-service", 3005));
    }
    let gateway = Gateway::build(&config, Some(auth)).await.map_err(|e| e.to_string())?;
    let listener = bind("gateway", settings.listen).await?;
    let svc = server::http_service(gateway, &config, &settings);
    tasks.spawn(server::serve(listener, svc, settings, stopped()));

    let base = format!("http://{}", settings.listen);
    println!("tower-gateway demo: the seed system, in one process (Ctrl-C stops it all)\n");
    println!("  gateway            {base}   /api/products  /api/users  /api/checkout (JWT)");
    for (name, port) in &table {
        println!("  {name:<18} http://127.0.0.1:{port}");
    }
    println!(
        "\n  data in {data_dir}/ (products.db, users.db, orders.db); JWT key {secret_source}; tokens revoked {store_name}"
    );
    println!("  health {base}/healthz  readiness {base}/readyz  metrics {base}/metrics\n");
    println!("Try it:\n");
    println!(
        "  curl -s -X POST {base}/api/users/signup -H 'content-type: application/json' -d '{{\"name\":\"Ada\",\"email\":\"ada@example.com\",\"password\":\"correct horse\"}}'"
    );
    println!(
        "  TOKEN=$(curl -s -X POST {base}/api/users/login -H 'content-type: application/json' -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse\"}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!(
        "  curl -s -X POST {base}/api/checkout -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' -H 'idempotency-key: order-1' -d '{{\"product_id\":1,\"quantity\":2}}'\n"
    );

    crate::shutdown_signal().await;
    println!("stopping: finishing requests in flight");
    let _ = shutdown_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(err)) = done {
            tracing::warn!(%err, "a server stopped with an error");
        }
    }
    Ok(())
}
